"""The interview hub: an auto-graded quiz, flashcards, a mock interview, saved progress and a cheat sheet.

Every piece is a plain function or class first (:func:`ask`, :func:`grade`, :func:`reveal`,
:class:`Progress`, :class:`MockInterview`, :func:`cheat_sheet`), so nbval tests the same logic a
learner uses and a static page shows a sample; the ipywidgets front ends (:func:`quiz_widget`,
:func:`flashcard_widget`, :func:`mock_interview_widget`) only call them.

Multiple-choice options are shuffled per attempt (seeded by question id and attempt number), so
the right answer is not always first and an attempt can be replayed.
"""

from __future__ import annotations

import datetime
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tlutils.core.io import atomic_file
from tlutils.core.paths import project_root
from tlutils.core.results import format_value, load_headlines, quote
from tlutils.course.curriculum import NOTEBOOKS
from tlutils.course.question_bank import (
    DIFFICULTIES, TOPICS, Question, evidence_link, numeric_answer, question_text, render)

#: A topic whose mean score in a mock interview is below this is listed to revisit.
REVISIT_BELOW = 0.7

#: The notebooks whose headlines the cheat sheet quotes, in course order (the map, less the tour and the hub).
COURSE_NOTEBOOKS = tuple(name.removesuffix(".ipynb") for name, _section, _topic in NOTEBOOKS
                         if name not in ("00_setup_and_tour.ipynb", "13_interview_prep.ipynb"))


@dataclass(frozen=True)
class Asked:
    """One question as put to the learner in one attempt.

    Attributes:
        question: The bank entry.
        attempt: The attempt number (seeds the option order and a numeric question's arguments).
        text: The question as asked.
        options: The options in this attempt's order (choice questions; empty otherwise).
        correct: Index of the right option in ``options`` (None for other kinds).
    """

    question: Question
    attempt: int
    text: str
    options: tuple[str, ...] = ()
    correct: int | None = None


@dataclass(frozen=True)
class Graded:
    """The verdict on one response: ``score`` in [0, 1], ``right`` when full marks, and what to say."""

    score: float
    right: bool
    feedback: str


def shuffled_options(question: Question, attempt: int) -> tuple[tuple[str, ...], int]:
    """The options of a choice question in the order of one attempt, and the index of the right one."""
    options = list(question.options)
    random.Random(f"{question.id}:options:{attempt}").shuffle(options)
    return tuple(options), options.index(question.answer)


def ask(question: Question, attempt: int = 0) -> Asked:
    """Put ``question`` for attempt number ``attempt`` (options shuffled, numeric arguments drawn)."""
    if question.kind == "choice":
        options, correct = shuffled_options(question, attempt)
        return Asked(question, attempt, question_text(question, attempt), options, correct)
    return Asked(question, attempt, question_text(question, attempt))


def grade(asked: Asked, response) -> Graded:
    """Grade a response to an asked question.

    Args:
        asked: From :func:`ask`.
        response: Choice: the index of the chosen option (or its text). Numeric: a number.
            Short answer and scenario: the indices of the rubric's key points the learner's own
            answer covered (self-graded, honestly, after writing the answer down).

    Returns:
        A :class:`Graded` (a response of the wrong type scores 0 and says what was expected).
    """
    question = asked.question
    if question.kind == "choice":
        index = asked.options.index(response) if isinstance(response, str) and response in asked.options else response
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(asked.options):
            return Graded(0.0, False, f"Pick one of the {len(asked.options)} options by its number (0 to "
                                      f"{len(asked.options) - 1}) or its text.")
        right = index == asked.correct
        return Graded(float(right), right, "Correct." if right else f"Not quite: the answer is {question.answer!r}.")
    if question.kind == "numeric":
        expected = numeric_answer(question, asked.attempt)
        try:
            value = float(response)
        except (TypeError, ValueError):
            return Graded(0.0, False, f"Expected a number, got {response!r}.")
        right = math.isclose(value, expected, rel_tol=question.tolerance)
        unit = f" {question.unit}" if question.unit else ""
        return Graded(float(right), right, "Correct." if right else f"Not quite: the measured value is "
                      f"{format_value(expected if expected != int(expected) else int(expected))}{unit}.")
    covered = set(response or ())
    points = question.key_points
    if not covered <= set(range(len(points))):
        return Graded(0.0, False, f"Tick key points by their numbers, 0 to {len(points) - 1}.")
    score = len(covered) / len(points)
    missed = [point for i, point in enumerate(points) if i not in covered]
    return Graded(score, score == 1.0, "All key points covered." if not missed else
                  "To add next time: " + "; ".join(missed) + ".")


def reveal(question: Question, folder: str | Path | None = None) -> str:
    """The worked answer as Markdown: model answer (with the learner's numbers), the common wrong
    answer, the follow-up and the link to the evidence. ``folder`` is where the headlines are."""
    lines = [f"**Model answer.** {render(question.model_answer, folder)}",
             f"**The common wrong answer.** {render(question.wrong_answer, folder)}",
             f"**Follow-up to expect.** {render(question.follow_up, folder)}"]
    if question.kind in ("short", "scenario"):
        lines.insert(1, "**Key points.** " + " · ".join(f"({i}) {p}" for i, p in enumerate(question.key_points)))
    quotes = [quote(key, folder) for key in question.result_keys]
    found = [item for item in quotes if item.found]
    if found:
        lines.append("**From your run:** " + "; ".join(
            f"{item.what} = {item.text} (SEED {item.seed})" for item in found))
    lines.append(f"**Evidence:** {evidence_link(question)}")
    return "\n\n".join(lines)


def flashcards(questions: Sequence[Question], topic: str | None = None,
               folder: str | Path | None = None) -> list[tuple[str, str]]:
    """``(front, back)`` cards: the question, and the model answer with the learner's numbers."""
    if topic is not None and topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}; the topics are: {', '.join(TOPICS)}")
    return [(question_text(question), render(question.model_answer, folder))
            for question in questions if topic is None or question.topic == topic]


class Progress:
    """Scores per question, saved to a local JSON file (atomic writes) so a learner can resume.

    Args:
        path: Default ``<project root>/data/interview_progress.json``.

    A file that does not parse is not overwritten: it is kept beside as ``.damaged`` and the
    progress starts empty, with a warning that says so.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else project_root() / "data" / "interview_progress.json"
        self.scores: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        import warnings

        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
                raise ValueError("no 'scores' mapping")
            return data["scores"]
        except (ValueError, UnicodeDecodeError) as error:
            kept = self.path.with_suffix(".json.damaged")
            self.path.replace(kept)
            warnings.warn(f"the progress file {self.path} was damaged ({error}); it is kept as {kept} and "
                          "your progress starts afresh", RuntimeWarning, stacklevel=3)
            return {}

    def record(self, question_id: str, score: float) -> None:
        """Add one graded attempt and save."""
        entry = self.scores.setdefault(question_id, {"attempts": 0, "best": 0.0, "last": 0.0})
        entry.update(attempts=entry["attempts"] + 1, best=max(entry["best"], score), last=score,
                     when=datetime.datetime.now().isoformat(timespec="seconds"))
        self.save()

    def save(self) -> None:
        """Write the progress file atomically."""
        with atomic_file(self.path) as temporary:
            temporary.write_text(json.dumps({"scores": self.scores}, indent=1) + "\n", encoding="utf-8")

    def reset(self) -> None:
        """Forget every score and remove the file."""
        self.scores = {}
        self.path.unlink(missing_ok=True)

    def next_attempt(self, question_id: str) -> int:
        """The attempt number the question is asked with next (a new option order each time)."""
        return self.scores.get(question_id, {}).get("attempts", 0)

    def summary(self, questions: Sequence[Question]) -> dict:
        """Answered, mastered (best score 1) and per-topic mean of the last scores."""
        topics: dict[str, list[float]] = {}
        for question in questions:
            if question.id in self.scores:
                topics.setdefault(question.topic, []).append(self.scores[question.id]["last"])
        mastered = sum(1 for entry in self.scores.values() if entry["best"] >= 1.0)
        return {"answered": len(self.scores), "mastered": mastered, "of": len(questions),
                "topics": {topic: sum(s) / len(s) for topic, s in sorted(topics.items())}}


class MockInterview:
    """N questions drawn across topics, timed, scored, with the topics to revisit.

    Args:
        questions: The bank (or part of it).
        n: Questions to ask.
        seed: Seeds the draw (and each question's attempt number).
        topics: Only these topics (default: all in ``questions``).
        clock: Seconds since some start (tests pass a fake one).
    """

    def __init__(self, questions: Sequence[Question], n: int = 8, seed: int = 0,
                 topics: Iterable[str] | None = None, clock: Callable[[], float] = time.monotonic):
        pool = [q for q in questions if topics is None or q.topic in set(topics)]
        if not 1 <= n <= len(pool):
            raise ValueError(f"n must be between 1 and {len(pool)} (the questions available), got {n}")
        self.questions = _spread_over_topics(pool, n, random.Random(seed))
        self.asked = [ask(question, attempt=seed) for question in self.questions]
        self.graded: list[Graded | None] = [None] * n
        self._clock, self._start, self._end = clock, clock(), None

    def answer(self, index: int, response) -> Graded:
        """Grade the response to question ``index``; the clock stops at the last answer."""
        self.graded[index] = grade(self.asked[index], response)
        if all(item is not None for item in self.graded):
            self._end = self._clock()
        return self.graded[index]

    @property
    def seconds(self) -> float:
        """Time since the start (until the last answer)."""
        return (self._end if self._end is not None else self._clock()) - self._start

    @property
    def score(self) -> float:
        """Sum of the scores so far (each question counts 1)."""
        return sum(item.score for item in self.graded if item is not None)

    def topics_to_revisit(self) -> list[str]:
        """Topics whose mean score is below :data:`REVISIT_BELOW` (unanswered questions count 0)."""
        by_topic: dict[str, list[float]] = {}
        for question, item in zip(self.questions, self.graded):
            by_topic.setdefault(question.topic, []).append(0.0 if item is None else item.score)
        return sorted(topic for topic, scores in by_topic.items() if sum(scores) / len(scores) < REVISIT_BELOW)

    def report(self) -> str:
        """The score, the time and the topics to revisit, as Markdown."""
        revisit = self.topics_to_revisit()
        return (f"**Score {self.score:.1f} / {len(self.questions)}** in {self.seconds / 60:.1f} min. "
                + ("Topics to revisit: " + ", ".join(revisit) + "." if revisit else "No topic to revisit."))


def _spread_over_topics(pool: Sequence[Question], n: int, rng: random.Random) -> list[Question]:
    """``n`` questions drawn round-robin over shuffled topics, so a mock interview covers ground."""
    by_topic: dict[str, list[Question]] = {}
    for question in pool:
        by_topic.setdefault(question.topic, []).append(question)
    for group in by_topic.values():
        rng.shuffle(group)
    order = sorted(by_topic)
    rng.shuffle(order)
    picked: list[Question] = []
    while len(picked) < n:
        for topic in order:
            if by_topic[topic] and len(picked) < n:
                picked.append(by_topic[topic].pop())
    return picked


# ----- the cheat sheet -----

def markdown_table(rows: Sequence[dict]) -> str:
    """A list of flat dicts as a Markdown table (numbers to 3 significant figures)."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cell = lambda value: format_value(value) if value is not None else ""  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def cheat_sheet(questions: Sequence[Question], folder: str | Path | None = None) -> str:
    """The final mastery summary as one Markdown page, from the learner's own saved results.

    The strategy tables of notebooks 04 and 11, every notebook's key numbers (or which notebook
    to run), and the ten questions most often asked with their model answers.
    """
    parts = ["# Transfer learning on one page: your results", ""]
    for key, title in (("04_finetuning_strategies/decision_table", "Which strategy: the measured table of 04"),
                       ("11_scratch_vs_transfer/guide_table", "Scratch or transfer: the guide's table, measured in 11")):
        found = quote(key, folder)
        parts += [f"## {title}", "", markdown_table(found.value) if found.found and isinstance(found.value, list)
                  else found.text, ""]
    parts += ["## Key numbers, notebook by notebook", ""]
    not_run = []
    for notebook in COURSE_NOTEBOOKS:
        document = load_headlines(notebook, folder)
        if document is None or "problem" in document:
            not_run.append(notebook)
            continue
        numbers = [f"{entry['what']}: **{format_value(entry['value'], entry.get('se'))}**"
                   for entry in document["headlines"].values() if not isinstance(entry["value"], list)]
        parts.append(f"- **{notebook}** (SEED {document['seed']}): " + "; ".join(numbers))
    if not_run:
        parts.append("- Not run yet (run them to fill this in): " + ", ".join(f"{n}.ipynb" for n in not_run))
    parts += ["", "## The ten questions most often asked", ""]
    for number, question in enumerate((q for q in questions if q.often_asked), start=1):
        parts.append(f"{number}. **{question_text(question)}** {render(question.model_answer, folder)}")
    return "\n".join(parts) + "\n"


def write_cheat_sheet(questions: Sequence[Question], path: str | Path | None = None,
                      folder: str | Path | None = None) -> Path:
    """Write :func:`cheat_sheet` atomically (default ``data/cheat_sheet.md``) and return the path."""
    path = Path(path) if path is not None else project_root() / "data" / "cheat_sheet.md"
    with atomic_file(path) as temporary:
        temporary.write_text(cheat_sheet(questions, folder), encoding="utf-8")
    return path


# ----- widget front ends (the same logic as above) -----

def _response_control(asked: Asked):
    import ipywidgets as widgets

    if asked.question.kind == "choice":
        return widgets.RadioButtons(options=[(option, i) for i, option in enumerate(asked.options)], value=None,
                                    layout=widgets.Layout(width="100%"))
    if asked.question.kind == "numeric":
        return widgets.FloatText(description="answer", value=0.0)
    return widgets.VBox([widgets.Textarea(placeholder="Write your answer first, then tick what it covered.",
                                          layout=widgets.Layout(width="100%", height="90px"))]
                        + [widgets.Checkbox(description=point, indent=False, layout=widgets.Layout(width="100%"))
                           for point in asked.question.key_points])


def _response_value(asked: Asked, control):
    if asked.question.kind in ("choice", "numeric"):
        return control.value
    return [i for i, box in enumerate(control.children[1:]) if box.value]


def quiz_widget(questions: Sequence[Question], progress: Progress | None = None,
                folder: str | Path | None = None):
    """A quiz over ``questions``, one at a time: answer, check, read the worked answer, next.

    Returns:
        The ``ipywidgets.VBox``; every graded attempt is recorded in ``progress``.
    """
    import ipywidgets as widgets
    from IPython.display import Markdown, display

    progress = progress if progress is not None else Progress()
    state = {"index": 0}
    header, body, output = widgets.HTML(), widgets.VBox(), widgets.Output()
    check, following = widgets.Button(description="Check", button_style="primary"), widgets.Button(description="Next")

    def show():
        question = questions[state["index"]]
        state["asked"] = ask(question, progress.next_attempt(question.id))
        state["control"] = _response_control(state["asked"])
        header.value = (f"<b>{state['index'] + 1} / {len(questions)}</b> · {question.topic} · "
                        f"{DIFFICULTIES[question.difficulty]}<br>{state['asked'].text}")
        body.children = [state["control"]]
        output.clear_output()

    def on_check(_button):
        graded = grade(state["asked"], _response_value(state["asked"], state["control"]))
        progress.record(state["asked"].question.id, graded.score)
        with output:
            output.clear_output()
            display(Markdown(f"**{graded.feedback}**\n\n" + reveal(state["asked"].question, folder)))

    def on_next(_button):
        state["index"] = (state["index"] + 1) % len(questions)
        show()

    check.on_click(on_check)
    following.on_click(on_next)
    show()
    return widgets.VBox([header, body, widgets.HBox([check, following]), output])


def flashcard_widget(questions: Sequence[Question], folder: str | Path | None = None):
    """Flashcards by topic: pick a topic, read the question, flip for the model answer."""
    import ipywidgets as widgets
    from IPython.display import Markdown, display

    topics = [topic for topic in TOPICS if any(q.topic == topic for q in questions)]
    chooser = widgets.Dropdown(options=topics, description="topic")
    flip, following, output = widgets.Button(description="Flip"), widgets.Button(description="Next"), widgets.Output()
    state = {"cards": [], "index": 0, "back": False}

    def draw():
        with output:
            output.clear_output()
            front, back = state["cards"][state["index"]]
            display(Markdown(f"**{state['index'] + 1} / {len(state['cards'])}.** {front}"
                             + (f"\n\n---\n\n{back}" if state["back"] else "")))

    def on_topic(_change=None):
        state.update(cards=flashcards(questions, chooser.value, folder), index=0, back=False)
        draw()

    def on_flip(_button):
        state["back"] = not state["back"]
        draw()

    def on_next(_button):
        state.update(index=(state["index"] + 1) % len(state["cards"]), back=False)
        draw()

    chooser.observe(on_topic, names="value")
    flip.on_click(on_flip)
    following.on_click(on_next)
    on_topic()
    return widgets.VBox([chooser, widgets.HBox([flip, following]), output])


def mock_interview_widget(interview: MockInterview, progress: Progress | None = None,
                          folder: str | Path | None = None):
    """A timed mock interview: the questions in turn, each graded, then the score and what to revisit."""
    import ipywidgets as widgets
    from IPython.display import Markdown, display

    state = {"index": 0}
    header, body, output = widgets.HTML(), widgets.VBox(), widgets.Output()
    submit = widgets.Button(description="Answer", button_style="primary")

    def show():
        asked = interview.asked[state["index"]]
        state["control"] = _response_control(asked)
        header.value = (f"<b>Question {state['index'] + 1} / {len(interview.asked)}</b> · "
                        f"{interview.seconds / 60:.1f} min so far<br>{asked.text}")
        body.children = [state["control"]]

    def on_submit(_button):
        asked = interview.asked[state["index"]]
        graded = interview.answer(state["index"], _response_value(asked, state["control"]))
        if progress is not None:
            progress.record(asked.question.id, graded.score)
        state["index"] += 1
        if state["index"] < len(interview.asked):
            show()
            return
        submit.disabled, body.children, header.value = True, [], "<b>Done.</b>"
        with output:
            display(Markdown(interview.report() + "\n\n" + "\n\n".join(
                f"{i + 1}. {a.text} {g.feedback} Evidence: {evidence_link(a.question)}"
                for i, (a, g) in enumerate(zip(interview.asked, interview.graded)))))

    submit.on_click(on_submit)
    show()
    return widgets.VBox([header, body, submit, output])
