"""Test settings: never touch the network, use a throw-away cache."""


import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test runs offline: online sources are never tried."""
    monkeypatch.setenv("TLLAB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


@pytest.fixture
def temp_cache(tmp_path, monkeypatch):
    """Point the project cache at an empty temporary folder."""
    monkeypatch.setenv("TLLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
