"""Headline results: saved atomically, read back, quoted; damaged or foreign files are never quoted."""

import json

import numpy as np
import pytest

from tlutils.core.results import (
    HeadlineError, format_value, headline, headlines_path, headlines_table, load_headlines, quote, save_headlines,
    split_key)


def test_headlines_round_trip_and_are_quoted(tmp_path):
    path = save_headlines("04_demo", 1, {
        "gap": headline(np.float64(0.0312), "test accuracy, A minus B", se=0.0081),
        "pick": headline("LP-FT", "the strategy picked on validation"),
        "params": headline(np.int64(12810), "trainable parameters"),
        "table": headline([{"arm": "A", "acc": 0.91}], "the measured table")}, folder=tmp_path)
    assert path == tmp_path / "04_demo.json" and [p.name for p in tmp_path.iterdir()] == ["04_demo.json"]
    document = load_headlines("04_demo", tmp_path)
    assert document["seed"] == 1 and document["headlines"]["params"]["value"] == 12810
    gap = quote("04_demo/gap", tmp_path)
    assert gap.found and gap.text == "0.0312 ± 0.0081" and gap.seed == 1 and gap.what == "test accuracy, A minus B"
    assert quote("04_demo/pick", tmp_path).text == "LP-FT" and quote("04_demo/params", tmp_path).text == "12,810"
    assert list(headlines_table("04_demo", tmp_path).index) == ["gap", "pick", "params", "table"]


def test_a_notebook_not_run_or_a_key_not_saved_says_what_to_run(tmp_path):
    missing = quote("07_nlp_bert/gap", tmp_path)
    assert not missing.found and "run 07_nlp_bert.ipynb" in missing.text
    save_headlines("07_nlp_bert", 0, {"other": headline(1.0, "something")}, folder=tmp_path)
    assert "saved no 'gap'" in quote("07_nlp_bert/gap", tmp_path).text
    assert headlines_table("08_nlp_gpt", tmp_path).empty


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "notebook": "05_x", "headlines": {}}),
                                     json.dumps({"format": 1, "notebook": "another", "headlines": {}})])
def test_damaged_or_foreign_files_are_not_quoted(tmp_path, content):
    (tmp_path / "05_x.json").write_text(content)
    said = quote("05_x/gap", tmp_path)
    assert not said.found and "run 05_x.ipynb again" in said.text


@pytest.mark.parametrize("value, what, se, message", [
    (float("nan"), "accuracy", None, "finite"), (0.5, "", None, "what"), (0.5, "accuracy", float("inf"), "finite"),
    ({"a": 1}, "accuracy", None, "a table"), ([1, 2], "accuracy", None, "a table")])
def test_bad_headlines_are_refused_with_the_reason(value, what, se, message):
    with pytest.raises(HeadlineError, match=message):
        headline(value, what, se=se)


def test_bad_keys_and_names_are_refused(tmp_path):
    with pytest.raises(HeadlineError, match="lower-case"):
        save_headlines("04_demo", 0, {"Bad Key": headline(1.0, "x")}, folder=tmp_path)
    with pytest.raises(HeadlineError, match="headline"):
        save_headlines("04_demo", 0, {"key": {"value": 1.0}}, folder=tmp_path)
    with pytest.raises(HeadlineError, match="no headlines"):
        save_headlines("04_demo", 0, {}, folder=tmp_path)
    with pytest.raises(HeadlineError, match="file stem"):
        headlines_path("../04_demo")
    with pytest.raises(HeadlineError, match="notebook stem"):
        split_key("04_demo.gap")
    assert not list(tmp_path.iterdir()), "a refused save writes nothing"


def test_values_are_formatted_for_reading():
    assert format_value(0.87654) == "0.877" and format_value(0.8766, 0.0123) == "0.877 ± 0.012"
    assert format_value(2236682) == "2,236,682" and format_value(True) == "True"
    assert format_value(12345.6) == "12,346" and format_value(0.5, 0.0) == "0.500 ± 0.000"
