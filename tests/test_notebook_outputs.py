"""Committed progress bars show where they ended, closed ones vanish, other widgets are left alone."""

from __future__ import annotations

import json

import pytest

from tlutils.__main__ import main
from tlutils.course.notebook_outputs import tidy_file, tidy_progress_bars

VIEW = "application/vnd.jupyter.widget-view+json"


def bar_models(prefix: str, label: str, counter: str, style: str) -> dict:
    """The saved state of one tqdm notebook bar: an HBox of label, bar and counter."""
    return {
        prefix: {"model_name": "HBoxModel", "state": {"children": [f"IPY_MODEL_{prefix}a", f"IPY_MODEL_{prefix}b",
                                                                   f"IPY_MODEL_{prefix}c"]}},
        f"{prefix}a": {"model_name": "HTMLModel", "state": {"value": label}},
        f"{prefix}b": {"model_name": "FloatProgressModel", "state": {"value": 18.0, "max": 18.0, "bar_style": style}},
        f"{prefix}c": {"model_name": "HTMLModel", "state": {"value": counter}},
    }


def widget_output(model_id: str, text: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0}, "text/plain": [text]}}


def notebook_with_bars() -> dict:
    state = {**bar_models("done", "compare:\u2007100%", "\u200718/18\u2007[00:03&lt;00:00]", "success"),
             **bar_models("gone", "training:\u2007100%", "\u200718/18", ""),
             "slider": {"model_name": "VBoxModel", "state": {"children": []}}}
    outputs = [widget_output("done", "compare:   0%|   | 0/18"), widget_output("gone", "training:   0%|   | 0/18"),
               widget_output("slider", "VBox(children=(...))"), {"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    return {"cells": [{"cell_type": "code", "source": [], "metadata": {}, "outputs": outputs, "execution_count": 1}],
            "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state}}},
            "nbformat": 4, "nbformat_minor": 5}


def test_a_finished_bar_shows_its_last_state_a_closed_one_is_dropped_and_others_stay():
    notebook = notebook_with_bars()
    assert tidy_progress_bars(notebook) == 2
    outputs = notebook["cells"][0]["outputs"]
    assert [o["data"]["text/plain"] for o in outputs[:2]] == [["compare: 100%| 18/18 [00:03<00:00]"],
                                                              ["VBox(children=(...))"]]
    assert outputs[2]["output_type"] == "stream"
    assert tidy_progress_bars(notebook) == 0  # tidying twice changes nothing


def test_without_saved_widget_state_nothing_changes():
    notebook = notebook_with_bars()
    notebook["metadata"] = {}
    before = json.dumps(notebook)
    assert tidy_progress_bars(notebook) == 0 and json.dumps(notebook) == before


def test_the_file_is_rewritten_only_when_something_changed_and_a_non_notebook_is_refused(tmp_path, capsys):
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps(notebook_with_bars()))
    assert tidy_file(path) == 2 and tidy_file(path) == 0
    assert len(json.loads(path.read_text())["cells"][0]["outputs"]) == 3
    other = tmp_path / "b.ipynb"
    other.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a Jupyter notebook"):
        tidy_file(other)
    assert main(["tidy", str(path), str(other)]) == 1
    assert "0 progress-bar outputs tidied" in capsys.readouterr().out
