"""Notebook 11 (scratch vs transfer): its data splits, scratch image model, pairings, plots and the guide's table.

The general machinery is in :mod:`tlutils.topics.learning_curves` (curves through the comparison
protocol) and :mod:`tlutils.topics.training_cost` (time to accuracy); this module holds what the
notebook needs around it: disjoint balanced splits, the scratch CNN for digits, the pairing of two
points of a curve (transfer at 10 labels vs scratch at 100), "mean ± SE" cells, the plots and the
regenerated comparison table of the guide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlutils.core.compare import Comparison
from tlutils.topics.learning_curves import LearningCurve


def disjoint_balanced(labels: Any, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint, class-balanced index sets: ``sizes[k]`` examples of every class in set ``k``.

    The sets are cut from one seeded permutation, so they never overlap (a pool to draw training
    subsets from, a validation split, a test split, ...).

    Args:
        labels: One integer label per example.
        sizes: Examples per class of each set, in order.
        seed: Seeds the permutation.

    Returns:
        One sorted index array per entry of ``sizes``.

    Raises:
        ValueError: A class has fewer examples than ``sum(sizes)``.
    """
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    need = int(sum(sizes))
    sets: list[list[np.ndarray]] = [[] for _ in sizes]
    for label in np.unique(labels):
        members = order[labels[order] == label]
        if len(members) < need:
            raise ValueError(
                f"class {label} has {len(members)} examples, fewer than the {need} that sizes="
                f"{list(sizes)} ask for; lower the sizes"
            )
        bounds = np.cumsum([0, *sizes])
        for k in range(len(sizes)):
            sets[k].append(members[bounds[k] : bounds[k + 1]])
    return [np.sort(np.concatenate(parts)) for parts in sets]


class SmallImageCNN(nn.Module):
    """A small CNN for grey digit images, trained from random weights (the no-transfer baseline).

    Two conv - BatchNorm - ReLU - 2x max-pool blocks, average pooling to a 4 x 4 grid (where a
    stroke is matters for digits, so the layout is kept rather than pooled away) and a linear
    ``head``; about 29 k parameters, so a training step on 28 x 28 images costs milliseconds.

    Args:
        num_classes: Number of outputs.
        channels: Output channels of the two conv blocks.
        in_channels: 1 for grey images.
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (32, 64), in_channels: int = 1):
        super().__init__()
        widths = [in_channels, *channels]
        self.features = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(2)
                )
                for a, b in zip(widths, widths[1:])
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(widths[-1] * 16, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` images -> ``N x num_classes`` logits."""
        if images.ndim != 4:
            raise ValueError(f"expected N x C x H x W images, got shape {tuple(images.shape)}")
        return self.head(self.pool(self.features(images)).flatten(1))


def format_mean_se(mean: float, se: float, digits: int = 3, unit: str = "") -> str:
    """``"0.912 ± 0.004"``; ``"not reached"`` for an infinite mean; no ``±`` part when the SE is NaN."""
    if mean is None or (isinstance(mean, float) and math.isinf(mean)):
        return "not reached"
    if se is None or not math.isfinite(se):
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}{unit}"


def plot_learning_curves(
    curves: Mapping[str, LearningCurve], split: str | None = None, targets: Mapping[str, float] | None = None
):
    """One panel per modality: accuracy against labels per class (log x), mean +- SE band per approach.

    Args:
        curves: ``{modality: LearningCurve}``.
        split: Which held-out split to draw (default: each curve's primary split).
        targets: Optional ``{modality: accuracy}`` drawn as a dotted line.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.6), squeeze=False)
    for ax, (modality, curve) in zip(axes[0], curves.items()):
        summary = curve.summary(split).reset_index()
        for approach, rows in summary.groupby("approach", sort=False):
            x, mean, se = rows["per_class"], rows["mean"], rows["se"].fillna(0.0)
            style = "o-" if len(rows) > 1 else "D"
            line = ax.plot(x, mean, style, label=approach, markersize=5)[0]
            ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2)
            if len(rows) == 1:
                ax.errorbar(x, mean, yerr=se, color=line.get_color(), capsize=4)
        if targets and modality in targets:
            ax.axhline(targets[modality], color="grey", linestyle=":", label="target")
        ax.set(
            xscale="log",
            xlabel="labelled examples per class",
            ylabel=f"{split or curve.splits[0]} accuracy",
            title=modality,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cost_scaling(table: pd.DataFrame):
    """Log-log plot of seconds against training examples, one line per approach.

    Args:
        table: Columns ``approach``, ``examples``, ``seconds``.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for approach, rows in table.groupby("approach", sort=False):
        ax.plot(rows["examples"], rows["seconds"], "o-", label=approach)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training examples",
        ylabel="seconds for one epoch",
        title="how training cost grows with data",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def guide_table(
    cells: Mapping[tuple[str, str], str], guide_words: Mapping[str, str], rows: Sequence[str] | None = None
) -> pd.DataFrame:
    """The guide's comparison table with measured cells: one row per criterion, the guide's words first.

    Args:
        cells: ``{(criterion, column): text}``, e.g. ``{("performance", "images: fine-tuning"): "0.91 ± 0.01"}``.
        guide_words: ``{criterion: the guide's original words}``.
        rows: Order of the criteria (default: the order of ``guide_words``).

    Returns:
        A DataFrame indexed by criterion; the first column is ``"the guide says"``, missing cells are ``"-"``.
    """
    rows = list(rows or guide_words)
    columns = list(dict.fromkeys(column for _, column in cells))
    unknown = {criterion for criterion, _ in cells} - set(rows)
    if unknown:
        raise ValueError(f"cells name criteria without a row: {sorted(unknown)}; the rows are {rows}")
    table = pd.DataFrame("-", index=pd.Index(rows, name="criterion"), columns=["the guide says", *columns])
    for criterion in rows:
        table.loc[criterion, "the guide says"] = guide_words.get(criterion, "-")
    for (criterion, column), text in cells.items():
        table.loc[criterion, column] = text
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (index first), without the ``tabulate`` dependency."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([str(index), *(str(v).replace("|", "/") for v in row)]) + " |")
    return "\n".join(lines)


def cross_budget_comparison(
    curve: LearningCurve, a: tuple[str, int], b: tuple[str, int], split: str | None = None
) -> Comparison:
    """Pair two (approach, labels per class) points of a curve by seed, e.g. transfer at 10 vs scratch at 100.

    Args:
        curve: The learning curve.
        a, b: ``(approach, per_class)`` of each side.
        split: The held-out split to compare on.

    Returns:
        A :class:`Comparison` with the arms ``"<approach> @ <per_class>"``, ready for
        :func:`~tlutils.core.compare.assert_better`.
    """
    rows = []
    for approach, per_class in (a, b):
        comparison = curve.comparison(per_class, split)
        if approach not in comparison.arms:
            raise KeyError(f"{approach!r} was not run at {per_class} labels per class; it has {comparison.arms}")
        part = comparison.table[comparison.table["arm"] == approach].copy()
        rows.append(part.assign(arm=f"{approach} @ {per_class}"))
    budget = curve.comparisons[a[1]].budget
    return Comparison(pd.concat(rows, ignore_index=True), metric=curve.comparison(a[1], split).metric, budget=budget)


def split_loaders(splits: Mapping[str, tuple[torch.Tensor, Any]], batch_size: int = 256) -> dict[str, DataLoader]:
    """``{split: (inputs, labels)}`` -> ``{split: DataLoader}`` (in order, for scoring)."""
    from torch.utils.data import TensorDataset

    return {
        name: DataLoader(TensorDataset(inputs, torch.as_tensor(np.asarray(labels)).long()), batch_size=batch_size)
        for name, (inputs, labels) in splits.items()
    }


class TextPipelineClassifier(nn.Module):
    """A fitted scikit-learn text pipeline behind the ``model(inputs) -> logits`` interface of the protocol.

    Held-out loaders for this model yield *indices* into ``texts`` (one list holding every text the
    notebook scores), so :func:`~tlutils.core.train.evaluate` can score a TF-IDF model exactly like a
    network.

    Args:
        pipeline: A fitted pipeline with ``predict_log_proba`` (e.g. TF-IDF + logistic regression).
        texts: Every text an index may point to.
    """

    def __init__(self, pipeline: Any, texts: Sequence[str]):
        super().__init__()
        self.pipeline, self.texts = pipeline, list(texts)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """``N`` text indices -> ``N x classes`` log-probabilities."""
        chosen = [self.texts[int(i)] for i in indices.reshape(-1).tolist()]
        return torch.from_numpy(self.pipeline.predict_log_proba(chosen)).float()


def tfidf_parameter_count(pipeline: Any) -> int:
    """Trained numbers of a TF-IDF + logistic-regression pipeline: IDF weights, coefficients, intercepts."""
    vectorizer, classifier = pipeline[0], pipeline[-1]
    return int(vectorizer.idf_.size + classifier.coef_.size + classifier.intercept_.size)


def tfidf_arm(
    texts: Sequence[str],
    training_set: Callable[[int, int], Any],
    val_indices: Any,
    val_labels: Any,
    Cs: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0),
    kind: str = "text ids",
    max_features: int = 30_000,
) -> Callable:
    """The scratch text baseline as a learning-curve arm: TF-IDF + logistic regression, ``C`` chosen on validation.

    The vectoriser and the classifier see only the labelled subset (nothing pre-trained, no other
    text). Each value of ``C`` is one fit; the validation curve of the returned
    :class:`~tlutils.topics.learning_curves.Fitted` has one row per fit (``step`` = fits so far,
    ``seconds`` = fitting time so far), so the cost tables read it like a network's checkpoints.

    Args:
        texts: Every text (pool and held-out splits); datasets and loaders hold indices into it.
        training_set: ``training_set(per_class, seed)`` -> a dataset of ``(index, label)`` pairs,
            e.g. :func:`~tlutils.topics.learning_curves.subset_picker` over an index tensor.
        val_indices, val_labels: The validation split (indices into ``texts``).
        Cs: Inverse regularisation strengths tried; the best on validation is kept.
        kind: The input kind of the held-out loaders (index loaders).
        max_features: Vocabulary size of the vectoriser.

    Returns:
        ``arm(trial, per_class) -> Outcome`` for :func:`~tlutils.topics.learning_curves.run_learning_curve`.
    """
    import time

    from tlutils.core.compare import Outcome
    from tlutils.topics.learning_curves import Fitted
    from tlutils.topics.text import fit_tfidf_logreg

    val_texts = [texts[int(i)] for i in np.asarray(val_indices)]
    val_labels = np.asarray(val_labels)

    def arm(trial, per_class: int):
        dataset = training_set(per_class, trial.seed)
        indices, labels = (np.asarray(t) for t in dataset.tensors)
        train_texts = [texts[int(i)] for i in indices]
        rows, best = [], None
        elapsed = 0.0
        for fits, C in enumerate(Cs, start=1):
            started = time.perf_counter()
            pipeline = fit_tfidf_logreg(train_texts, labels, max_features=max_features, C=C, seed=trial.seed)
            elapsed += time.perf_counter() - started
            val = float((pipeline.predict(val_texts) == val_labels).mean())
            rows.append({"step": fits, "seconds": elapsed, "val": val})
            if best is None or val > best[0]:
                best = (val, C, pipeline)
        val, C, pipeline = best
        fitted = Fitted(TextPipelineClassifier(pipeline, texts), kind, pd.DataFrame(rows))
        return Outcome(fitted, val=val, steps=len(Cs), trainable_params=tfidf_parameter_count(pipeline), choice={"C": C})

    return arm


def pixels(images: np.ndarray, size: int = 28) -> torch.Tensor:
    """``N x H x W`` uint8 grey images -> ``N x 1 x size x size`` floats in [0, 1] (bilinear resize)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).unsqueeze(1)
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return tensor


def new_task_costs(curve: LearningCurve, per_class: int) -> pd.DataFrame:
    """What adding one task costs with each approach, from a one-point learning curve of that task.

    Per approach (mean over seeds): test accuracy ± SE, seconds (training plus the one-time feature
    extraction of its training examples), trainable parameters and the kilobytes to store what was
    trained (float32 parameters of a network; the pickled pipeline of a scikit-learn model). For a
    shared frozen body only the new head is stored: the body is already on disk for the first task.

    Args:
        curve: A learning curve of the new task (e.g. run at a single budget).
        per_class: The budget to read.

    Returns:
        A DataFrame indexed by approach: ``test``, ``test_se``, ``seconds``, ``trainable_params``, ``kB``.
    """
    import pickle

    from tlutils.topics.training_cost import state_bytes

    summary = curve.comparison(per_class).summary()
    rows = {}
    for approach in summary.index:
        runs = [fitted for (arm, _), fitted in curve.fitted[per_class].items() if arm == approach]
        seconds = [f.curve["seconds"].iloc[-1] + f.setup_seconds for f in runs]
        model = runs[0].model
        if isinstance(model, TextPipelineClassifier):
            params, size = tfidf_parameter_count(model.pipeline), len(pickle.dumps(model.pipeline))
        else:
            params, size = sum(p.numel() for p in model.parameters() if p.requires_grad), state_bytes(model)
        rows[approach] = {"test": summary.loc[approach, "test_mean"], "test_se": summary.loc[approach, "test_se"],
                          "seconds": float(np.mean(seconds)), "trainable_params": int(params), "kB": size / 1e3}
    return pd.DataFrame.from_dict(rows, orient="index")


def mnist_framed(images: np.ndarray, digit_size: int = 20, side: int = 28) -> np.ndarray:
    """Grey digit images framed like MNIST: resized to ``digit_size`` and centred on a ``side`` x ``side`` black canvas.

    MNIST digits fill a 20 x 20 box inside 28 x 28 pixels; the UCI scans fill their whole 8 x 8
    frame. Framing them the same way removes a difference of layout that no model could learn from
    MNIST alone, and leaves the real shift (resolution, pen and scanner) in place.

    Args:
        images: ``N x H x W`` ``uint8`` images.
        digit_size: Side of the resized digit.
        side: Side of the canvas.

    Returns:
        ``N x side x side`` ``uint8`` images.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1)
    resized = nn.functional.interpolate(tensor, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    pad = (side - digit_size) // 2
    framed = nn.functional.pad(resized, (pad, side - digit_size - pad, pad, side - digit_size - pad))
    return framed.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


class TextLowerLayers(nn.Module):
    """The embeddings and lower layers of a BERT-family encoder: token ids -> the hidden states feeding its top layers.

    A feature extractor for :func:`~tlutils.core.features.extract_features`: every text becomes a
    ``max_length x (hidden + 1)`` block (the hidden states of layer ``layer`` with the attention
    mask as the last channel, padded to ``max_length``), so a cache of them can be fed straight to
    :class:`CachedTopClassifier`, which fine-tunes the layers above.

    Args:
        encoder: A Hugging Face encoder (``BertModel``), used frozen.
        layer: How many transformer layers to run (``hidden_states[layer]``; 0 = the embeddings).
        max_length: Token positions of every block (the tokenizer's truncation length).
    """

    def __init__(self, encoder: nn.Module, layer: int, max_length: int = 64):
        super().__init__()
        depth = encoder.config.num_hidden_layers
        if not 0 <= layer < depth:
            raise ValueError(f"layer must be between 0 and {depth - 1} (the encoder has {depth} layers), got {layer}")
        self.encoder, self.layer, self.max_length = encoder, int(layer), int(max_length)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Tokenised batch -> ``N x max_length x (hidden + 1)`` states with the mask as the last channel."""
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"the batch has {input_ids.shape[1]} tokens, more than max_length={self.max_length}; "
                             "tokenise with the same max_length")
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        states = torch.cat([out.hidden_states[self.layer], attention_mask.unsqueeze(-1).to(out.hidden_states[0].dtype)], -1)
        return nn.functional.pad(states, (0, 0, 0, self.max_length - states.shape[1]))

    def extra_repr(self) -> str:
        return f"layer={self.layer}, max_length={self.max_length}"  # part of the feature cache's key


def text_layer_states(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], layer: int,
                      max_length: int = 64, batch_size: int = 64, cache_name: str | None = None,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (and attention mask) of a frozen encoder's lower layers, cached on disk.

    Args:
        encoder, tokenizer: A Hugging Face encoder and its tokenizer.
        texts, labels: The texts and their labels.
        layer: Layers run (see :class:`TextLowerLayers`); the cache holds the input of layer ``layer + 1``.
        max_length: Truncation length.
        batch_size: Texts per forward pass.
        cache_name: File name under ``data/cache/features/``; ``None`` disables the cache.
        device: Where to run.

    Returns:
        ``(states, labels)``: ``N x max_length x (hidden + 1)`` floats (mask last) and ``N`` labels.
    """
    from tlutils.core.datasets import text_loader
    from tlutils.core.features import extract_features
    from tlutils.core.runtime import resolve_device

    lower = TextLowerLayers(encoder, layer, max_length)
    loader = text_loader(texts, labels, tokenizer, max_length=max_length, batch_size=batch_size)
    flat, labels = extract_features(lower, loader, cache_name, f"text lower layers|{layer}|{max_length}",
                                    resolve_device(device), progress=False)
    return flat.view(len(flat), max_length, encoder.config.hidden_size + 1), labels


class WhisperLowerBlocks(nn.Module):
    """A Whisper encoder without its last ``top`` blocks: log-mels -> the input of the blocks above (for caching).

    Args:
        encoder: A (truncated) Whisper encoder, used frozen.
        top: Blocks left above the cut.
    """

    def __init__(self, encoder: nn.Module, top: int = 1):
        super().__init__()
        if not 1 <= top <= len(encoder.layers):
            raise ValueError(f"top must be between 1 and {len(encoder.layers)} blocks, got {top}")
        self.encoder, self.top = encoder, int(top)

    @torch.no_grad()
    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``N x 80 x frames`` -> ``N x positions x d_model`` (the output of block ``layers - top``)."""
        from tlutils.topics.speech import whisper_hidden_states

        states = whisper_hidden_states(self.encoder.eval(), mels)
        return states[len(states) - 1 - self.top]

    def extra_repr(self) -> str:
        return f"top={self.top}"


def whisper_block_inputs(encoder: nn.Module, mels: torch.Tensor, labels: Any, top: int = 1, batch_size: int = 32,
                         cache_name: str | None = None,
                         device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of a frozen Whisper encoder's last ``top`` blocks, for every clip, cached on disk.

    Returns:
        ``(states, labels)``: ``N x positions x d_model`` floats and ``N`` labels.
    """
    from tlutils.core.features import extract_features, feature_loader
    from tlutils.core.runtime import resolve_device

    labels = torch.as_tensor(np.asarray(labels))
    if mels.dim() != 3 or len(labels) != len(mels):
        raise ValueError(f"expected N x 80 x frames log-mels and N labels, got {tuple(mels.shape)} and {len(labels)}")
    lower = WhisperLowerBlocks(encoder, top)
    positions = encoder.embed_positions.num_embeddings
    flat, labels = extract_features(lower, feature_loader(mels, labels, batch_size), cache_name,
                                    f"whisper lower blocks|top={top}|positions={positions}", resolve_device(device),
                                    progress=False)
    return flat.view(len(flat), positions, -1), labels


class CachedTopClassifier(nn.Module):
    """The top blocks of a pre-trained encoder, mean pooling and a head, trained on cached inputs to those blocks.

    Fine-tuning the top of a frozen body costs only the blocks above the cut when the activations
    below it are cached once (:func:`text_layer_states`, :func:`whisper_block_inputs`): each step
    runs the top blocks alone. With unchanged top blocks the pooled vector equals the frozen
    encoder's own mean-pooled output, so a fine-tuning run starts from the frozen arm's features.

    Args:
        blocks: The top blocks (deep-copied, and set trainable).
        head: Maps the pooled ``N x hidden`` vector to logits (e.g. a ``LinearProbe``).
        final_norm: A module applied after the blocks (Whisper's encoder ``layer_norm``), copied and trained.
        masked: The inputs carry the attention mask as their last channel (BERT-style text states):
            padded positions are ignored by attention and pooling, and each batch is trimmed to
            its longest text.
    """

    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module, final_norm: nn.Module | None = None,
                 masked: bool = False):
        import copy

        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(list(blocks))).requires_grad_(True)
        self.final_norm = copy.deepcopy(final_norm).requires_grad_(True) if final_norm is not None else nn.Identity()
        self.head, self.masked = head, bool(masked)

    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        """``N x T x (hidden [+ 1])`` cached states -> ``N x hidden`` mean-pooled output of the top blocks."""
        if states.ndim != 3:
            raise ValueError(f"expected N x positions x channels cached states, got shape {tuple(states.shape)}")
        mask = None
        if self.masked:
            states, mask = states[..., :-1], states[..., -1]
            longest = max(int(mask.sum(1).max()), 1)
            states, mask = states[:, :longest], mask[:, :longest]
            additive = (1.0 - mask)[:, None, None, :] * torch.finfo(states.dtype).min
        hidden = states
        for block in self.blocks:
            out = block(hidden, additive if self.masked else None)
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = self.final_norm(hidden)
        if mask is None:
            return hidden.mean(1)
        weights = mask.unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Cached states -> logits."""
        return self.head(self.pooled(states))
