"""Safe file handling: atomic writes of files and folders, checksums.

A cache or checkpoint is only trusted once it is complete. Every writer here
builds its output under a temporary name in the same folder and renames it into
place at the end, so a run killed halfway leaves no half file that a later run
would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

#: Name of the marker file written last into a finished cache folder.
COMPLETE_MARKER = ".complete"


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 digest of a file, read in chunks.

    Args:
        path: File to hash.
        chunk_size: Bytes read per step.

    Returns:
        The 64-character lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; move it to ``path`` only if the block succeeds.

    Example:
        >>> with atomic_file("data/cache/x.safetensors") as tmp:
        ...     save_file(tensors, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; it replaces ``path`` only if the block succeeds.

    The finished folder gets a ``.complete`` marker, so :func:`is_complete_dir`
    can tell a finished cache from the leftovers of a killed run.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a finished cache is as readable as any folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete_dir(path: str | os.PathLike) -> bool:
    """Return True when ``path`` is a folder finished by :func:`atomic_dir`."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its sha256 when given.

    Args:
        url: Address to fetch.
        dest: File to create.
        sha256: Expected hex digest; a mismatch raises ``ValueError`` and keeps nothing.
        progress: Show a tqdm progress bar.

    Returns:
        The path of the finished file.
    """
    import urllib.request

    from tqdm.auto import tqdm

    dest = Path(dest)
    with atomic_file(dest) as tmp, urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                          desc=dest.name, disable=not progress) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
        if sha256 is not None and sha256_of(tmp) != sha256:
            raise ValueError(f"{url}: sha256 mismatch (expected {sha256}); the download was discarded")
    return dest
