"""Headline results: the few numbers a notebook's run established, saved for later notebooks to quote.

A notebook ends by saving its findings (a gap with its standard error, a picked strategy, a
parameter count) under stable keys, one small JSON file per notebook in ``data/headlines/``,
written atomically. The interview hub (notebook 13) and its cheat sheet quote those numbers, so
an answer shows what the learner's own run measured, never a typed figure; when a notebook has
not been run yet, they say which one to run.

Example:
    >>> save_headlines("04_finetuning_strategies", seed=0, headlines={
    ...     "full_minus_fe": headline(0.031, "test accuracy, full fine-tuning minus feature extraction", se=0.008),
    ...     "pick": headline("LP-FT", "the strategy picked on validation"),
    ... })
    >>> quote("04_finetuning_strategies/full_minus_fe").text
    '0.0310 ± 0.0080'
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlutils.core.io import atomic_file
from tlutils.core.paths import project_root

#: Version of the file format; a file of another version is treated as not yet written.
FORMAT_VERSION = 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_KEY = re.compile(r"[a-z0-9][a-z0-9_]*")


class HeadlineError(ValueError):
    """A headline result that cannot be saved or read: the message says what to fix."""


def headline(value: Any, what: str, se: float | None = None) -> dict:
    """One headline result: a value, what it measures, and its standard error when it has one.

    Args:
        value: A finite number, a short text (a picked strategy), a bool, or a table as a list
            of flat dicts (rows of numbers and texts).
        what: What the number is, in words a reader of the cheat sheet understands alone
            (metric, split, the arms of a difference, the unit).
        se: Standard error over seeds, for a mean or a paired gap.

    Returns:
        The entry for :func:`save_headlines`.

    Raises:
        HeadlineError: The value is not one of the kinds above, is not finite, or ``what`` is empty.
    """
    if not isinstance(what, str) or not what.strip():
        raise HeadlineError("a headline needs `what`: say in words what the value measures")
    return {"value": _plain_value(value, what), "se": None if se is None else _finite(se, f"the se of {what!r}"),
            "what": what.strip()}


def _finite(value: Any, what: str) -> float:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise HeadlineError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _plain_value(value: Any, what: str) -> Any:
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, tuple)):
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite(value, f"the value of {what!r}")
    if isinstance(value, (list, tuple)) and value and all(isinstance(row, Mapping) for row in value):
        return [{str(column): _plain_value(cell, what) for column, cell in row.items()} for row in value]
    raise HeadlineError(f"the value of {what!r} is {type(value).__name__}; use a number, a text, a bool "
                        "or a table as a list of dicts")


def headlines_path(notebook: str, folder: str | Path | None = None) -> Path:
    """Where ``notebook``'s headlines live: ``<folder>/<notebook>.json`` (default ``data/headlines``).

    Raises:
        HeadlineError: ``notebook`` is not a plain stem such as ``"04_finetuning_strategies"``.
    """
    if not isinstance(notebook, str) or not _NAME.fullmatch(notebook):
        raise HeadlineError(f"notebook {notebook!r} must be a notebook's file stem such as "
                            "'04_finetuning_strategies' (letters, digits and '_')")
    folder = Path(folder) if folder is not None else project_root() / "data" / "headlines"
    return folder / f"{notebook}.json"


def save_headlines(notebook: str, seed: int, headlines: Mapping[str, dict],
                   folder: str | Path | None = None) -> Path:
    """Write a notebook's headline results atomically, replacing the ones of its previous run.

    Args:
        notebook: The notebook's file stem, e.g. ``"04_finetuning_strategies"``.
        seed: The SEED of the run (shown next to every quoted number).
        headlines: Key -> :func:`headline` entry; keys are lower-case words joined by ``_``.
        folder: Where to write; default ``<project root>/data/headlines``.

    Returns:
        The path written.

    Raises:
        HeadlineError: A key is malformed, an entry was not made by :func:`headline`, or there are none.
    """
    if not headlines:
        raise HeadlineError(f"{notebook}: no headlines to save; pass key -> headline(...) entries")
    entries = {}
    for key, entry in headlines.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise HeadlineError(f"{notebook}: key {key!r} must be lower-case letters, digits and '_'")
        if not isinstance(entry, Mapping) or set(entry) != {"value", "se", "what"}:
            raise HeadlineError(f"{notebook}: the entry {key!r} must come from headline(value, what, se=...)")
        entries[key] = headline(entry["value"], entry["what"], se=entry["se"])
    document = {"format": FORMAT_VERSION, "notebook": notebook, "seed": int(seed),
                "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "headlines": entries}
    path = headlines_path(notebook, folder)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                             encoding="utf-8")
    return path


def load_headlines(notebook: str, folder: str | Path | None = None) -> dict | None:
    """The saved headlines of ``notebook`` (the whole document), or None when it has not been run.

    A file that does not parse, has another format version or names another notebook is treated
    as not yet written (with the reason in ``document["problem"]`` of a stub), so nothing stale or
    damaged is quoted.
    """
    path = headlines_path(notebook, folder)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return {"problem": f"{path} could not be read ({error}); run {notebook}.ipynb again to rewrite it"}
    if (not isinstance(document, dict) or document.get("format") != FORMAT_VERSION
            or document.get("notebook") != notebook or not isinstance(document.get("headlines"), dict)):
        return {"problem": f"{path} is not a headlines file of this version; run {notebook}.ipynb again"}
    return document


@dataclass(frozen=True)
class Quote:
    """A headline as quoted in an answer: its text, or what to run to get it.

    Attributes:
        key: ``"<notebook>/<key>"``.
        found: True when the learner's run saved this key.
        text: The value as shown (``"0.031 ± 0.008"``), or the instruction to run the notebook.
        what: What the value measures ("" when not found).
        seed: The SEED of the run that saved it (None when not found).
        value: The raw value (None when not found).
    """

    key: str
    found: bool
    text: str
    what: str = ""
    seed: int | None = None
    value: Any = None


def format_value(value: Any, se: float | None = None) -> str:
    """A headline value as text: 3 significant figures, ``± se`` when there is one, integers with commas."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if se is None:
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        decimals = max(0, min(6, 1 - math.floor(math.log10(abs(se))))) if se > 0 else 3
        return f"{value:.{decimals}f} ± {se:.{decimals}f}"
    return f"a table of {len(value)} rows"


def split_key(key: str) -> tuple[str, str]:
    """``"04_finetuning_strategies/pick"`` -> ``("04_finetuning_strategies", "pick")``.

    Raises:
        HeadlineError: The key is not ``notebook/key``.
    """
    notebook, slash, name = key.partition("/")
    if not slash or not _NAME.fullmatch(notebook) or not _KEY.fullmatch(name):
        raise HeadlineError(f"result key {key!r} must read '<notebook stem>/<key>', "
                            "e.g. '04_finetuning_strategies/pick'")
    return notebook, name


def quote(key: str, folder: str | Path | None = None) -> Quote:
    """The learner's own value for ``"<notebook>/<key>"``, or a :class:`Quote` saying what to run."""
    notebook, name = split_key(key)
    document = load_headlines(notebook, folder)
    if document is None:
        return Quote(key, False, f"(run {notebook}.ipynb to see your number here)")
    if "problem" in document:
        return Quote(key, False, f"({document['problem']})")
    entry = document["headlines"].get(name)
    if entry is None:
        return Quote(key, False, f"(your run of {notebook}.ipynb saved no {name!r}; run its latest version)")
    return Quote(key, True, format_value(entry["value"], entry.get("se")), entry.get("what", ""),
                 document.get("seed"), entry["value"])


def headlines_table(notebook: str, folder: str | Path | None = None):
    """The saved headlines of ``notebook`` as a table (key, value as quoted, what it measures).

    Returns:
        A pandas DataFrame indexed by key; empty when the notebook has not been run.
    """
    import pandas as pd

    document = load_headlines(notebook, folder)
    rows = [] if document is None or "problem" in document else [
        {"key": key, "value": format_value(entry["value"], entry.get("se")), "what": entry["what"]}
        for key, entry in document["headlines"].items()]
    return pd.DataFrame(rows, columns=["key", "value", "what"]).set_index("key")
