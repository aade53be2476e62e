"""The interview hub: grading, worked answers with the learner's numbers, progress, mock interview, cheat sheet, widgets."""

import json

import pytest

from tlutils.core.results import headline, save_headlines
from tlutils.course import interview, question_bank
from tlutils.course.question_bank import validate_question

EVIDENCE = {"notebook": "04_finetuning_strategies", "section": "4. The measured table"}
BASE = {"difficulty": 2, "model_answer": "Because {{04_finetuning_strategies/gap}} says so.",
        "wrong_answer": "Not this.", "follow_up": "And then?", "evidence": EVIDENCE}


def _choice(number: int = 0, topic: str = "strategies"):
    return validate_question({**BASE, "id": f"c-{number}", "topic": topic, "kind": "choice",
                              "question": f"Choice {number}?", "options": ["right", "wrong", "worse", "worst"],
                              "answer": "right"})


def _short(number: int = 0, topic: str = "cost"):
    return validate_question({**BASE, "id": f"s-{number}", "topic": topic, "kind": "short",
                              "question": f"Short {number}?", "key_points": ["one", "two", "three", "four"]})


def test_choice_questions_are_graded_on_the_shuffled_order():
    question = _choice()
    asked = interview.ask(question, attempt=5)
    assert asked == interview.ask(question, attempt=5), "an attempt can be replayed"
    assert {interview.ask(question, a).options for a in range(20)} != {asked.options}, "attempts reshuffle"
    assert interview.grade(asked, asked.correct).right
    assert interview.grade(asked, "right").right and not interview.grade(asked, "wrong").right
    wrong = interview.grade(asked, (asked.correct + 1) % 4)
    assert wrong.score == 0 and "'right'" in wrong.feedback
    assert "Pick one of the 4 options" in interview.grade(asked, 7).feedback


def test_short_answers_score_the_covered_key_points():
    asked = interview.ask(_short())
    half = interview.grade(asked, [0, 2])
    assert half.score == 0.5 and not half.right and "two; four" in half.feedback
    assert interview.grade(asked, [0, 1, 2, 3]).right
    assert "0 to 3" in interview.grade(asked, [9]).feedback


def test_numeric_questions_are_computed_when_asked(monkeypatch):
    calls = []
    monkeypatch.setitem(question_bank.NUMERIC, "fake_count", lambda size: calls.append(size) or size * 10)
    question = validate_question({**BASE, "id": "n-1", "topic": "cost", "kind": "numeric",
                                  "question": "Size {size}: how many?", "compute": "fake_count",
                                  "vary": {"size": [3, 4]}, "tolerance": 0.01})
    asked = interview.ask(question, attempt=2)
    size = question_bank.numeric_arguments(question, 2)["size"]
    assert asked.text == f"Size {size}: how many?"
    assert interview.grade(asked, size * 10 * 1.005).right and not interview.grade(asked, size * 11).right
    assert "Expected a number" in interview.grade(asked, "many").feedback


def test_reveal_quotes_the_learners_run_or_says_what_to_run(tmp_path):
    question = _choice()
    before = interview.reveal(question, folder=tmp_path)
    assert "run 04_finetuning_strategies.ipynb" in before and "From your run" not in before
    save_headlines("04_finetuning_strategies", 2, {"gap": headline(0.031, "the gap", se=0.008)}, folder=tmp_path)
    after = interview.reveal(question, folder=tmp_path)
    assert "Because 0.0310 ± 0.0080 says so." in after and "the gap = 0.0310 ± 0.0080 (SEED 2)" in after
    assert "(04_finetuning_strategies.ipynb#4.-The-measured-table)" in after


def test_progress_resumes_and_resets(tmp_path):
    path = tmp_path / "progress.json"
    progress = interview.Progress(path)
    progress.record("c-0", 1.0)
    progress.record("c-0", 0.0)
    again = interview.Progress(path)
    assert again.scores["c-0"]["attempts"] == 2 and again.scores["c-0"]["best"] == 1.0
    assert again.next_attempt("c-0") == 2 and again.summary([_choice()])["mastered"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "progress.json"], "atomic writes leave no temporaries"
    again.reset()
    assert not path.exists() and interview.Progress(path).scores == {}


def test_a_damaged_progress_file_is_kept_aside_not_overwritten(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text("{half a file")
    with pytest.warns(RuntimeWarning, match="damaged"):
        progress = interview.Progress(path)
    assert progress.scores == {} and (tmp_path / "progress.json.damaged").read_text() == "{half a file"


def test_a_mock_interview_is_timed_scored_and_lists_topics_to_revisit():
    questions = [_choice(i, topic) for i, topic in enumerate(["strategies", "cost", "nlp"])]
    questions += [_short(i, topic) for i, topic in enumerate(["speech", "bias"])]
    now = [100.0]
    mock = interview.MockInterview(questions, n=4, seed=1, clock=lambda: now[0])
    assert len({q.topic for q in mock.questions}) == 4, "spread over topics"
    for index, asked in enumerate(mock.asked):
        now[0] += 30
        mock.answer(index, asked.correct if asked.question.kind == "choice" else [])
    now[0] += 1000  # after the last answer the clock has stopped
    choice_topics = {q.topic for q in mock.questions if q.kind == "choice"}
    assert mock.seconds == 120 and mock.score == len(choice_topics)
    assert set(mock.topics_to_revisit()) == {q.topic for q in mock.questions} - choice_topics
    assert "2.0 min" in mock.report()
    with pytest.raises(ValueError, match="between 1 and 5"):
        interview.MockInterview(questions, n=6)


def test_the_cheat_sheet_quotes_the_runs_and_names_what_to_run(tmp_path):
    often = validate_question({**BASE, "id": "often-1", "topic": "strategies", "kind": "short",
                               "question": "The classic?", "key_points": ["a", "b"], "often_asked": True})
    save_headlines("04_finetuning_strategies", 0, {
        "gap": headline(0.031, "full minus probe", se=0.008),
        "decision_table": headline([{"strategy": "LP-FT", "test": 0.81}], "the table")}, folder=tmp_path)
    sheet = interview.cheat_sheet([often, _choice()], folder=tmp_path)
    assert "| strategy | test |" in sheet and "| LP-FT | 0.81 |" in sheet
    assert "full minus probe: **0.0310 ± 0.0080**" in sheet and "run 11_scratch_vs_transfer.ipynb" in sheet
    assert "1. **The classic?** Because 0.0310 ± 0.0080 says so." in sheet and "Choice 0" not in sheet
    path = interview.write_cheat_sheet([often], path=tmp_path / "sheet.md", folder=tmp_path)
    assert path.read_text() == interview.cheat_sheet([often], folder=tmp_path)


def test_flashcards_filter_by_topic():
    cards = interview.flashcards([_choice(0, "cost"), _short(1, "nlp")], "nlp")
    assert cards == [("Short 1?", interview.render(BASE["model_answer"]))]
    with pytest.raises(ValueError, match="unknown topic"):
        interview.flashcards([], "cooking")


def test_the_widgets_run_the_same_logic(tmp_path):
    progress = interview.Progress(tmp_path / "p.json")
    quiz = interview.quiz_widget([_choice(0), _short(1)], progress, folder=tmp_path)
    header, body, (check, following), _output = quiz.children[0], quiz.children[1], quiz.children[2].children, None
    body.children[0].value = 0
    check.click()
    assert json.loads((tmp_path / "p.json").read_text())["scores"]["c-0"]["attempts"] == 1
    following.click()
    assert "Short 1?" in header.value
    cards = interview.flashcard_widget([_choice(0), _short(1)], folder=tmp_path)
    cards.children[1].children[0].click()  # flip
    mock = interview.MockInterview([_choice(0), _short(1, "nlp")], n=2)
    front = interview.mock_interview_widget(mock)
    front.children[2].click()
    front.children[2].click()
    assert "Done" in front.children[0].value and all(item is not None for item in mock.graded)
