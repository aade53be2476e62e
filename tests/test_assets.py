"""The asset resolver: source order, clear errors, atomic cache builds."""

import pytest

from tlutils import assets
from tlutils.assets import (Asset, AssetNotFoundError, Cache, Mirror, Online, UnknownAssetError, register,
                            registry, resolve)
from tlutils.io import atomic_dir, atomic_file, is_complete_dir

OFFLINE_MODELS = ["mobilenet_v2", "efficientnet_lite0", "minilm_l6", "minilm_l3", "smollm2_135m",
                  "whisper_tiny_en", "ge2e_speaker"]
ONLINE_ONLY = ["resnet18", "resnet50", "vgg16", "inception_v3", "bert-base-uncased", "roberta-base",
               "gpt2", "wav2vec2-base"]
DATASETS = ["fashion_mnist", "mnist", "digits", "photos", "rotten_tomatoes", "bbc_news", "fsdd"]


@pytest.fixture
def scratch_asset():
    """Register a throw-away asset and remove it afterwards."""
    names = []

    def make(name, *sources):
        names.append(name)
        return register(Asset(name, "dataset", "a test asset", sources, fix="run the fixer"))

    yield make
    for name in names:
        assets._REGISTRY.pop(name, None)


def test_registry_has_every_required_asset():
    names = set(registry())
    assert set(OFFLINE_MODELS + ONLINE_ONLY + DATASETS) <= names
    # fsdd comes from a mirror folder or a one-time download, never from a package
    assert all(registry()[n].offline_capable for n in OFFLINE_MODELS + DATASETS if n != "fsdd")
    assert not any(registry()[n].offline_capable for n in ONLINE_ONLY)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownAssetError, match="unknown asset 'resnet19'.*mobilenet_v2"):
        resolve("resnet19")


@pytest.mark.parametrize("name", ONLINE_ONLY)
def test_online_only_asset_fails_clearly_offline(name):
    with pytest.raises(AssetNotFoundError) as error:
        resolve(name)
    message = str(error.value)
    assert name in message and "offline mode" in message and "Fix: connect to the internet" in message


def test_package_weights_resolve_offline():
    found = resolve("mobilenet_v2")
    assert found.source in {"mirror", "package"} and found.path.is_file()


def test_mirror_wins_over_cache(tmp_path, monkeypatch, temp_cache, scratch_asset):
    (tmp_path / "mirror" / "thing").mkdir(parents=True)
    monkeypatch.setenv("TLLAB_MIRROR", str(tmp_path / "mirror"))
    scratch_asset("thing", Mirror("thing"), Cache(lambda out, inputs: (out / "x").write_text("built")))
    assert resolve("thing").source == "mirror"


def test_missing_everywhere_names_each_source_and_the_fix(monkeypatch, temp_cache, scratch_asset):
    monkeypatch.delenv("TLLAB_MIRROR", raising=False)
    scratch_asset("ghost", Mirror("ghost"), Cache(), Online("https://example.org/ghost.zip", fetch=lambda out: None))
    with pytest.raises(AssetNotFoundError) as error:
        resolve("ghost")
    message = str(error.value)
    assert "TLLAB_MIRROR is not set" in message
    assert "is not built yet" in message
    assert "offline mode" in message
    assert message.endswith("Fix: run the fixer")


def test_cache_is_built_once_then_reused(temp_cache, scratch_asset):
    calls = []

    def build(out, inputs):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"123")

    scratch_asset("built", Cache(build))
    first, second = resolve("built"), resolve("built")
    assert first.source == second.source == "cache"
    assert len(calls) == 1 and (first.path / "weights.bin").read_bytes() == b"123"


def test_interrupted_build_leaves_nothing_trusted_and_is_rebuilt(temp_cache, scratch_asset):
    attempts = []

    def build(out, inputs):
        attempts.append(1)
        (out / "half.bin").write_bytes(b"partial")
        if len(attempts) == 1:
            raise KeyboardInterrupt  # a learner pressing stop mid-conversion

    scratch_asset("flaky", Cache(build))
    with pytest.raises(KeyboardInterrupt):
        resolve("flaky")
    assert not (temp_cache / "flaky").exists()
    assert list(temp_cache.iterdir()) == []  # no temporary leftovers either
    assert resolve("flaky").source == "cache" and len(attempts) == 2


def test_incomplete_cache_folder_is_rebuilt(temp_cache, scratch_asset):
    (temp_cache / "stale").mkdir(parents=True)
    (temp_cache / "stale" / "junk").write_text("from a killed run")
    scratch_asset("stale", Cache(lambda out, inputs: (out / "good").write_text("ok")))
    found = resolve("stale")
    assert is_complete_dir(found.path) and (found.path / "good").exists() and not (found.path / "junk").exists()


def test_listing_does_not_build(temp_cache, scratch_asset):
    scratch_asset("lazy", Cache(lambda out, inputs: pytest.fail("listing must not build")))
    with pytest.raises(AssetNotFoundError, match="python -m tlutils prepare"):
        resolve("lazy", build=False)


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "good" and list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert is_complete_dir(tmp_path / "out")
