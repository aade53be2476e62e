"""Fine-tuning pre-trained language models: encoders (BERT family) and decoders (GPT family).

Four groups of tools, used by notebooks 07 and 08:

* **Classification on an encoder**: :func:`pool_hidden_states` turns token states into
  one vector per text ([CLS] token or masked mean), :class:`PooledEncoder` wraps an
  encoder for :func:`~tlutils.features.extract_features`, :class:`EncoderClassifier`
  adds a linear head for :func:`~tlutils.train.fit`; :func:`fit_tfidf_logreg` is the
  no-pre-training baseline.
* **Extractive question answering**: :func:`speaker_questions` builds "Who said ...?"
  questions from news articles, :class:`QADataset` aligns character answers with
  tokens, :class:`SpanQAModel` predicts start and end tokens, :func:`predict_answers`
  decodes spans and :func:`qa_scores` gives SQuAD-style exact match and F1.
* **Causal language models**: :class:`CausalLMDataset` (loss on the target only),
  :func:`causal_lm_loss`, :func:`generate_texts`, :func:`top_p_filter`,
  :func:`perplexity`, :func:`add_lora` (peft) and :func:`unfreeze_last_decoder_blocks`.
* **Overlap metrics**: :func:`rouge_scores` (ROUGE-1, ROUGE-2, ROUGE-L F1 on lower-cased
  word tokens, without stemming).

Example:
    >>> tokenizer, encoder = load_text_encoder("minilm_l6")
    >>> model = EncoderClassifier(encoder, num_classes=2, pooling="mean")
    >>> loader = text_loader(texts, labels, tokenizer, max_length=64, batch_size=16, shuffle=True, seed=0)
    >>> history = fit(model, loader, epochs=2, lr=5e-5)
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tlutils.data import TextDataset
from tlutils.surgery import freeze, unfreeze
from tlutils.utils import check_one_of, get_device

POOLINGS = ("cls", "mean")
#: Label value that cross-entropy ignores (prompt and padding tokens of a causal LM).
IGNORE_INDEX = -100


# ------------------------------------------------------------------ pooling and classification


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Turn per-token hidden states into one vector per text.

    Args:
        hidden: ``batch x tokens x dim`` last hidden states of an encoder.
        attention_mask: ``batch x tokens``, 1 for real tokens and 0 for padding.
        pooling: ``"cls"`` takes the first token (BERT's ``[CLS]``); ``"mean"`` averages
            the real tokens only, so padding never changes a text's vector.

    Returns:
        ``batch x dim`` tensor.

    Example:
        >>> pool_hidden_states(torch.ones(2, 5, 8), torch.ones(2, 5), "mean").shape
        torch.Size([2, 8])
    """
    check_one_of(pooling, POOLINGS, "pooling")
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden states batch x tokens x dim and a matching batch x tokens mask, "
                         f"got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class PooledEncoder(nn.Module):
    """An encoder that returns one pooled vector per text (a feature extractor).

    Args:
        encoder: A Hugging Face encoder such as ``BertModel`` (``last_hidden_state`` output).
        pooling: ``"cls"`` or ``"mean"``, see :func:`pool_hidden_states`.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean"):
        super().__init__()
        check_one_of(pooling, POOLINGS, "pooling")
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, self.pooling)


class EncoderClassifier(nn.Module):
    """A text classifier: pre-trained encoder, pooling, dropout and a new linear head.

    The head is the attribute ``classifier`` and the body is ``encoder``, so
    :func:`~tlutils.surgery.freeze`, :func:`~tlutils.surgery.model_blocks` and
    :func:`~tlutils.surgery.layerwise_param_groups` work on it unchanged.

    Args:
        encoder: A Hugging Face encoder (``BertModel``); it is trained in place.
        num_classes: Number of classes.
        pooling: ``"cls"`` or ``"mean"``.
        dropout: Dropout before the head (the BERT fine-tuning default is 0.1).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        check_one_of(pooling, POOLINGS, "pooling")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.classifier(self.dropout(pool_hidden_states(hidden, attention_mask, self.pooling)))


class LengthGroupedBatchSampler(Sampler):
    """Random batches of similar-length examples, so that padding per batch stays small.

    Each epoch the examples are shuffled, cut into groups of ``group_batches`` batches,
    sorted by length inside each group and cut into batches; the batch order is then
    shuffled again. Training stays random, but a batch of short texts is no longer padded
    to the length of one long text (notebook 07 counts the tokens this saves).

    Args:
        lengths: Length (in tokens) of every example.
        batch_size: Examples per batch.
        seed: Seeds the shuffling; the same seed gives the same batches, epoch after epoch.
        group_batches: Batches per sorted group (larger = less padding, less randomness).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 16):
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be positive, got {batch_size} and {group_batches}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.group_size = batch_size * group_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        batches = []
        for start in range(0, len(order), self.group_size):
            group = order[start:start + self.group_size]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [group[i:i + self.batch_size].tolist() for i in range(0, len(group), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def _padded_loader(dataset: Dataset, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int | None,
                   group_by_length: bool) -> DataLoader:
    """A DataLoader with the dataset's own ``collate``; shuffled batches may be grouped by length."""
    if shuffle and group_by_length:
        sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=0 if seed is None else seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate, generator=generator)


def text_loader(texts: Sequence[str], labels: Sequence[int] | None, tokenizer: Any, max_length: int = 64,
                batch_size: int = 16, shuffle: bool = False, seed: int | None = None,
                group_by_length: bool = False) -> DataLoader:
    """A DataLoader of tokenised texts (a :class:`~tlutils.data.TextDataset`), padded per batch.

    Args:
        texts: The texts.
        labels: One integer label per text, or ``None``.
        tokenizer: A Hugging Face tokenizer.
        max_length: Longer texts are truncated to this many tokens.
        batch_size: Texts per batch.
        shuffle: Shuffle every epoch (training); the order is fixed by ``seed``.
        seed: Seed of the shuffling generator.
        group_by_length: With ``shuffle``, batch texts of similar length together
            (:class:`LengthGroupedBatchSampler`): the same training, much less padding.
    """
    dataset = TextDataset(texts, labels, tokenizer, max_length=max_length)
    return _padded_loader(dataset, [len(ids) for ids in dataset.input_ids], batch_size, shuffle, seed,
                          group_by_length)


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[int], max_features: int = 30_000,
                     ngram_range: tuple[int, int] = (1, 2), C: float = 10.0, seed: int = 0):
    """The classic baseline without pre-training: TF-IDF word n-grams + logistic regression.

    Args:
        texts: Training texts.
        labels: Their integer labels.
        max_features: Vocabulary size (most frequent n-grams of the training texts).
        ngram_range: Word n-gram lengths, ``(1, 2)`` = words and word pairs.
        C: Inverse regularisation strength of the logistic regression.
        seed: Random state of the solver.

    Returns:
        A fitted scikit-learn ``Pipeline``; call ``.predict(texts)`` or ``.score(texts, labels)``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(texts) != len(labels) or len(texts) == 0:
        raise ValueError(f"need one label per text and at least one text, got {len(texts)} texts "
                         f"and {len(labels)} labels")
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=ngram_range, max_features=max_features, sublinear_tf=True),
                             LogisticRegression(C=C, max_iter=2000, random_state=seed))
    return pipeline.fit(list(texts), np.asarray(labels))


def _texts_fingerprint(texts: Sequence[str]) -> str:
    """A short hash of the texts, so a feature cache made from other texts is never reused."""
    import hashlib

    return hashlib.sha1("\x00".join(texts).encode("utf-8")).hexdigest()[:16]


def pooled_features(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int],
                    pooling: str = "mean", max_length: int = 64, batch_size: int = 64, cache_name: str | None = None,
                    device: torch.device | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled sentence vectors of a frozen encoder, cached on disk by :func:`~tlutils.features.extract_features`.

    Args:
        encoder: A Hugging Face encoder (frozen: it is only run in eval mode).
        tokenizer: Its tokenizer.
        texts: The texts to embed.
        labels: Their labels (stored next to the features).
        pooling: ``"cls"`` or ``"mean"``.
        max_length: Texts are truncated to this many tokens.
        batch_size: Texts per forward pass.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook
            number); ``None`` disables the cache. The fingerprint covers the model,
            the pooling, the length and a hash of the texts.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(features, labels)``: ``N x hidden`` floats and ``N`` labels.
    """
    from tlutils.features import extract_features

    loader = text_loader(texts, labels, tokenizer, max_length=max_length, batch_size=batch_size)
    fingerprint = (f"{getattr(encoder.config, '_name_or_path', '')}|{encoder.config.num_hidden_layers} layers|"
                   f"{pooling}|{max_length}|{_texts_fingerprint(texts)}")
    return extract_features(PooledEncoder(encoder, pooling), loader, cache_name=cache_name, fingerprint=fingerprint,
                            device=device, progress=progress)


def _accuracy(model: nn.Module, loader, device: torch.device | None) -> float:
    from tlutils.train import evaluate

    return float(evaluate(model, loader, device)["accuracy"])


def finetune_text_classifier(encoder: nn.Module, train_loader, val_loader, num_classes: int, epochs: int = 2,
                             lr: float = 1e-4, llrd_decay: float | None = None, head_lr: float | None = None,
                             pooling: str = "mean", weight_decay: float = 0.01, seed: int = 0,
                             device: torch.device | None = None, progress: bool = True):
    """Fine-tune an encoder with a new head, all layers at one rate or with layer-wise rate decay.

    Args:
        encoder: The pre-trained encoder (changed in place).
        train_loader: Batches from :func:`text_loader` (shuffled).
        val_loader: Evaluated after every epoch; the best epoch's weights are kept.
        num_classes: Number of classes.
        epochs: Passes over the training data.
        lr: The one learning rate of plain fine-tuning.
        llrd_decay: With a value in (0, 1], use layer-wise learning-rate decay instead:
            the head trains at ``head_lr`` and each block below at the rate above times
            ``llrd_decay`` (:func:`~tlutils.surgery.layerwise_param_groups`).
        head_lr: The head's rate with ``llrd_decay``.
        pooling: ``"cls"`` or ``"mean"``.
        weight_decay: AdamW weight decay.
        seed: Seeds the new head and the training.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(model, history)``: the :class:`EncoderClassifier` and its :class:`~tlutils.train.History`.
    """
    from tlutils.surgery import layerwise_param_groups
    from tlutils.train import fit
    from tlutils.utils import set_seed

    set_seed(seed)
    model = EncoderClassifier(encoder, num_classes, pooling=pooling)
    if llrd_decay is None:
        groups = [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay}]
    else:
        if head_lr is None:
            raise ValueError("layer-wise decay needs head_lr, the learning rate of the head")
        groups = layerwise_param_groups(model, head_lr=head_lr, decay=llrd_decay, weight_decay=weight_decay)
    history = fit(model, train_loader, val_loader, epochs=epochs, optimizer=torch.optim.AdamW(groups),
                  scheduler="linear", seed=seed, device=device, progress=progress)
    return model, history


def compare_text_classifiers(encoder_name: str, train: tuple[Sequence[str], Sequence[int]],
                             val: tuple[Sequence[str], Sequence[int]], test: tuple[Sequence[str], Sequence[int]],
                             num_classes: int, max_length: int = 64, batch_size: int = 16, epochs: int = 2,
                             lr: float = 1e-4, head_lr: float = 1e-3, llrd_decay: float = 0.3,
                             probe_epochs: int = 100, probe_lr: float = 1e-3, seed: int = 0,
                             cache_prefix: str | None = None, device: torch.device | None = None,
                             progress: bool = False):
    """Run the four classifiers of notebook 07 on one split and tabulate them.

    1. TF-IDF + logistic regression (no pre-training);
    2. frozen encoder, mean-pooled features, linear head (feature extraction);
    3. full fine-tuning at one learning rate;
    4. full fine-tuning with layer-wise learning-rate decay (LLRD).

    Args:
        encoder_name: Asset name for :func:`~tlutils.models.load_text_encoder`; each
            fine-tuning run starts from a fresh copy of the pre-trained weights.
        train, val, test: ``(texts, labels)`` pairs.
        num_classes: Number of classes.
        max_length, batch_size, epochs: Tokenisation and fine-tuning sizes.
        lr: Learning rate of plain fine-tuning.
        head_lr, llrd_decay: The head's rate and the decay factor per block for LLRD.
        probe_epochs, probe_lr: Training of the linear head on cached features (full batch,
            cheap); the validation split picks its best epoch.
        seed: Seeds every random step.
        cache_prefix: Feature cache names start with this (e.g. ``"07_bbc"``); ``None`` disables caching.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        progress: Show progress bars.

    Returns:
        A pandas DataFrame with one row per method: ``trainable params``, ``seconds``
        (training; for the frozen encoder, extracting the training vectors plus the head,
        near zero for the extraction when cached) and ``test accuracy``.
    """
    import time

    import pandas as pd

    from tlutils.features import feature_loader, train_linear_probe
    from tlutils.models import load_text_encoder
    from tlutils.surgery import trainable_parameter_count

    rows = []
    start = time.perf_counter()
    baseline = fit_tfidf_logreg(train[0], train[1], seed=seed)
    rows.append({"method": "TF-IDF + logistic regression", "trainable params": baseline[-1].coef_.size
                 + baseline[-1].intercept_.size, "seconds": time.perf_counter() - start,
                 "test accuracy": float(baseline.score(list(test[0]), np.asarray(test[1])))})

    tokenizer, encoder = load_text_encoder(encoder_name)

    def features_of(split: str, data: tuple[Sequence[str], Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled_features(encoder, tokenizer, data[0], data[1], "mean", max_length, device=device,
                               cache_name=f"{cache_prefix}_{split}" if cache_prefix else None, progress=progress)

    start = time.perf_counter()  # training cost: extracting the training vectors, then the head
    train_features = features_of("train", train)
    head, _ = train_linear_probe(*train_features, num_classes, epochs=probe_epochs, lr=probe_lr,
                                 batch_size=len(train[0]), seed=seed, device=device, val=features_of("val", val))
    seconds = time.perf_counter() - start
    test_features = features_of("test", test)
    rows.append({"method": "frozen encoder + linear head", "trainable params": trainable_parameter_count(head),
                 "seconds": seconds,
                 "test accuracy": _accuracy(head, feature_loader(*test_features, batch_size=256), device)})

    val_loader = text_loader(val[0], val[1], tokenizer, max_length, 64)
    test_loader = text_loader(test[0], test[1], tokenizer, max_length, 64)
    for method, decay in (("full fine-tuning", None), ("fine-tuning with LLRD", llrd_decay)):
        # a new loader per run: both methods see the same batches in the same order
        train_loader = text_loader(train[0], train[1], tokenizer, max_length, batch_size, shuffle=True, seed=seed,
                                   group_by_length=True)
        _, encoder = load_text_encoder(encoder_name)
        model, history = finetune_text_classifier(encoder, train_loader, val_loader, num_classes, epochs, lr=lr,
                                                  llrd_decay=decay, head_lr=head_lr, seed=seed, device=device,
                                                  progress=progress)
        rows.append({"method": method, "trainable params": trainable_parameter_count(model),
                     "seconds": history.seconds, "test accuracy": _accuracy(model, test_loader, device)})
    return pd.DataFrame(rows).set_index("method")


def plot_method_comparison(table, metric: str = "test accuracy", title: str = ""):
    """Two bar panels per method: ``metric`` and training seconds; returns the figure."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = plt.cm.tab10(np.arange(len(table)))
    for ax, column in ((left, metric), (right, "seconds")):
        bars = ax.barh(list(table.index)[::-1], table[column].to_numpy()[::-1], color=colors[::-1])
        ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        ax.set(xlabel=column)
        ax.margins(x=0.18)
    right.set_yticks([])
    low = float(table[metric].min())
    left.set_xlim(max(0.0, low - 0.15), 1.0)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ extractive question answering


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
        self.collate = QACollator(tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]

    def loader(self, batch_size: int = 16, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over this set; shuffled training batches group questions of similar length."""
        return _padded_loader(self, [len(item["input_ids"]) for item in self.items], batch_size, shuffle, seed,
                              group_by_length=True)


class QACollator:
    """Right-pad :class:`QADataset` items into a batch; ``labels`` becomes ``batch x 2``."""

    def __init__(self, pad_token_id: int):
        self.pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch = {}
        for key, value in self.pad_values.items():
            batch[key] = torch.full((len(items), width), value, dtype=torch.long)
            for row, item in enumerate(items):
                batch[key][row, :len(item[key])] = item[key]
        batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


class SpanQAModel(nn.Module):
    """Extractive QA: a pre-trained encoder and a span head scoring every token as start and end.

    The head ``qa_outputs`` is one linear layer ``hidden -> 2``, as in BERT's SQuAD
    model. The output is ``batch x 2 x tokens`` (row 0 start scores, row 1 end scores)
    so that ``(logits, labels)`` fit :func:`~tlutils.train.fit` with :func:`span_loss`
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
        device: Defaults to :func:`~tlutils.utils.get_device`.
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


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 when the normalised prediction equals the normalised true answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _f1(overlap: int, n_predicted: int, n_reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_predicted, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD F1: harmonic mean of word precision and recall between prediction and answer.

    Example:
        >>> token_f1("Mr Tony Blair", "Tony Blair")   # precision 2/3, recall 1
        0.8
    """
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not true:
        return float(predicted == true)
    return _f1(sum((Counter(predicted) & Counter(true)).values()), len(predicted), len(true))


def qa_scores(predictions: Sequence[str], truths: Sequence[str]) -> dict[str, float]:
    """Mean exact match and F1 over a question set, as fractions: ``{"exact_match": .., "f1": ..}``."""
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"need one prediction per question, got {len(predictions)} for {len(truths)}")
    return {"exact_match": float(np.mean([exact_match(p, t) for p, t in zip(predictions, truths)])),
            "f1": float(np.mean([token_f1(p, t) for p, t in zip(predictions, truths)]))}


# ------------------------------------------------------------------ causal language models


def headline_prompt(article: str, max_words: int = 40) -> str:
    """The prompt for headline generation: the article's first words (without its headline).

    Args:
        article: Text whose first line is the headline (``load_bbc_news`` texts).
        max_words: Words of the body kept (short inputs keep training fast).
    """
    body = article.split("\n", 1)[1] if "\n" in article else article
    words = body.split()[:max_words]
    return "Article: " + " ".join(words) + "\nHeadline:"


class CausalLMDataset(Dataset):
    """Prompt + target pairs for a causal LM, with the loss on the target tokens only.

    ``input_ids`` = prompt tokens + target tokens + end-of-sequence; ``labels`` are the
    same ids with the prompt replaced by -100 (ignored by the loss), so the model learns
    to write the target, not to copy the prompt. Use :attr:`collate` in the DataLoader.

    Args:
        prompts: Input texts.
        targets: The text that should follow each prompt (a leading space is added).
        tokenizer: The model's tokenizer (needs an end-of-sequence token).
        max_prompt_tokens: Prompts are cut to their first this-many tokens.
        max_target_tokens: Targets are cut to this many tokens.
    """

    def __init__(self, prompts: Sequence[str], targets: Sequence[str], tokenizer: Any,
                 max_prompt_tokens: int = 64, max_target_tokens: int = 24):
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        target_ids = tokenizer([" " + t.strip() for t in targets], add_special_tokens=False)["input_ids"]
        self.items = []
        for p, t in zip(prompt_ids, target_ids):
            p, t = p[:max_prompt_tokens], t[:max_target_tokens] + [tokenizer.eos_token_id]
            self.items.append({"input_ids": torch.tensor(p + t), "labels": torch.tensor([IGNORE_INDEX] * len(p) + t)})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collate = CausalLMCollator(pad)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class CausalLMCollator:
    """Right-pad causal-LM items; padded labels are -100 and the attention mask marks real tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1; labels of -100 are ignored.

    Args:
        logits: ``batch x tokens x vocabulary``.
        labels: ``batch x tokens`` token ids (-100 where no loss is wanted).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits batch x tokens x vocab and labels batch x tokens, "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    return nn.functional.cross_entropy(shifted_logits.reshape(-1, logits.shape[-1]).float(),
                                       shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def lm_loader(dataset: CausalLMDataset, batch_size: int = 4, shuffle: bool = False, seed: int | None = None,
              group_by_length: bool = False) -> DataLoader:
    """A DataLoader over a :class:`CausalLMDataset`, batches ready for ``fit(..., loss_fn=causal_lm_loss)``.

    With ``shuffle`` and ``group_by_length``, batches hold examples of similar length
    (:class:`LengthGroupedBatchSampler`), which cuts the padding.
    """
    return _padded_loader(dataset, [len(item["input_ids"]) for item in dataset.items], batch_size, shuffle, seed,
                          group_by_length)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    Args:
        probs: ``... x vocabulary`` probabilities (each row sums to 1).
        top_p: Probability mass to keep, in (0, 1]; 1 keeps everything.

    Returns:
        The probabilities with the tail set to 0 and each row renormalised to 1.

    Example:
        >>> top_p_filter(torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.8)
        tensor([0.6250, 0.3750, 0.0000, 0.0000])
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above
    keep_sorted = mass_before < top_p                     # the most likely token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    filtered = probs * keep
    return filtered / filtered.sum(-1, keepdim=True)


@torch.no_grad()
def generate_texts(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 20,
                   strategy: str = "greedy", temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   batch_size: int = 8, stop_at_newline: bool = False, device: torch.device | None = None) -> list[str]:
    """Continue each prompt with the model's own ``generate``; returns only the new text.

    Args:
        model: A causal LM (``LlamaForCausalLM``, or a peft model around one).
        tokenizer: Its tokenizer.
        prompts: Texts to continue.
        max_new_tokens: Longest continuation.
        strategy: ``"greedy"`` (most likely token each step), ``"temperature"`` (sample from
            the softmax of logits / temperature) or ``"top_p"`` (sample from the nucleus,
            see :func:`top_p_filter`, after the temperature).
        temperature: Used by the sampling strategies; below 1 sharpens, above 1 flattens.
        top_p: Nucleus mass for ``"top_p"``.
        seed: Seeds sampling, so the same call gives the same text.
        batch_size: Prompts generated together (left-padded).
        stop_at_newline: Cut each continuation at its first line break (for one-line outputs).
        device: Defaults to :func:`~tlutils.utils.get_device`.
    """
    check_one_of(strategy, ("greedy", "temperature", "top_p"), "decoding strategy")
    device = device or get_device()
    model.eval().to(device)
    options = {"do_sample": False} if strategy == "greedy" else {
        "do_sample": True, "temperature": temperature, "top_p": top_p if strategy == "top_p" else 1.0, "top_k": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = [tokenizer.eos_token_id]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if stop_at_newline and len(newline) == 1:  # end a sequence as soon as it writes a line break
        stop_ids.append(newline[0])
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    outputs = []
    try:
        for first in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[first:first + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            new = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stop_ids,
                                 **options)
            outputs += tokenizer.batch_decode(new[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [text.strip().split("\n")[0].strip() if stop_at_newline else text for text in outputs]


@torch.no_grad()
def token_losses(model: nn.Module, tokenizer: Any, text: str, max_length: int = 256,
                 device: torch.device | None = None) -> tuple[list[str], torch.Tensor]:
    """Per-token surprisal: the negative log-probability (nats) the model gave each next token.

    Returns:
        ``(tokens, losses)``: the predicted tokens (all but the first) and their losses.
    """
    device = device or get_device()
    model.eval().to(device)
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length,
                    add_special_tokens=False)["input_ids"].to(device)
    if ids.shape[1] < 2:
        raise ValueError("the text needs at least two tokens to measure a prediction")
    logits = model(input_ids=ids).logits.float()
    losses = nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none").cpu()
    return tokenizer.convert_ids_to_tokens(ids[0, 1:].tolist()), losses


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 256,
               device: torch.device | None = None) -> float:
    """Perplexity over texts: exp of the mean next-token loss, pooled over every predicted token.

    A model that guessed uniformly among V tokens would score V; lower is better.
    """
    if not texts:
        raise ValueError("no texts given")
    total, count = 0.0, 0
    for text in texts:
        _, losses = token_losses(model, tokenizer, text, max_length, device)
        total, count = total + float(losses.sum()), count + len(losses)
    return math.exp(total / count)


def shuffle_words(text: str, seed: int = 0) -> str:
    """The same words in a random order: same vocabulary, no grammar (a perplexity control)."""
    words = text.split()
    order = np.random.default_rng(seed).permutation(len(words))
    return " ".join(words[i] for i in order)


@torch.no_grad()
def next_token_probs(model: nn.Module, tokenizer: Any, prompt: str, temperature: float = 1.0,
                     device: torch.device | None = None) -> torch.Tensor:
    """The model's distribution over the next token after ``prompt``, as ``softmax(logits / temperature)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = device or get_device()
    model.eval().to(device)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    return (model(input_ids=ids).logits[0, -1].float() / temperature).softmax(-1).cpu()


@torch.no_grad()
def target_loss(model: nn.Module, loader, device: torch.device | None = None) -> float:
    """Mean next-token loss over the labelled (target) tokens of a causal-LM loader, pooled over tokens."""
    device = device or get_device()
    model.eval().to(device)
    total, count = 0.0, 0
    for batch in loader:
        labels = batch["labels"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total, count = total + float(causal_lm_loss(logits, labels)) * n, count + n
    if count == 0:
        raise ValueError("the loader has no labelled tokens")
    return total / count


def add_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: Sequence[str] = ("q_proj", "v_proj")) -> nn.Module:
    """Wrap a causal LM with LoRA adapters (peft): frozen weights plus trainable low-rank updates.

    Each targeted linear layer ``W`` (``d_out x d_in``) becomes ``W + (alpha / r) B A`` with
    ``A`` (``r x d_in``, random) and ``B`` (``d_out x r``, zeros), so training starts exactly
    at the pre-trained model and adds ``r (d_in + d_out)`` parameters per layer.

    Args:
        model: A Hugging Face causal LM.
        r: Rank of the update.
        alpha: Scaling numerator (the update is multiplied by ``alpha / r``).
        dropout: Dropout on the adapter's input.
        target_modules: Names of the linear layers to adapt (Llama: ``q_proj``, ``k_proj``,
            ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).

    Returns:
        The peft model; only the adapters are trainable.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"the LoRA rank r must be at least 1, got {r}")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in names]
    if missing:
        raise ValueError(f"the model has no modules named {missing}; linear layers are named like "
                         f"{sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))[:4]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x; harmless
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def unfreeze_last_decoder_blocks(model: nn.Module, k: int) -> nn.Module:
    """Freeze a Llama-style causal LM except its last ``k`` decoder blocks and the final norm.

    The embeddings and the output layer stay frozen: in SmolLM2 they share one matrix
    (tied weights), which alone holds a fifth of the parameters.
    """
    layers = model.model.layers
    if not 1 <= k <= len(layers):
        raise ValueError(f"k must be between 1 and {len(layers)} (the number of decoder blocks), got {k}")
    freeze(model)
    return unfreeze(model, [f"model.layers.{i}" for i in range(len(layers) - k, len(layers))] + ["model.norm"])


# ------------------------------------------------------------------ overlap metrics (ROUGE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_n(prediction: str, reference: str, n: int = 1) -> float:
    """ROUGE-N F1: overlap of word n-grams (lower-cased letters and digits, no stemming)."""
    def grams(words):
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    predicted, reference_grams = grams(_words(prediction)), grams(_words(reference))
    overlap = sum((predicted & reference_grams).values())
    return _f1(overlap, sum(predicted.values()), sum(reference_grams.values()))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall."""
    predicted, reference_words = _words(prediction), _words(reference)
    return _f1(_lcs_length(predicted, reference_words), len(predicted), len(reference_words))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (fractions, 0-1) over pairs of texts."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need one prediction per reference, got {len(predictions)} for {len(references)}")
    pairs = list(zip(predictions, references))
    return {"rouge1": float(np.mean([rouge_n(p, r, 1) for p, r in pairs])),
            "rouge2": float(np.mean([rouge_n(p, r, 2) for p, r in pairs])),
            "rougeL": float(np.mean([rouge_l(p, r) for p, r in pairs]))}


# ------------------------------------------------------------------ attention masks of the pre-training objectives


def bidirectional_mask(n: int) -> torch.Tensor:
    """BERT / RoBERTa: every token may attend to every token (``n x n`` of True)."""
    return torch.ones(n, n, dtype=torch.bool)


def causal_mask(n: int) -> torch.Tensor:
    """GPT / Llama: token i may attend to tokens 0..i only (lower triangle)."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def permutation_mask(order: Sequence[int], content_stream: bool = False) -> torch.Tensor:
    """XLNet's permutation language modelling: who may attend to whom for one factorisation order.

    XLNet predicts the tokens in the order ``order`` (a permutation of positions); the
    token at position i may use the tokens that come *before* it in that order, wherever
    they sit in the text. The query stream (which predicts i) must not see token i itself;
    the content stream (which feeds later predictions) may.

    Args:
        order: A permutation of ``range(n)``: ``order[k]`` is the position predicted k-th.
        content_stream: Include the diagonal (a token sees its own content).

    Returns:
        ``n x n`` booleans, True where row i may attend to column j. XLNet's own
        ``perm_mask`` argument is the opposite: 1 where attention is *forbidden*.
    """
    order = [int(i) for i in order]
    n = len(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}, got {order}")
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(n)
    allowed = rank[None, :] < rank[:, None]
    return allowed | torch.eye(n, dtype=torch.bool) if content_stream else allowed


def plot_attention_masks(masks: dict[str, torch.Tensor], tokens: Sequence[str] | None = None):
    """Side-by-side heat maps of attention masks (rows attend to columns); returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(masks), figsize=(3.3 * len(masks), 3.4), squeeze=False)
    for ax, (title, mask) in zip(axes[0], masks.items()):
        ax.imshow(mask.float().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set(xlabel="attends to (key)", ylabel="token (query)")
        if tokens is not None:
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.tight_layout()
    return fig
