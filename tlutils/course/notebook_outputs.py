"""Committed notebook outputs that read right on a static page: progress bars show where they ended.

A progress bar in a notebook is an ipywidget. Its output keeps, as plain text, the bar as it was
drawn *first* ("compare:   0%|   | 0/18"), while the bar's last state lives in the notebook's
saved widget state. A page that does not run widgets (a repository viewer, nbviewer without
state) shows the frozen first drawing. :func:`tidy_progress_bars` rewrites that plain text from
the saved last state, and drops the outputs of bars that closed themselves (``leave=False``: tqdm
marks a finished bar it keeps "success"), which a live notebook no longer shows either. Nothing else in the notebook changes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from tlutils.core.io import atomic_file

_VIEW = "application/vnd.jupyter.widget-view+json"
_STATE = "application/vnd.jupyter.widget-state+json"


def _progress_widget(model_id: str, state: dict) -> tuple[str, str] | None:
    """``(text, bar_style)`` a saved tqdm widget (an HBox of label, bar, counter) showed last; None if not one."""
    model = state.get(model_id)
    if model is None or model.get("model_name") != "HBoxModel":
        return None
    texts, style, has_bar = [], "", False
    for child in model.get("state", {}).get("children", []):
        child_state = state.get(str(child).replace("IPY_MODEL_", ""), {})
        values = child_state.get("state", {})
        if child_state.get("model_name") == "HTMLModel":
            texts.append(html.unescape(values.get("value", "")).replace("\u2007", " "))
        elif child_state.get("model_name") == "FloatProgressModel":
            has_bar, style = True, values.get("bar_style") or ""
    if not has_bar:
        return None
    return "|".join(texts), style


def tidy_progress_bars(notebook: dict) -> int:
    """Make every progress-bar output of ``notebook`` show its last state; return how many changed.

    Args:
        notebook: A notebook as parsed JSON (changed in place).

    Returns:
        The number of outputs rewritten or dropped.
    """
    state = notebook.get("metadata", {}).get("widgets", {}).get(_STATE, {}).get("state", {})
    changed = 0
    if not state:  # no saved widget state: nothing to read the last drawing from
        return 0
    for cell in notebook.get("cells", []):
        kept = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(_VIEW)
            if view is None:
                kept.append(output)
                continue
            bar = _progress_widget(view.get("model_id", ""), state)
            if bar is None:  # another widget (a slider, ...): left as it is
                kept.append(output)
                continue
            text, style = bar
            if not style:  # tqdm marks a finished bar "success" (or "danger"); an unmarked one closed itself
                changed += 1
                continue
            if output["data"].get("text/plain") != [text]:
                output["data"]["text/plain"] = [text]
                changed += 1
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return changed


def tidy_file(path: str | Path) -> int:
    """Apply :func:`tidy_progress_bars` to a notebook file, written atomically; return the count.

    Raises:
        ValueError: The file is not a notebook (no ``cells``).
    """
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(notebook, dict) or "cells" not in notebook:
        raise ValueError(f"{path} is not a Jupyter notebook (no 'cells'): pass .ipynb files")
    changed = tidy_progress_bars(notebook)
    if changed:
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed
