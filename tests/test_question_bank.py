"""The interview question bank: schema, evidence that resolves, results that exist, balanced positions,
numeric answers that match an independent count."""

import ast
import json
from collections import Counter
from pathlib import Path

import pytest

from tlutils.core.paths import project_root
from tlutils.core.results import load_headlines, quote, split_key
from tlutils.course import question_bank
from tlutils.course.interview import ask
from tlutils.course.question_bank import (
    KINDS, TOPICS, BankError, bank_problems, load_bank, numeric_answer, numeric_arguments, validate_question)

NOTEBOOKS = project_root() / "notebooks"


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def _is_headline(node) -> bool:
    return isinstance(node, ast.Call) and "headline" in getattr(node.func, "id", "")


def _saved_keys(notebook: str) -> set[str]:
    """Keys the notebook's headline cell saves, read from its source (no run needed): every
    ``"key": headline(...)`` of a dict and every ``entries["key"] = headline(...)`` in that cell."""
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    keys = set()
    for cell in cells:
        source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        if "save_headlines(" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Dict):
                keys |= {key.value for key, value in zip(node.keys, node.values)
                         if isinstance(key, ast.Constant) and _is_headline(value)}
            elif isinstance(node, ast.Assign) and _is_headline(node.value):
                keys |= {target.slice.value for target in node.targets
                         if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant)}
    return keys


def test_the_bank_is_large_covers_every_topic_and_kind(bank):
    assert len(bank) >= 80
    assert {q.topic for q in bank} == set(TOPICS)
    assert {q.kind for q in bank} == set(KINDS)
    assert sum(q.often_asked for q in bank) == 10


def test_every_evidence_link_resolves_to_a_notebook_heading(bank):
    assert bank_problems(bank) == []


def test_every_quoted_result_is_saved_by_its_notebook(bank):
    quoted = {key for q in bank for key in q.result_keys}
    assert len(quoted) >= 30, "answers quote the learners' runs"
    by_notebook = {}
    for key in quoted:
        notebook, name = split_key(key)
        by_notebook.setdefault(notebook, set()).add(name)
    for notebook, names in by_notebook.items():
        assert names <= _saved_keys(notebook), f"{notebook} does not save {sorted(names - _saved_keys(notebook))}"


def test_quoted_results_exist_in_the_saved_results_of_a_run(bank):
    ran = {key for q in bank for key in q.result_keys if load_headlines(split_key(key)[0]) is not None}
    if not ran:
        pytest.skip("no notebook has saved its headlines yet (make test runs the notebooks after the unit tests)")
    assert all(quote(key).found for key in ran), [key for key in ran if not quote(key).found]


def test_questions_are_not_repeated(tmp_path, bank):
    assert len({q.id for q in bank}) == len(bank)
    assert len({" ".join(q.question.lower().split()) for q in bank}) == len(bank)
    entry = (question_bank.QUESTIONS_DIR / "general.yaml").read_text()
    (tmp_path / "a.yaml").write_text(entry)
    (tmp_path / "b.yaml").write_text(entry)
    with pytest.raises(BankError, match="repeats"):
        load_bank(tmp_path)


def test_the_right_option_is_not_always_in_the_same_place(bank):
    choice = [q for q in bank if q.kind == "choice"]
    for question in choice:  # each question: over attempts, the right option visits every position
        positions = Counter(ask(question, attempt).correct for attempt in range(60))
        assert set(positions) == set(range(len(question.options))), question.id
    first_attempt = Counter(ask(q, 0).correct for q in choice if len(q.options) == 4)
    expected = sum(first_attempt.values()) / 4
    chi_square = sum((first_attempt[p] - expected) ** 2 / expected for p in range(4))
    assert chi_square < 16.3, first_attempt  # p = 0.001 with 3 degrees of freedom


def test_numeric_answers_match_an_independent_count(bank):
    import torchvision

    from tlutils.core.models import load_smollm2, load_text_encoder

    numeric = {q.compute: q for q in bank if q.kind == "numeric"}
    assert set(numeric) == set(question_bank.NUMERIC)
    bare = torchvision.models.mobilenet_v2(num_classes=10)  # the same architecture, built independently
    for frozen in numeric["trainable_after_freezing"].vary["frozen_blocks"]:
        frozen_names = tuple(f"features.{i}." for i in range(frozen))
        count = sum(p.numel() for name, p in bare.named_parameters() if not name.startswith(frozen_names))
        assert question_bank.trainable_after_freezing(frozen) == count
        tensors = sum(1 for name, _ in bare.named_parameters() if not name.startswith(frozen_names))
        assert question_bank.adam_state_megabytes(frozen) == pytest.approx((8 * count + 4 * tensors) / 1e6)
    config = load_smollm2()[1].config
    head_dim = config.hidden_size // config.num_attention_heads
    per_rank = config.num_hidden_layers * (2 * config.hidden_size + config.hidden_size
                                           + config.num_key_value_heads * head_dim)
    for rank in numeric["lora_parameters"].vary["rank"]:
        assert question_bank.lora_parameters(rank) == rank * per_rank
    encoder = load_text_encoder("minilm_l6")[1]
    assert numeric_answer(numeric["bitfit_parameters"]) == sum(
        p.numel() for name, p in encoder.named_parameters() if name.endswith(".bias"))


def test_numeric_questions_draw_their_arguments_per_attempt(bank):
    question = next(q for q in bank if q.kind == "numeric" and q.vary)
    draws = {json.dumps(numeric_arguments(question, attempt), sort_keys=True) for attempt in range(30)}
    assert len(draws) > 1 and numeric_arguments(question, 3) == numeric_arguments(question, 3)
    assert "{" not in ask(question, 3).text, "the drawn arguments are filled into the question"


GOOD = {"id": "x-one", "topic": "cost", "difficulty": 2, "kind": "choice", "question": "Which?",
        "options": ["a", "b", "c"], "answer": "b", "model_answer": "B, because.", "wrong_answer": "A: no.",
        "follow_up": "Why?", "evidence": {"notebook": "04_finetuning_strategies", "section": "4. The measured table"}}


@pytest.mark.parametrize("change, message", [
    ({"kind": "essay"}, "kind"), ({"topic": "cooking"}, "topic"), ({"difficulty": 5}, "difficulty"),
    ({"answer": "d"}, "exactly one of them"), ({"options": ["a", "b"]}, "3 to 5"), ({"id": "Bad Id"}, "id"),
    ({"colour": "red"}, "unknown fields"), ({"evidence": {"notebook": "04"}}, "evidence"),
    ({"model_answer": " "}, "model_answer"), ({"model_answer": "see {{04 strategies}}"}, "notebook stem")])
def test_schema_errors_name_the_question_and_the_field(change, message):
    assert validate_question(GOOD, "t.yaml").answer == "b"
    with pytest.raises(BankError, match=message):
        validate_question({**GOOD, **change}, "t.yaml")
    missing = {key: value for key, value in GOOD.items() if key != "follow_up"}
    with pytest.raises(BankError, match="missing fields"):
        validate_question(missing, "t.yaml")


def test_evidence_to_a_missing_heading_or_notebook_is_reported():
    wrong = validate_question({**GOOD, "evidence": {"notebook": "04_finetuning_strategies", "section": "99. No"}})
    gone = validate_question({**GOOD, "id": "x-two", "evidence": {"notebook": "99_none", "section": "1. Settings"}})
    problems = bank_problems([wrong, gone])
    assert len(problems) == 2 and "no heading" in problems[0] and "no notebook 99_none" in problems[1]


def test_headings_inside_code_blocks_are_not_headings(tmp_path):
    cell = {"cell_type": "markdown", "source": ["## Real\n", "```bash\n", "# a comment\n", "```\n"]}
    (tmp_path / "n.ipynb").write_text(json.dumps({"cells": [cell]}))
    assert question_bank.notebook_headings("n", tmp_path) == ["Real"]


def test_a_broken_yaml_file_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("- id: a\n  question: x: y\n")
    with pytest.raises(BankError, match="bad.yaml is not valid YAML"):
        load_bank(tmp_path)
    with pytest.raises(BankError, match="no question files"):
        load_bank(Path(tmp_path / "empty"))
