"""Read R data files without R: ``.rda`` files and R lazy-load databases (``Rdata.rdb`` + ``Rdata.rdx``).

Both are parsed with the pure-Python `rdata <https://pypi.org/project/rdata/>`_ package.
An installed R package keeps its data sets in a lazy-load database:

* ``Rdata.rdx`` is one serialized R list (gzip-compressed, like an ``.rds`` file) with
  ``variables`` (object name -> byte offset and length in the ``.rdb``), ``references``
  (environments, usually empty for data) and ``compressed`` (1 zlib, 2 bzip2, 3 xz);
* ``Rdata.rdb`` holds the objects one after another; each is a 4-byte big-endian
  length of the uncompressed serialization, then (for types 2 and 3) one byte naming
  the method actually used (``Z`` xz, ``2`` bzip2, ``0`` stored), then the compressed
  bytes: an R serialization stream (``X\\n`` ...).

Example:
    >>> db = LazyLoadDB("/usr/lib/R/site-library/modeldata/data/Rdata.rdx")  # doctest: +SKIP
    >>> db.read("credit_data").shape  # doctest: +SKIP
    (4454, 14)
"""

from __future__ import annotations

import bz2
import lzma
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

#: R's xz settings for lazy-load databases (R_compress3: raw LZMA2, preset 9 | extreme).
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


class RDataError(ValueError):
    """An R data file is damaged or not in the expected format."""


def _constructors() -> dict:
    """rdata's converters, plus tibbles (``tbl_df``) read as plain data frames."""
    from rdata.conversion import DEFAULT_CLASS_MAP

    constructors = dict(DEFAULT_CLASS_MAP)
    for name in ("tbl_df", "tbl"):
        constructors.setdefault(name, constructors["data.frame"])
    return constructors


def _tidy(value: Any) -> Any:
    """A data frame with plain ``str`` column names and a 0-based RangeIndex (R row names dropped)."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        value = value.reset_index(drop=True)
        value.columns = [str(column) for column in value.columns]
    return value


def convert_serialized(data: bytes, what: str, encoding: str = "latin1") -> Any:
    """Convert one R serialization stream (``X\\n`` ..., as in an ``.rds``) to Python objects.

    Args:
        data: The uncompressed serialization.
        what: Names the object in error messages.
        encoding: For strings whose encoding the file does not record (old R versions wrote none).

    Raises:
        RDataError: the bytes are not an R serialization rdata can read.
    """
    import rdata

    try:
        with warnings.catch_warnings():
            # Old files record no string encoding; zoo's "yearqtr" is kept as its underlying number.
            warnings.filterwarnings("ignore", message="Unknown encoding", category=UserWarning)
            warnings.filterwarnings("ignore", message='Missing constructor for R class "yearqtr"')
            parsed = rdata.parser.parse_data(data, extension=".rds")
            value = rdata.conversion.convert(parsed, _constructors(), default_encoding=encoding)
    except Exception as error:  # rdata raises many types for bad input
        raise RDataError(f"{what}: not a readable R serialization ({type(error).__name__}: {error})") from error
    return _tidy(value)


def read_rda(path: str | Path, encoding: str = "latin1") -> dict[str, Any]:
    """Read every object of an ``.rda`` (``save()``) file.

    Returns:
        Object name -> value (a data frame becomes a :class:`pandas.DataFrame` with a RangeIndex).

    Raises:
        RDataError: the file is damaged or not an R data file.
    """
    import rdata

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unknown encoding", category=UserWarning)
            warnings.filterwarnings("ignore", message='Missing constructor for R class "yearqtr"')
            objects = rdata.read_rda(path, default_encoding=encoding)
    except Exception as error:
        raise RDataError(f"{path}: not a readable .rda file ({type(error).__name__}: {error})") from error
    return {str(name): _tidy(value) for name, value in objects.items()}


def decompress_entry(blob: bytes, compressed: int, what: str) -> bytes:
    """Undo the compression of one lazy-load entry (see the module docstring for the layout).

    Args:
        blob: The entry's bytes, as cut from the ``.rdb`` at the offset and length of the index.
        compressed: The ``compressed`` field of the index (0 none, 1 zlib, 2 bzip2, 3 xz).
        what: Names the entry in error messages.

    Raises:
        RDataError: the entry is truncated, of an unknown method, or does not decompress to its length.
    """
    if len(blob) < 5:
        raise RDataError(f"{what}: entry of {len(blob)} bytes is truncated")
    if compressed == 0:
        return blob
    (length,) = struct.unpack(">I", blob[:4])
    body = blob[4:]
    try:
        if compressed == 1:
            data = zlib.decompress(body)
        elif compressed in (2, 3):
            method, body = body[:1], body[1:]
            if method == b"Z":
                data = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_XZ_FILTERS).decompress(body)
            elif method == b"2":
                data = bz2.decompress(body)
            elif method == b"0":
                data = body
            else:
                raise RDataError(f"{what}: unknown compression byte {method!r}")
        else:
            raise RDataError(f"{what}: unknown compression type {compressed}")
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as error:
        raise RDataError(f"{what}: does not decompress ({error})") from error
    if len(data) != length:
        raise RDataError(f"{what}: decompressed to {len(data)} bytes, its header says {length}")
    return data


class LazyLoadDB:
    """An R lazy-load database: ``Rdata.rdx`` (the index) next to ``Rdata.rdb`` (the objects).

    Args:
        rdx: Path of the ``.rdx`` index; the ``.rdb`` of the same stem must sit beside it.
        encoding: For strings whose encoding the file does not record.

    Raises:
        RDataError: the index is damaged or the database file is missing.
    """

    def __init__(self, rdx: str | Path, encoding: str = "latin1") -> None:
        import rdata

        self.rdx = Path(rdx)
        self.rdb = self.rdx.with_suffix(".rdb")
        self.encoding = encoding
        if not self.rdb.is_file():
            raise RDataError(f"{self.rdb} is missing (the lazy-load database of {self.rdx})")
        try:
            index = rdata.read_rds(self.rdx)
            variables = index["variables"]
            self.compressed = int(index["compressed"][0]) if "compressed" in index else 1
            self.offsets = {str(name): (int(pair[0]), int(pair[1])) for name, pair in variables.items()}
        except Exception as error:
            raise RDataError(f"{self.rdx}: not a lazy-load index ({type(error).__name__}: {error})") from error
        # Environments the objects refer to; data sets have none, and they are not supported here.
        self.references = dict(index.get("references") or {})

    def names(self) -> list[str]:
        """The objects in the database, sorted."""
        return sorted(self.offsets)

    def raw(self, name: str) -> bytes:
        """The uncompressed R serialization of one object."""
        if name not in self.offsets:
            raise KeyError(f"{name!r} is not in {self.rdx}; it holds: {', '.join(self.names())}")
        offset, length = self.offsets[name]
        with open(self.rdb, "rb") as handle:
            handle.seek(offset)
            blob = handle.read(length)
        if len(blob) != length:
            raise RDataError(f"{self.rdb}: {name} needs bytes {offset}..{offset + length}, the file is shorter")
        return decompress_entry(blob, self.compressed, f"{self.rdb}:{name}")

    def read(self, name: str) -> Any:
        """One object converted to Python (a data frame becomes a :class:`pandas.DataFrame`)."""
        return convert_serialized(self.raw(name), f"{self.rdb}:{name}", self.encoding)
