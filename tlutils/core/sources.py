"""Asset records and their sources: a mirror folder, a pip or Debian package, the cache, online.

An :class:`Asset` is plain data: a name, a kind and an ordered tuple of sources.
Each :class:`Source` knows how to find (and, for the cache, build) its file or
folder, or raises :class:`SourceMiss` with the reason. The catalogue of every
asset is :data:`tlutils.core.catalog.CATALOGUE`; :mod:`tlutils.core.assets`
resolves names against it.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tlutils.core.io import atomic_dir, is_complete_dir
from tlutils.core.paths import cache_dir

MIRROR_ENV = "TLLAB_MIRROR"


OFFLINE_ENV = "TLLAB_OFFLINE"


class AssetError(RuntimeError):
    """Base class for asset problems."""


class UnknownAssetError(AssetError):
    """Raised for a name that is not in the catalogue."""


class AssetNotFoundError(AssetError):
    """Raised when no source of an asset works; the message says how to fix it."""


class SourceMiss(Exception):
    """A single source could not provide the asset (the reason is the message)."""


def is_offline() -> bool:
    """True when online sources must not be tried (``TLLAB_OFFLINE=1``)."""
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


@lru_cache(maxsize=None)
def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Resolved:
    """Where an asset was found.

    Attributes:
        name: Asset name.
        source: One of ``mirror``, ``package``, ``debian``, ``cache``, ``online``.
        location: A filesystem path, or for hub models the hub id.
    """

    name: str
    source: str
    location: str

    @property
    def path(self) -> Path:
        """The location as a :class:`~pathlib.Path` (for local sources)."""
        return Path(self.location)

    def file(self, suffix: str) -> Path:
        """The asset's one file ending in ``suffix``: the location itself, or the single such file in it.

        A package or mirror may point at the file; a download lands in a cache folder.

        Raises:
            FileNotFoundError: the folder holds no such file, or several.
        """
        if self.path.is_file():
            return self.path
        files = sorted(self.path.glob(f"*{suffix}"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one {suffix} file in {self.path}, found {len(files)}; "
                                    f"delete the folder and resolve {self.name!r} again")
        return files[0]


#: Resolves an asset name to its path; the resolver hands one to every source.
Finder = Callable[[str], Path]


class Source:
    """One place an asset may come from. Subclasses implement :meth:`locate`."""

    kind = "source"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        """Return the asset's location or raise :class:`SourceMiss` with the reason.

        Args:
            asset: The asset being resolved.
            build: Allow builds and downloads into the cache.
            find: Resolves another asset's name to its path (the inputs of a conversion).
        """
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming this source for listings and error messages."""
        raise NotImplementedError


@dataclass(frozen=True)
class Mirror(Source):
    """A path inside the mirror folder named by ``$TLLAB_MIRROR``."""

    relpath: str
    kind = "mirror"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        root = os.environ.get(MIRROR_ENV)
        if not root:
            raise SourceMiss(f"${MIRROR_ENV} is not set")
        path = Path(root) / self.relpath
        if not path.exists():
            raise SourceMiss(f"{path} does not exist")
        return str(path)

    def describe(self) -> str:
        return f"mirror ${MIRROR_ENV}/{self.relpath}"


@dataclass(frozen=True)
class Package(Source):
    """A file inside an installed pip distribution, found without importing it."""

    distribution: str
    relpath: str
    kind = "package"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise SourceMiss(f"pip package {self.distribution} is not installed") from None
        path = Path(dist.locate_file(self.relpath))
        if not path.exists():
            raise SourceMiss(f"{self.distribution} is installed but has no {self.relpath}")
        return str(path)

    def describe(self) -> str:
        return f"pip {self.distribution}: {self.relpath}"


@dataclass(frozen=True)
class Debian(Source):
    """A path installed by a Debian package."""

    path: str
    package: str
    kind = "debian"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        if not Path(self.path).exists():
            raise SourceMiss(f"{self.path} is missing (Debian package {self.package})")
        return self.path

    def describe(self) -> str:
        return f"debian {self.package}: {self.path}"


Builder = Callable[[Path, dict], None]


@dataclass(frozen=True)
class Cache(Source):
    """A folder under the project cache, built once from other assets.

    Args:
        builder: ``builder(out_dir, inputs)`` writes the asset into ``out_dir``;
            ``inputs`` maps each name in ``needs`` to its resolved path.
        needs: Asset names the builder reads (for example a raw package file).
    """

    builder: Builder | None = None
    needs: tuple[str, ...] = ()
    kind = "cache"

    def folder(self, asset: "Asset") -> Path:
        """Where the asset lives in the cache: ``data/cache/<name>``."""
        return cache_dir() / asset.name

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        folder = self.folder(asset)
        if is_complete_dir(folder):
            return str(folder)
        state = "is incomplete (an interrupted run?)" if folder.exists() else "is not built yet"
        if self.builder is None:
            raise SourceMiss(f"{folder} {state}")
        if not build:
            raise SourceMiss(f"{folder} {state}; `python -m tlutils prepare` builds it")
        try:
            inputs = {need: find(need) for need in self.needs}
        except AssetNotFoundError as error:
            raise SourceMiss(f"{folder} {state} and cannot be built: {error}") from None
        with atomic_dir(folder) as tmp:
            self.builder(tmp, inputs)
        return str(folder)

    def describe(self) -> str:
        made = f" (built from {', '.join(self.needs)})" if self.needs else ""
        return f"cache data/cache/<name>{made}"


@dataclass(frozen=True)
class Online(Source):
    """The canonical online source.

    Either ``hub_id`` (a Hugging Face Hub or torchvision name that the loader
    downloads itself) or ``fetch`` (``fetch(out_dir)`` downloads into the cache).
    """

    url: str
    hub_id: str | None = None
    fetch: Callable[[Path], None] | None = None
    kind = "online"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        if is_offline():
            raise SourceMiss(f"offline mode (${OFFLINE_ENV}=1): {self.url} not tried")
        url = urllib.parse.urlparse(self.url)
        host = url.hostname or ""
        if not _host_reachable(host, url.port or (80 if url.scheme == "http" else 443)):
            raise SourceMiss(f"no network: {host} is unreachable")
        if self.hub_id is not None:
            return self.hub_id
        if not build:
            raise SourceMiss(f"reachable, downloads {self.url} on first use")
        folder = cache_dir() / asset.name
        try:
            with atomic_dir(folder) as tmp:
                self.fetch(tmp)
        except (OSError, ValueError) as error:  # network failure, or a download with the wrong checksum
            raise SourceMiss(f"download of {self.url} failed: {error}") from error
        return str(folder)

    def describe(self) -> str:
        return f"online {self.url}"


@dataclass(frozen=True)
class Asset:
    """A named pre-trained model or data set with its ordered sources."""

    name: str
    kind: str
    description: str
    sources: tuple[Source, ...]
    fix: str
    license: str = ""
    extras: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def offline_capable(self) -> bool:
        """True when an installed package (pip or Debian) or a conversion provides it.

        A mirror folder or a cache that only keeps downloads does not count: they
        exist on some machines only.
        """
        return any(source.kind in {"package", "debian"}
                   or (source.kind == "cache" and source.builder is not None) for source in self.sources)
