"""Extractive question answering on an encoder: questions built from news, a span head, decoding.

:func:`speaker_questions` builds "Who said ...?" questions from news articles,
:class:`QADataset` aligns character answers with tokens, :class:`SpanQAModel`
predicts start and end tokens and :func:`predict_answers` decodes spans; the scores
are :func:`tlutils.core.metrics.qa_scores`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.datasets import PaddingCollator, _padded_loader
from tlutils.core.runtime import get_device


@dataclass(frozen=True)
class QAExample:
    """One extractive question: the answer is the substring ``context[answer_start:answer_start+len(answer)]``."""

    question: str
    context: str
    answer: str
    answer_start: int
    source: int = -1

    def __post_init__(self):
        if self.context[self.answer_start:self.answer_start + len(self.answer)] != self.answer:
            raise ValueError(f"the answer {self.answer!r} is not at character {self.answer_start} of its context")


SPEECH_VERBS = ("said", "says", "told", "added", "warned", "argued", "claimed", "denied", "insisted",
                "admitted", "announced", "confirmed", "revealed", "urged", "believes", "predicted", "stressed")
#: Capitalised words that start sentences but are not names (the subject must be a name).
NOT_NAMES = frozenset("""The A An But And It He She They In This However Its His Her We I That There Some If When
Last On At Now So Yet Also Many Most Members Officials Analysts Experts Critics Others Both All One Two
Police Ministers Researchers Fans Campaigners Sources Observers Shares Figures Prices Traders Director
Spokesman Spokeswoman Chairman Analyst Home Several Those These Such Colleagues Organisers Doctors Lawyers
Scientists Residents Unions Bosses Investors Economists Insiders Supporters Opponents Protesters Prosecutors
Judges Voters Players Users Customers Consumers Companies Firms Retailers Manufacturers Teachers Reports""".split())
_NAME = r"(?:(?:Mr|Mrs|Ms|Dr|Sir|Lord|Lady)\.? )?[A-Z][a-zA-Z'-]+(?: [A-Z][a-zA-Z'-]+){0,3}"
#: "<Name> said <clause>." at the start of a sentence; a full stop inside a number ($1.1bn) is part of the clause.
_SPEAKER_SENTENCE = re.compile(
    r"^(?P<name>" + _NAME + r") (?P<verb>" + "|".join(SPEECH_VERBS) + r") (?P<rest>(?:[^.?!\"]|\.(?=\d)){25,160})\.$")
#: Sentence ends: . ! or ? (maybe followed by a closing quote) and white space before a capital, digit or quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"'A-Z0-9])|\n+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of each sentence, split at sentence-final punctuation and line breaks."""
    spans, start = [], 0
    for boundary in _SENTENCE_END.finditer(text):
        end = boundary.start() + len(boundary.group().rstrip()) if boundary.group().strip() else boundary.start()
        if text[start:end].strip():
            spans.append((start, end))
        start = boundary.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return spans


def _sentence_window(spans: list[tuple[int, int]], index: int, text: str, max_words: int) -> tuple[int, int]:
    """Grow a window around sentence ``index`` by alternately adding the previous and next sentence."""
    first = last = index
    words = len(text[slice(*spans[index])].split())
    grew = True
    while grew:
        grew = False
        for candidate in (first - 1, last + 1):
            if 0 <= candidate < len(spans):
                extra = len(text[slice(*spans[candidate])].split())
                if words + extra <= max_words:
                    first, last, words, grew = min(first, candidate), max(last, candidate), words + extra, True
    return spans[first][0], spans[last][1]


def _speaker(sentence: str) -> re.Match | None:
    """Match a usable "<Name> said <clause>." sentence, or None."""
    match = _SPEAKER_SENTENCE.match(sentence)
    if match is None:
        return None
    first_word, clause_start = match.group("name").split()[0], match.group("rest").split()[0]
    if first_word in NOT_NAMES or first_word.endswith("ing") or clause_start in ("to", "in", "on", "at", "of"):
        return None
    return match


def speaker_questions(articles: Sequence[str], max_per_article: int = 2, max_context_words: int = 60) -> list[QAExample]:
    """Build extractive "Who said ...?" questions from news articles, by rule.

    Every sentence of the form ``<Name> said <clause>.`` (also told, added, warned, ...)
    becomes the question ``Who said <clause>?`` whose answer is ``<Name>`` (the whole
    capitalised run, with a title such as "Mr" when present), inside a context of the
    surrounding sentences. The question copies the clause, so the task is to find the
    sentence and mark the speaker's exact extent: the same kind of task as the cloze
    questions of the CNN/Daily Mail reading-comprehension set, easier than SQuAD's paraphrases.

    Args:
        articles: Article texts whose first line is the headline (as ``load_bbc_news``).
        max_per_article: At most this many questions from one article.
        max_context_words: The context is the answer's sentence plus neighbouring
            sentences up to this many words.

    Returns:
        :class:`QAExample` items with ``source`` = the index of the article; each
        question text appears once.
    """
    examples, seen = [], set()
    for index, article in enumerate(articles):
        body = article.split("\n", 1)[1] if "\n" in article else article
        spans = sentence_spans(body)
        found = 0
        for number, (start, end) in enumerate(spans):
            match = _speaker(body[start:end])
            if match is None or found >= max_per_article:
                continue
            question = f"Who {match.group('verb')} {match.group('rest').strip()}?"
            if question in seen:
                continue
            first, last = _sentence_window(spans, number, body, max_context_words)
            examples.append(QAExample(question, body[first:last], match.group("name"), start - first, index))
            seen.add(question)
            found += 1
    return examples


def _answer_token_span(offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None],
                       start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token indices of the first and last context token covering ``[start_char, end_char)``, or None if cut off."""
    start_token = end_token = None
    for i, ((a, b), seq) in enumerate(zip(offsets, sequence_ids)):
        if seq != 1:
            continue
        if start_token is None and a <= start_char < b:
            start_token = i
        if a < end_char <= b:
            end_token = i
    if start_token is None or end_token is None or end_token < start_token:
        return None
    return start_token, end_token


class QADataset(Dataset):
    """Question-context pairs tokenised for a span head, with answer token positions.

    The pair is encoded as ``[CLS] question [SEP] context [SEP]``; only the context is
    truncated. Character positions of the answer are mapped to token positions with the
    tokenizer's offset mapping. Examples whose answer falls outside ``max_length`` are
    dropped (``n_dropped`` says how many).

    Each item holds ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels``
    (the start and end token). :attr:`offsets` and :attr:`context_masks` are kept for
    turning predicted token spans back into text; use :attr:`collate` in the DataLoader.

    Args:
        examples: :class:`QAExample` items.
        tokenizer: A fast Hugging Face tokenizer (offsets are needed).
        max_length: Longest encoded pair.
    """

    def __init__(self, examples: Sequence[QAExample], tokenizer: Any, max_length: int = 160):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("QADataset needs a fast tokenizer (it maps characters to tokens with offsets)")
        encoded = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                            max_length=max_length, return_offsets_mapping=True, return_token_type_ids=True)
        self.examples, self.items, self.offsets, self.context_masks = [], [], [], []
        for i, example in enumerate(examples):
            sequence_ids = encoded.sequence_ids(i)
            span = _answer_token_span(encoded["offset_mapping"][i], sequence_ids, example.answer_start,
                                      example.answer_start + len(example.answer))
            if span is None:
                continue
            self.examples.append(example)
            self.items.append({"input_ids": torch.tensor(encoded["input_ids"][i]),
                               "attention_mask": torch.tensor(encoded["attention_mask"][i]),
                               "token_type_ids": torch.tensor(encoded["token_type_ids"][i]),
                               "labels": torch.tensor(span)})
            self.offsets.append(encoded["offset_mapping"][i])
            self.context_masks.append(torch.tensor([s == 1 for s in sequence_ids]))
        self.n_dropped = len(examples) - len(self.examples)
        self.collate = PaddingCollator({"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]

    def loader(self, batch_size: int = 16, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over this set; shuffled training batches group questions of similar length."""
        return _padded_loader(self, [len(item["input_ids"]) for item in self.items], batch_size, shuffle, seed,
                              group_by_length=True)


class SpanQAModel(nn.Module):
    """Extractive QA: a pre-trained encoder and a span head scoring every token as start and end.

    The head ``qa_outputs`` is one linear layer ``hidden -> 2``, as in BERT's SQuAD
    model. The output is ``batch x 2 x tokens`` (row 0 start scores, row 1 end scores)
    so that ``(logits, labels)`` fit :func:`~tlutils.core.train.fit` with :func:`span_loss`
    (without a ``val_loader``: score it with :func:`predict_answers` and :func:`qa_scores`).
    Padding positions get a score of -10,000.

    Args:
        encoder: A Hugging Face encoder such as ``BertModel``.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        logits = self.qa_outputs(hidden).transpose(1, 2)
        return logits.masked_fill(attention_mask.unsqueeze(1) == 0, -1e4)


def span_loss(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean of the cross-entropies of the start and the end token.

    Args:
        logits: ``batch x 2 x tokens`` from :class:`SpanQAModel`.
        positions: ``batch x 2`` true start and end token indices.
    """
    if logits.dim() != 3 or logits.shape[1] != 2 or positions.shape != (logits.shape[0], 2):
        raise ValueError(f"expected logits batch x 2 x tokens and positions batch x 2, "
                         f"got {tuple(logits.shape)} and {tuple(positions.shape)}")
    loss = nn.functional.cross_entropy
    return (loss(logits[:, 0], positions[:, 0]) + loss(logits[:, 1], positions[:, 1])) / 2


def best_span(start_scores: torch.Tensor, end_scores: torch.Tensor, allowed: torch.Tensor,
              max_answer_tokens: int = 12) -> tuple[int, int]:
    """The highest-scoring span ``(start, end)`` with start <= end, both allowed, and not too long.

    Args:
        start_scores: ``tokens`` start logits of one example.
        end_scores: ``tokens`` end logits.
        allowed: ``tokens`` booleans, True for context tokens.
        max_answer_tokens: Longest answer considered, in tokens.
    """
    n = len(start_scores)
    total = start_scores[:, None] + end_scores[None, :]
    index = torch.arange(n)
    valid = (index[None, :] >= index[:, None]) & (index[None, :] - index[:, None] < max_answer_tokens)
    valid &= allowed[:, None] & allowed[None, :]
    if not valid.any():
        raise ValueError("no allowed span: the example has no context tokens")
    flat = total.masked_fill(~valid, float("-inf")).argmax()
    return int(flat // n), int(flat % n)


def _widen_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """Move a character span outwards to word boundaries (a span may start or end inside a word)."""
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum() and text[end - 1].isalnum():
        end += 1
    return start, end


@torch.no_grad()
def predict_answers(model: nn.Module, dataset: QADataset, batch_size: int = 32, device: torch.device | None = None,
                    max_answer_tokens: int = 12, whole_words: bool = True) -> list[str]:
    """Answer every question of a :class:`QADataset` with the best context span.

    Args:
        model: A :class:`SpanQAModel` (or any model with its output shape).
        dataset: The questions.
        batch_size: Questions per forward pass.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        max_answer_tokens: Longest answer considered, in tokens.
        whole_words: Widen a span that starts or ends inside a word to the whole word
            (WordPiece may split "Highfield" into "high" + "##field", and a span starting at
            "##field" would answer "field").

    Returns:
        The predicted answer texts, cut from the contexts by character offsets.
    """
    device = device or get_device()
    model.eval().to(device)
    answers = []
    for first in range(0, len(dataset), batch_size):
        indices = range(first, min(first + batch_size, len(dataset)))
        batch = dataset.collate([dataset[i] for i in indices])
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).float().cpu()
        for row, i in enumerate(indices):
            length = len(dataset.offsets[i])
            start, end = best_span(logits[row, 0, :length], logits[row, 1, :length], dataset.context_masks[i],
                                   max_answer_tokens)
            context = dataset.examples[i].context
            first_char, last_char = dataset.offsets[i][start][0], dataset.offsets[i][end][1]
            if whole_words:
                first_char, last_char = _widen_to_words(context, first_char, last_char)
            answers.append(context[first_char:last_char])
    return answers


def rule_speaker_answers(examples: Sequence[QAExample], match_clause: bool = False) -> list[str]:
    """The obvious rule for "Who said ...?" questions, without any learning: the name before the verb.

    Args:
        examples: Questions of the form ``Who <verb> <clause>?`` (:func:`speaker_questions`).
        match_clause: ``False``: answer with the capitalised words right before the first
            ``<verb>`` of the context. ``True``: first look for the sentence that contains the
            question's clause (the rule the questions were built with), then take its name.

    Returns:
        One answer per question ("" when the rule finds nothing).

    Example:
        >>> q = QAExample("Who said sales rose?", "Profits fell. Mr Lee said sales rose.", "Mr Lee", 14)
        >>> rule_speaker_answers([q])
        ['Mr Lee']
    """
    answers = []
    for example in examples:
        verb, clause = example.question.split(" ", 2)[1], example.question.split(" ", 2)[2].rstrip("?")
        anchor = f" {verb} {clause}" if match_clause else f" {verb} "
        at = example.context.find(anchor)
        if at < 0 and match_clause:
            at = example.context.find(f" {verb} ")
        names = re.findall(_NAME + r"$", example.context[:max(at, 0)]) if at > 0 else []
        answers.append(names[-1] if names else "")
    return answers
