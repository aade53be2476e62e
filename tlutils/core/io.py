"""Safe file handling: atomic writes of files and folders, checksums, verified folders.

A cache or checkpoint is only trusted once it is complete and intact. Every writer
here builds its output under a temporary name in the same folder and renames it
into place at the end, so a run killed halfway leaves no half file that a later run
would mistake for a finished one. A finished folder carries a marker that records
the size and sha256 of every file in it (:func:`dir_problems` checks them), and the
temporary leftovers of killed runs are swept by the next build
(:func:`sweep_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

#: Name of the marker file written last into a finished cache folder.
COMPLETE_MARKER = ".complete"

#: Format of the marker: 2 records the size and sha256 of every file (older markers held only "ok").
MARKER_FORMAT = 2

#: Crash-safety tests set this to ``"<point>=<flag file>"``: on reaching ``<point>`` the
#: process creates the flag file and waits to be killed (see :func:`fault_point`).
FAULT_ENV = "TLLAB_FAULT_PAUSE"

# ``.<name>.<pid>.<random>.tmp``: the temporary names of atomic_file and atomic_dir.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[A-Za-z0-9_]+)\.tmp$")

# sha256 of files already hashed in this process, by (device, inode, size, mtime): a rename keeps the key.
_HASHES: dict[tuple, str] = {}
# tree_sha256 of folders already hashed in this process, by (real path, inode, mtime of the folder).
_TREES: dict[tuple, str] = {}


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


def sha256_cached(path: str | os.PathLike) -> str:
    """Like :func:`sha256_of`, but hashes a file at most once per process while it is unchanged.

    The digest is remembered under the file's device, inode, size and modification
    time, so a rewritten, truncated or replaced file is hashed again, a file renamed
    into place is not, and a repeated resolve of a big file costs one ``stat``.
    """
    stat = os.stat(path)
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_of(path)
    return _HASHES[key]


def forget_hashes() -> None:
    """Forget every digest remembered by :func:`sha256_cached` and :func:`tree_sha256` (the next check re-reads)."""
    _HASHES.clear()
    _TREES.clear()


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for an instant)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """Permissions of a newly created ordinary file under the current umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def fault_point(point: str) -> None:
    """A named point of a build where crash-safety tests kill the process.

    Does nothing unless ``$TLLAB_FAULT_PAUSE`` is ``"<point>=<flag file>"`` for this
    point: then the flag file is created and the process waits (at most 10 minutes)
    for the test to kill it with SIGKILL.
    """
    wanted, _, flag = os.environ.get(FAULT_ENV, "").partition("=")
    if wanted != point or not flag:
        return
    Path(flag).write_text(f"{os.getpid()}\n")
    time.sleep(600)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in ``folder``.

    Only names of the form ``.<name>.<pid>.<random>.tmp`` whose process no longer
    runs are removed, so a build running in another process is never disturbed.

    Returns:
        The paths removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            match = _TEMP_NAME.match(entry.name)
            if not match or int(match["pid"]) == os.getpid() or _pid_alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry)
    return removed


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; move it to ``path`` only if the block succeeds.

    The finished file gets the permissions of any new file under the umask
    (0o644 usually), not the owner-only ones of a private temporary file. The
    leftovers of writers killed earlier in the same folder are swept first.

    Example:
        >>> with atomic_file("data/cache/x.safetensors") as tmp:
        ...     save_file(tensors, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(default_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def try_atomic_write(path: str | os.PathLike, write: Callable[[Path], None], what: str = "cache file") -> bool:
    """Write ``path`` with :func:`atomic_file`; on a file-system error warn and carry on.

    For caches: the caller keeps its computed result when the cache cannot be written
    (read-only folder, full disk), so the run goes on, only slower next time.

    Args:
        path: File to write.
        write: ``write(tmp)`` writes the content into the temporary path.
        what: Names the file in the warning.

    Returns:
        True when the file was written.
    """
    try:
        with atomic_file(path) as tmp:
            write(tmp)
        return True
    except OSError as error:
        warnings.warn(
            f"could not write the {what} {path} ({describe_os_error(error, Path(path))}); "
            "the result is kept in memory but not cached",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def describe_os_error(error: OSError, path: Path) -> str:
    """Say in words what a file-system error means for writing ``path``, and how to fix it."""
    from tlutils.core.paths import CACHE_ENV

    elsewhere = f"or set ${CACHE_ENV} to a folder where you can write"
    if error.errno == errno.ENOSPC:
        return f"the disk is full while writing {path}: free some space {elsewhere}"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write into {path.parent}: {os.strerror(error.errno)}; make it writable {elsewhere}"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        return f"{blocker} is a file where a folder is needed: delete or rename it {elsewhere}"
    return str(error)


def tree_files(folder: str | os.PathLike) -> list[str]:
    """The files under ``folder`` as sorted relative POSIX paths, without ``__pycache__`` and the marker."""
    root = Path(folder)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        for name in files:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative != COMPLETE_MARKER:
                found.append(relative)
    return sorted(found)


def tree_sha256(folder: str | os.PathLike) -> str:
    """One sha256 for a whole folder: over each file's relative path, size and sha256, in sorted order.

    A folder of thousands of files is hashed once per process: the digest is
    remembered until a file is added, removed or renamed at the folder's top level
    (which changes the folder's modification time) or :func:`forget_hashes` is called.
    """
    root = Path(folder)
    stat = root.stat()
    key = (os.path.realpath(root), stat.st_ino, stat.st_mtime_ns)
    if key not in _TREES:
        digest = hashlib.sha256()
        for relative in tree_files(root):
            file = root / relative
            digest.update(f"{relative}\0{file.stat().st_size}\0{sha256_cached(file)}\n".encode())
        _TREES[key] = digest.hexdigest()
    return _TREES[key]


def write_marker(folder: str | os.PathLike) -> None:
    """Write the ``.complete`` marker that records the size and sha256 of every file in ``folder``."""
    root = Path(folder)
    record = {
        relative: {"size": (root / relative).stat().st_size, "sha256": sha256_cached(root / relative)}
        for relative in tree_files(root)
    }
    (root / COMPLETE_MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "files": record}, indent=1) + "\n")


def _read_marker(root: Path) -> dict | str:
    """The marker's file record, or a sentence saying why there is none."""
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        return "has no finished-build marker (an interrupted run?)"
    try:
        content = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        content = None
    if (
        not isinstance(content, dict)
        or content.get("format") != MARKER_FORMAT
        or not isinstance(content.get("files"), dict)
    ):
        return "has a marker without a record of its files (made by an older version, or damaged)"
    return content["files"]


def dir_problems(folder: str | os.PathLike, hashes: bool = True) -> list[str]:
    """Check a folder made by :func:`atomic_dir` against the record in its marker.

    Args:
        folder: The finished folder.
        hashes: Also compare sha256 digests (each file is hashed at most once per
            process while unchanged); sizes and the set of files are always compared.

    Returns:
        One sentence per problem; empty when the folder is exactly what the build wrote.
    """
    root = Path(folder)
    if not root.exists():
        return ["is not built yet"]
    if not root.is_dir():
        return ["is a file, not a folder"]
    record = _read_marker(root)
    if isinstance(record, str):
        return [record]
    present = set(tree_files(root))
    problems = [f"{name} is missing" for name in sorted(set(record) - present)]
    problems += [f"{name} was not written by the build" for name in sorted(present - set(record))]
    for name in sorted(set(record) & present):
        size = (root / name).stat().st_size
        if size != record[name].get("size"):
            problems.append(f"{name} has {size} bytes, the build wrote {record[name].get('size')}")
        elif hashes and sha256_cached(root / name) != record[name].get("sha256"):
            problems.append(f"{name} differs from what the build wrote (sha256 mismatch)")
    return problems


def is_complete_dir(path: str | os.PathLike, hashes: bool = False) -> bool:
    """Return True when ``path`` is a folder finished by :func:`atomic_dir` whose files match its marker."""
    return not dir_problems(path, hashes=hashes)


def _normalise_modes(folder: Path) -> None:
    """Give the folder and its files the usual permissions (writers such as mkstemp make them private)."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for relative in tree_files(folder):
        file = folder / relative
        file.chmod(default_file_mode() | (file.stat().st_mode & 0o111 & ~umask))


def _move_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` so that ``target`` is never a half-deleted folder."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{_temp_prefix(target)}old.tmp")
        os.replace(target, old)
        fault_point("old_moved")
    os.replace(tmp, target)
    fault_point("replaced")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; it replaces ``path`` only if the block succeeds.

    The finished folder gets a ``.complete`` marker recording every file's size and
    sha256, so :func:`dir_problems` can tell a finished, intact cache from the
    leftovers of a killed run or a file damaged later. Leftovers of killed builds in
    the same parent folder are swept first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        fault_point("started")
        yield tmp
        fault_point("built")
        _normalise_modes(tmp)
        write_marker(tmp)
        fault_point("marked")
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
        with (
            open(tmp, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
        if sha256 is not None and sha256_of(tmp) != sha256:
            raise ValueError(f"{url}: sha256 mismatch (expected {sha256}); the download was discarded")
    return dest
