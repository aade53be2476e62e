"""Where the project keeps its files: the project root and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TLLAB_CACHE"


def project_root() -> Path:
    """Return the folder that holds ``tlutils/``, ``notebooks/`` and ``data/``."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Return the project's cache folder (``$TLLAB_CACHE`` or ``data/cache``)."""
    return Path(os.environ.get(CACHE_ENV) or project_root() / "data" / "cache")
