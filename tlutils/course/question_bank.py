"""The interview question bank: questions as data, their schema, and answers that quote the learner's run.

The bank is a folder of YAML files (``tlutils/course/questions/``, one per notebook plus general
ones). Every question carries a worked model answer, the common wrong answer, a follow-up and
its evidence: the notebook and section heading that demonstrates it. A model answer quotes
numbers as ``{{<notebook>/<key>}}``, keys of the headline results that notebook saves at the end
of its run (:mod:`tlutils.core.results`), so the answer shows the learner's own number, or says
which notebook to run. Numeric questions are computed from the real models when asked
(:data:`NUMERIC`), never typed.

Check the bank from a shell: ``python -m tlutils.course.question_bank``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tlutils.core.paths import project_root
from tlutils.core.results import HeadlineError, quote, split_key

QUESTIONS_DIR = Path(__file__).with_name("questions")

TOPICS = ("fundamentals", "pretrained_models", "mathematics", "strategies", "vision", "nlp", "speech",
          "applications", "scratch_vs_transfer", "domain_shift", "overfitting", "forgetting", "cost", "bias",
          "evaluation", "at_work")
KINDS = ("choice", "numeric", "short", "scenario")
DIFFICULTIES = {1: "basic", 2: "working knowledge", 3: "senior"}

_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_QUOTE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_COMMON = ("id", "topic", "difficulty", "kind", "question", "model_answer", "wrong_answer", "follow_up", "evidence")
_BY_KIND = {"choice": ("options", "answer"), "numeric": ("compute",), "short": ("key_points",),
            "scenario": ("key_points",)}
_OPTIONAL = ("often_asked", "args", "vary", "tolerance", "unit")


class BankError(ValueError):
    """The question bank (a file or a question in it) does not follow the schema."""


@dataclass(frozen=True)
class Question:
    """One question of the bank; see the module docstring and :func:`validate_question` for the fields."""

    id: str
    topic: str
    difficulty: int
    kind: str
    question: str
    model_answer: str
    wrong_answer: str
    follow_up: str
    evidence: Mapping[str, str]
    source: str = ""
    options: tuple[str, ...] = ()
    answer: str = ""
    key_points: tuple[str, ...] = ()
    compute: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    vary: Mapping[str, Sequence] = field(default_factory=dict)
    tolerance: float = 1e-9
    unit: str = ""
    often_asked: bool = False

    @property
    def result_keys(self) -> list[str]:
        """The ``notebook/key`` results its texts quote, in order of first use."""
        keys = []
        for text in (self.question, self.model_answer, self.wrong_answer, self.follow_up):
            keys += [key for key in _QUOTE.findall(text) if key not in keys]
        return keys


# ----- numeric questions: computed from the real models when asked -----

def _mobilenet_v2_with_head(classes: int):
    from tlutils.core.models import load_mobilenet_v2
    from tlutils.core.surgery import replace_head

    return replace_head(load_mobilenet_v2(), classes)


def trainable_after_freezing(frozen_blocks: int, classes: int = 10) -> int:
    """Trainable parameters of ImageNet MobileNetV2 with a new ``classes``-way head and its first blocks frozen."""
    from tlutils.core.surgery import freeze, model_blocks, trainable_parameter_count

    model = _mobilenet_v2_with_head(classes)
    blocks = model_blocks(model)
    if not 0 <= frozen_blocks <= len(blocks):
        raise ValueError(f"frozen_blocks must be between 0 and {len(blocks)}, got {frozen_blocks}")
    if frozen_blocks:
        freeze(model, [name for name, _ in blocks[:frozen_blocks]])
    return trainable_parameter_count(model)


def adam_state_megabytes(frozen_blocks: int, classes: int = 10) -> float:
    """MB (10^6 bytes) of Adam state after one step on MobileNetV2 with its first blocks frozen (measured)."""
    import torch

    from tlutils.core.surgery import freeze, model_blocks
    from tlutils.topics.efficient import optimizer_state_bytes

    model = _mobilenet_v2_with_head(classes)
    blocks = model_blocks(model)
    if frozen_blocks:
        freeze(model, [name for name, _ in blocks[:frozen_blocks]])
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    for param in trainable:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    return optimizer_state_bytes(optimizer) / 1e6


def lora_parameters(rank: int, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> int:
    """Trainable parameters LoRA of rank ``rank`` adds to SmolLM2-135M on the named projections (measured)."""
    from tlutils.core.models import load_smollm2
    from tlutils.core.surgery import trainable_parameter_count
    from tlutils.topics.peft import add_lora

    _tokenizer, model = load_smollm2()
    return trainable_parameter_count(add_lora(model, r=rank, target_modules=tuple(targets)))


def bitfit_parameters(encoder: str = "minilm_l6") -> int:
    """Parameters BitFit trains in a pre-trained text encoder (its biases; no new head), measured."""
    from tlutils.core.models import load_text_encoder
    from tlutils.core.surgery import trainable_parameter_count
    from tlutils.topics.efficient import bitfit

    _tokenizer, model = load_text_encoder(encoder)
    return trainable_parameter_count(bitfit(model))


#: Name -> function for ``compute:`` in the bank; each builds the real model and measures.
NUMERIC: dict[str, Callable[..., float]] = {
    "trainable_after_freezing": trainable_after_freezing,
    "adam_state_megabytes": adam_state_megabytes,
    "lora_parameters": lora_parameters,
    "bitfit_parameters": bitfit_parameters,
}


def numeric_arguments(question: Question, attempt: int) -> dict:
    """The arguments of a numeric question for one attempt: ``args`` plus one draw from each ``vary`` list."""
    rng = random.Random(f"{question.id}:{attempt}")
    drawn = {name: rng.choice(list(values)) for name, values in sorted(question.vary.items())}
    return {**question.args, **drawn}


@lru_cache(maxsize=64)
def _computed(name: str, arguments: str) -> float:
    return NUMERIC[name](**json.loads(arguments))


def numeric_answer(question: Question, attempt: int = 0) -> float:
    """The right answer of a numeric question for one attempt, computed now (cached per arguments)."""
    if question.kind != "numeric":
        raise BankError(f"{question.id} is a {question.kind} question, not a numeric one")
    return _computed(question.compute, json.dumps(numeric_arguments(question, attempt), sort_keys=True))


def question_text(question: Question, attempt: int = 0, folder: str | Path | None = None) -> str:
    """The question as asked: quoted results filled in (see :func:`render`), and a numeric one's drawn arguments."""
    text = render(question.question, folder)
    return text.format(**numeric_arguments(question, attempt)) if question.kind == "numeric" else text


# ----- the schema -----

def _text(raw: Mapping, name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BankError(f"{where}: `{name}` must be non-empty text")
    return " ".join(value.split())


def validate_question(raw: Any, source: str = "") -> Question:
    """Check one question's fields and return it as a :class:`Question`.

    Raises:
        BankError: A field is missing, unknown or malformed; the message names the question and field.
    """
    if not isinstance(raw, Mapping):
        raise BankError(f"{source}: every entry must be a mapping of fields, got {type(raw).__name__}")
    where = f"{source}: question {raw.get('id', '?')!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise BankError(f"{where}: `kind` must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(raw) - set(_COMMON) - set(_BY_KIND[kind]) - set(_OPTIONAL))
    missing = [name for name in _COMMON + _BY_KIND[kind] if name not in raw]
    if unknown or missing:
        raise BankError(f"{where}: " + "; ".join(
            part for part in (f"unknown fields {unknown} for a {kind} question" if unknown else "",
                              f"missing fields {missing}" if missing else "") if part))
    if not isinstance(raw["id"], str) or not _ID.fullmatch(raw["id"]):
        raise BankError(f"{where}: `id` must be lower-case words joined by '-'")
    if raw["topic"] not in TOPICS:
        raise BankError(f"{where}: `topic` {raw['topic']!r} is not one of {', '.join(TOPICS)}")
    if raw["difficulty"] not in DIFFICULTIES:
        raise BankError(f"{where}: `difficulty` must be 1, 2 or 3, got {raw['difficulty']!r}")
    evidence = raw["evidence"]
    if not isinstance(evidence, Mapping) or set(evidence) != {"notebook", "section"}:
        raise BankError(f"{where}: `evidence` needs exactly `notebook` (a stem) and `section` (a heading)")
    fields = {name: _text(raw, name, where) for name in ("question", "model_answer", "wrong_answer", "follow_up")}
    extra = _kind_fields(raw, kind, where)
    question = Question(id=raw["id"], topic=raw["topic"], difficulty=raw["difficulty"], kind=kind,
                        evidence={"notebook": str(evidence["notebook"]), "section": " ".join(str(evidence["section"]).split())},
                        source=source, often_asked=bool(raw.get("often_asked", False)), **fields, **extra)
    for key in question.result_keys:
        try:
            split_key(key)
        except HeadlineError as error:
            raise BankError(f"{where}: {error}") from None
    return question


def _kind_fields(raw: Mapping, kind: str, where: str) -> dict:
    if kind == "choice":
        options = raw["options"]
        if (not isinstance(options, list) or not 3 <= len(options) <= 5
                or not all(isinstance(option, str) and option.strip() for option in options)):
            raise BankError(f"{where}: `options` must be a list of 3 to 5 texts")
        options = tuple(" ".join(option.split()) for option in options)
        if any(_QUOTE.search(option) for option in options):
            raise BankError(f"{where}: options cannot quote results ({{{{...}}}}); quote them in the question or answer")
        answer = _text(raw, "answer", where)
        if len(set(options)) != len(options) or options.count(answer) != 1:
            raise BankError(f"{where}: the options must differ and `answer` must be exactly one of them")
        return {"options": options, "answer": answer}
    if kind == "numeric":
        if raw["compute"] not in NUMERIC:
            raise BankError(f"{where}: `compute` must be one of {', '.join(NUMERIC)}")
        vary = raw.get("vary", {})
        if not isinstance(vary, Mapping) or not all(isinstance(v, list) and v for v in vary.values()):
            raise BankError(f"{where}: `vary` maps an argument to a non-empty list of values")
        return {"compute": raw["compute"], "args": dict(raw.get("args", {})), "vary": dict(vary),
                "tolerance": float(raw.get("tolerance", 1e-9)), "unit": str(raw.get("unit", ""))}
    points = raw["key_points"]
    if not isinstance(points, list) or not 2 <= len(points) <= 7 or not all(isinstance(p, str) and p.strip() for p in points):
        raise BankError(f"{where}: `key_points` must be a list of 2 to 7 texts")
    return {"key_points": tuple(" ".join(point.split()) for point in points)}


def load_bank(folder: str | Path | None = None) -> list[Question]:
    """Every question of the bank, validated, in file order (files sorted by name).

    Raises:
        BankError: A file does not parse, a question breaks the schema, or two questions share an
            id or the same question text.
    """
    import yaml

    folder = Path(folder) if folder is not None else QUESTIONS_DIR
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise BankError(f"no question files (*.yaml) in {folder}")
    questions, ids, texts = [], {}, {}
    for path in files:
        try:
            entries = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise BankError(f"{path.name} is not valid YAML: {error}") from None
        if not isinstance(entries, list):
            raise BankError(f"{path.name} must hold a YAML list of questions")
        for raw in entries:
            question = validate_question(raw, path.name)
            text = question.question.lower()
            for seen, name in ((ids, question.id), (texts, text)):
                if name in seen:
                    raise BankError(f"{path.name}: question {question.id!r} repeats {seen[name]!r} "
                                    f"({'id' if seen is ids else 'question text'})")
                seen[name] = question.id
            questions.append(question)
    return questions


# ----- evidence and quoted results -----

def notebook_headings(notebook: str, notebooks_dir: str | Path | None = None) -> list[str]:
    """The markdown headings of a notebook (text without the leading #'s), in order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else project_root() / "notebooks"
    path = folder / f"{notebook}.ipynb"
    if not path.is_file():
        raise BankError(f"no notebook {path.name} in {folder}")
    headings = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        fenced = False
        for line in "".join(cell["source"]).splitlines() if cell["cell_type"] == "markdown" else []:
            fenced ^= line.lstrip().startswith("```")  # a '#' inside a code block is a comment, not a heading
            if not fenced and re.match(r"#{1,6} ", line):
                headings.append(" ".join(line.lstrip("#").split()))
    return headings


def evidence_link(question: Question) -> str:
    """A Markdown link to the evidence section (a JupyterLab heading anchor, relative to notebooks/)."""
    notebook, section = question.evidence["notebook"], question.evidence["section"]
    anchor = section.replace(" ", "-").replace("`", "")
    return f"[{notebook} · {section}]({notebook}.ipynb#{anchor})"


def render(text: str, folder: str | Path | None = None) -> str:
    """``text`` with every ``{{notebook/key}}`` replaced by the learner's value (or what to run)."""
    return _QUOTE.sub(lambda match: quote(match.group(1), folder).text, text)


def missing_results(questions: Sequence[Question], folder: str | Path | None = None) -> dict[str, list[str]]:
    """Notebook -> quoted keys its saved headlines lack (all of them when it has not been run)."""
    missing: dict[str, list[str]] = {}
    for question in questions:
        for key in question.result_keys:
            if not quote(key, folder).found:
                missing.setdefault(split_key(key)[0], []).append(key)
    return missing


def bank_problems(questions: Sequence[Question], notebooks_dir: str | Path | None = None) -> list[str]:
    """What is wrong with the bank as a whole: evidence that does not resolve, too few questions per topic."""
    problems, headings = [], {}
    for question in questions:
        notebook = question.evidence["notebook"]
        if notebook not in headings:
            try:
                headings[notebook] = notebook_headings(notebook, notebooks_dir)
            except BankError as error:
                headings[notebook] = []
                problems.append(f"{question.id}: {error}")
        if headings[notebook] and question.evidence["section"] not in headings[notebook]:
            problems.append(f"{question.id}: {notebook}.ipynb has no heading {question.evidence['section']!r}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tlutils.course.question_bank``: validate the bank and print a summary."""
    try:
        questions = load_bank()
    except BankError as error:
        print(f"the question bank is broken: {error}")
        return 1
    problems = bank_problems(questions)
    by_topic: dict[str, int] = {}
    for question in questions:
        by_topic[question.topic] = by_topic.get(question.topic, 0) + 1
    print(f"{len(questions)} questions; by topic: " + ", ".join(f"{t} {n}" for t, n in sorted(by_topic.items())))
    for problem in problems:
        print("problem:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
