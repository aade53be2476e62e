"""Notebook 10, section 5 (education): automated grading of handwritten digits with a reader pre-trained on MNIST.

The "pre-trained model" here is one the course trains itself: the small CNN of notebook 11
(:class:`~tlutils.course.scratch_vs_transfer.SmallImageCNN`) fitted once on the 50,000 MNIST
training digits and cached as a safetensors checkpoint whose SHA-256 and training recipe are
checked before every reuse (:func:`pretrained_digit_reader`). It is then transferred to other
real handwriting, the UCI optical digits, framed like MNIST, through four protocol arms
(:func:`grading_arms`): the reader as is (zero-shot), its frozen features plus a new head,
the whole reader fine-tuned, and the same CNN trained from scratch on the few labels.

The teacher's view: a model auto-grades only the answers it is confident about. A threshold is
chosen on validation so that the auto-graded answers reach a target accuracy
(:func:`choose_threshold`); :func:`teacher_view` then reads, on test, how many answers per 100 a
teacher still checks by hand and how accurate the auto-graded ones really are.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.compare import Budget, Comparison, Outcome, Trial, best_on_validation
from tlutils.core.datasets import balanced_subset
from tlutils.core.io import sha256_of, try_atomic_write
from tlutils.core.paths import cache_dir
from tlutils.core.runtime import seeded
from tlutils.core.surgery import trainable_parameter_count
from tlutils.core.train import fit, load_checkpoint, predict, save_checkpoint
from tlutils.course.scratch_vs_transfer import SmallImageCNN
from tlutils.topics.learning_curves import train_with_checkpoints

#: The arms of section 5, in the order of its table.
ARMS = ("zero-shot", "frozen + head", "fine-tune", "scratch")

#: Channels of the reader's two conv blocks (the fast variant of notebook 11's CNN).
READER_CHANNELS = (16, 32)

#: File of the MNIST reader under the cache folder.
READER_FILE = "grading/mnist_reader.safetensors"


def reader_model() -> SmallImageCNN:
    """The digit reader's architecture (random weights): 10 classes, :data:`READER_CHANNELS`."""
    return SmallImageCNN(10, channels=READER_CHANNELS)


def as_pixels(images: np.ndarray) -> torch.Tensor:
    """``N x 28 x 28`` ``uint8`` grey images -> ``N x 1 x 28 x 28`` floats in [0, 1].

    Raises:
        ValueError: The images are not ``N x 28 x 28`` ``uint8``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected N x 28 x 28 uint8 images (frame UCI scans with mnist_framed first), "
                         f"got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).unsqueeze(1)


def _recipe(mnist_sha256: str, epochs: int, lr: float, batch_size: int, seed: int) -> dict:
    return {"data": "mnist train (50,000)", "mnist_sha256": mnist_sha256, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "seed": seed, "channels": list(READER_CHANNELS)}


def _verified(path: Path, recipe: dict) -> dict | None:
    """The stored metadata when the checkpoint, its hash file and its recipe all match; else None."""
    hash_file = path.with_suffix(".sha256")
    if not (path.is_file() and hash_file.is_file()):
        return None
    if hash_file.read_text().strip() != sha256_of(path):
        return None
    try:
        metadata = load_checkpoint(reader_model(), path)
    except ValueError:
        return None
    return metadata if metadata.get("recipe") == recipe else None


@dataclass
class Reader:
    """The MNIST-trained reader and what is known about it.

    Args:
        model: The CNN, in eval mode.
        mnist_val: Its accuracy on the 10,000 MNIST validation digits.
        sha256: SHA-256 of the checkpoint file it was loaded from.
        trained_now: True when it was trained in this call, False when read from the cache.
    """

    model: nn.Module
    mnist_val: float
    sha256: str
    trained_now: bool


def pretrained_digit_reader(mnist_train: tuple[np.ndarray, np.ndarray], mnist_val: tuple[np.ndarray, np.ndarray],
                            mnist_sha256: str, *, epochs: int = 2, lr: float = 3e-3, batch_size: int = 128,
                            seed: int = 0, path: str | Path | None = None, device: torch.device | str = "cpu",
                            progress: bool = True) -> Reader:
    """Train the digit reader on MNIST once, or load it from a verified cache.

    The checkpoint is reused only when its SHA-256 matches the ``.sha256`` file written next to it
    and its stored recipe (data hash, epochs, learning rate, batch size, seed, channels) equals
    this call's; anything else (a missing, damaged or foreign file) trains it again.

    Args:
        mnist_train: ``(images, labels)`` of the MNIST training split, ``N x 28 x 28`` ``uint8``.
        mnist_val: The MNIST validation split; the best epoch on it is kept.
        mnist_sha256: SHA-256 of the MNIST source file (part of the recipe).
        epochs: Passes over the training split.
        lr: AdamW learning rate.
        batch_size: Examples per step.
        seed: Seeds initialisation and batch order.
        path: Checkpoint file; default ``<cache>/grading/mnist_reader.safetensors``.
        device: Where to train.
        progress: Show the training progress bar.

    Returns:
        A :class:`Reader`.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs and batch_size must be positive and lr > 0, got {epochs}, {batch_size}, {lr}")
    path = Path(path) if path is not None else cache_dir() / READER_FILE
    recipe = _recipe(str(mnist_sha256), int(epochs), float(lr), int(batch_size), int(seed))
    stored = _verified(path, recipe)
    with seeded(seed):  # the initial weights depend on the seed only
        model = reader_model()
    if stored is not None:
        load_checkpoint(model, path)
        return Reader(model.eval(), float(stored["mnist_val"]), sha256_of(path), trained_now=False)
    train = TensorDataset(as_pixels(mnist_train[0]), torch.as_tensor(mnist_train[1]).long())
    val = DataLoader(TensorDataset(as_pixels(mnist_val[0]), torch.as_tensor(mnist_val[1]).long()), batch_size=1000)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    history = fit(model, loader, val, epochs=epochs, lr=lr, scheduler="cosine", monitor="val_accuracy", seed=seed,
                  device=device, progress=progress, desc="pre-training on MNIST")
    accuracy = float(max(history["val_accuracy"]))
    try:
        save_checkpoint(model.cpu(), path, {"recipe": recipe, "mnist_val": accuracy})
    except OSError as error:  # a read-only cache: keep the trained reader, train again next time
        warnings.warn(f"could not cache the MNIST reader at {path} ({error}); it will be trained again next time")
        return Reader(model.eval(), accuracy, "not cached", trained_now=True)
    digest = sha256_of(path)
    try_atomic_write(path.with_suffix(".sha256"), lambda tmp: tmp.write_text(digest + "\n"), what="checkpoint hash")
    return Reader(model.eval(), accuracy, digest, trained_now=True)


class ReaderBody(nn.Module):
    """The reader without its head: conv blocks and pooling, ``N x 1 x 28 x 28`` -> ``N x 512`` features."""

    def __init__(self, reader: SmallImageCNN):
        super().__init__()
        self.features, self.pool = reader.features, reader.pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled conv features, flattened."""
        return self.pool(self.features(images)).flatten(1)


@dataclass
class GradingTask:
    """The target data of section 5, in the two forms the arms read.

    Args:
        pixels: Every target image, ``N x 1 x 28 x 28`` floats in [0, 1].
        features: The frozen reader body's features of every image, ``N x D``.
        labels: ``N`` integer labels 0-9.
        pool: Indices the labelled draws come from.
        val: Indices of the validation split (every choice).
        test: Indices of the test split (scored once per arm and seed, by the protocol).
    """

    pixels: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    pool: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.pixels) != n or len(self.features) != n:
            raise ValueError(f"pixels ({len(self.pixels)}), features ({len(self.features)}) and labels ({n}) "
                             "must have one row per image")
        parts = [np.asarray(part, dtype=np.int64) for part in (self.pool, self.val, self.test)]
        for name, part in zip(("pool", "val", "test"), parts):
            if len(part) == 0 or part.min() < 0 or part.max() >= n:
                raise ValueError(f"{name} must hold indices in [0, {n}), got {len(part)} of them")
        if len(np.intersect1d(parts[0], parts[1])) or len(np.intersect1d(parts[0], parts[2])) \
                or len(np.intersect1d(parts[1], parts[2])):
            raise ValueError("pool, val and test must not overlap")
        self.pool, self.val, self.test = parts

    def labelled(self, per_class: int, seed: int) -> np.ndarray:
        """Indices of ``per_class`` labelled images per digit, drawn from the pool with ``seed``."""
        return self.pool[balanced_subset(self.labels[self.pool].numpy(), per_class, seed)]

    def split(self, kind: str, index: np.ndarray) -> TensorDataset:
        """``(inputs, labels)`` of ``index`` as ``"pixels"`` or ``"features"``."""
        if kind not in ("pixels", "features"):
            raise ValueError(f"kind must be 'pixels' or 'features', got {kind!r}")
        inputs = self.pixels if kind == "pixels" else self.features
        index = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return TensorDataset(inputs[index], self.labels[index])


@dataclass
class Graded:
    """What an arm hands to the protocol: a trained model and the input form it reads."""

    model: nn.Module
    kind: str


def probabilities(graded: Graded, task: GradingTask, index: np.ndarray) -> torch.Tensor:
    """Softmax class probabilities of ``graded`` on the images ``index``, ``len(index) x 10``."""
    loader = DataLoader(task.split(graded.kind, index), batch_size=512)
    logits, _ = predict(graded.model, loader, torch.device("cpu"))
    return logits.softmax(-1)


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).float().mean())


class FeatureHead(nn.Module):
    """A new linear head on frozen features, standardised with the labelled examples' statistics."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int = 10):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Standardise, then the linear layer."""
        return self.linear((features - self.mean) / self.std)


def _trained_arm(task: GradingTask, per_class: int, kind: str, build: Callable[[np.ndarray], nn.Module],
                 lrs: Sequence[float], *, batch_size: int, checkpoints: int) -> Callable[[Trial], Outcome]:
    """An arm that trains ``build(labelled)`` on the draw; learning rate and checkpoint chosen on validation."""
    if not lrs:
        raise ValueError("give at least one learning rate to choose from")

    def arm(trial: Trial) -> Outcome:
        labelled = task.labelled(per_class, trial.seed)
        steps = trial.budget.steps // len(lrs) // checkpoints * checkpoints
        if steps < checkpoints:
            raise ValueError(f"a budget of {trial.budget.steps} steps is too small for {len(lrs)} learning rates "
                             f"x {checkpoints} checkpoints")
        val_loader = DataLoader(task.split(kind, task.val), batch_size=512)

        def run(lr: float) -> Outcome:
            model, curve = train_with_checkpoints(build(labelled), task.split(kind, labelled), val_loader,
                                                  steps=steps, checkpoints=checkpoints, batch_size=batch_size,
                                                  lr=lr, seed=trial.seed, device="cpu")
            best = curve.loc[curve["val"].idxmax()]
            return Outcome(Graded(model, kind), val=float(best["val"]), steps=int(curve["step"].iloc[-1]),
                           trainable_params=trainable_parameter_count(model), choice={"step": int(best["step"])})

        return best_on_validation(list(lrs), run, name="lr")

    return arm


def grading_arms(task: GradingTask, reader: nn.Module, per_class: int, *, lrs: Mapping[str, Sequence[float]],
                 batch_size: int = 32, checkpoints: int = 5) -> dict[str, Callable[[Trial], Outcome]]:
    """The four arms of section 5 at one label budget, keyed by the names in :data:`ARMS`.

    - ``zero-shot``: the MNIST reader as is; no target label is used (its ``val`` is reported only).
    - ``frozen + head``: a new linear head on the frozen reader's features of the labelled images.
    - ``fine-tune``: the whole reader, its MNIST head kept (the ten classes are the same digits).
    - ``scratch``: the same CNN from random weights, trained on the same labelled images.

    The trained arms split the trial's step budget evenly over their learning rates and keep
    the learning rate and checkpoint that are best on validation.

    Args:
        task: The target data.
        reader: The MNIST-trained reader (copied, never changed).
        per_class: Labelled images per digit.
        lrs: Learning rates to try, ``{"frozen + head": [...], "fine-tune": [...], "scratch": [...]}``.
        batch_size: Examples per step (drawn with replacement).
        checkpoints: Validation checkpoints per learning rate.

    Returns:
        ``{name: arm(trial) -> Outcome}``; each Outcome's predictor is a :class:`Graded`.
    """
    missing = [name for name in ARMS[1:] if name not in lrs]
    if missing:
        raise ValueError(f"lrs lacks learning rates for {missing}; give e.g. lrs={{'fine-tune': [1e-3, 3e-4], ...}}")
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")

    def zero_shot(trial: Trial) -> Outcome:
        graded = Graded(copy.deepcopy(reader).eval(), "pixels")
        val = _accuracy(probabilities(graded, task, task.val), task.labels[task.val])
        return Outcome(graded, val=val, steps=0, trainable_params=0)

    def head(labelled: np.ndarray) -> nn.Module:
        train = task.features[torch.from_numpy(labelled)]
        return FeatureHead(train.mean(0), train.std(0, unbiased=False).clamp_min(1e-3))

    common = dict(batch_size=batch_size, checkpoints=checkpoints)
    return {
        "zero-shot": zero_shot,
        "frozen + head": _trained_arm(task, per_class, "features", head, lrs["frozen + head"], **common),
        "fine-tune": _trained_arm(task, per_class, "pixels", lambda _: copy.deepcopy(reader).train(),
                                  lrs["fine-tune"], **common),
        "scratch": _trained_arm(task, per_class, "pixels", lambda _: reader_model(), lrs["scratch"], **common),
    }


@dataclass
class TestRecorder:
    """The protocol's ``score_test``: test accuracy, and the test and validation probabilities kept for later.

    :func:`~tlutils.core.compare.compare` calls it exactly once per arm and seed, so the test
    probabilities it keeps are the one scoring of the test split; the teacher's view reads them.
    """

    task: GradingTask
    runs: dict = field(default_factory=dict)
    _count: int = 0

    def __call__(self, outcome: Outcome) -> float:
        graded = outcome.predictor
        if not isinstance(graded, Graded):
            raise TypeError(f"a grading arm must return Outcome(predictor=Graded(...)), not {type(graded).__name__}")
        test = probabilities(graded, self.task, self.task.test)
        val = probabilities(graded, self.task, self.task.val)
        self.runs[self._count] = {"val": val, "test": test}
        self._count += 1
        return _accuracy(test, self.task.labels[self.task.test])

    def by_row(self, table: pd.DataFrame) -> dict[tuple[str, int], dict]:
        """``{(arm, seed): {"val": probs, "test": probs}}``, matched to the comparison table's rows in order."""
        if len(table) != len(self.runs):
            raise ValueError(f"the table has {len(table)} rows but {len(self.runs)} runs were recorded; "
                             "use one TestRecorder per compare call")
        return {(row.arm, int(row.seed)): self.runs[i] for i, row in enumerate(table.itertuples())}


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence threshold whose auto-graded answers reach ``target`` accuracy.

    Answers with confidence ``>= threshold`` are graded automatically, the rest go to the
    teacher. Among the thresholds that reach the target (on this split) the lowest one
    auto-grades the most; when none does, the threshold is above every confidence (all answers
    go to the teacher).

    Args:
        confidence: Top-class probability of each answer.
        correct: Whether each prediction is right.
        target: Required accuracy of the auto-graded answers, in (0, 1].

    Returns:
        The threshold (``math.inf`` when no threshold reaches the target).
    """
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError(f"confidence and correct must be 1-D, non-empty and of equal length, "
                         f"got {confidence.shape} and {correct.shape}")
    if not 0 < target <= 1:
        raise ValueError(f"target accuracy must be in (0, 1], got {target}")
    order = np.argsort(-confidence, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # a threshold can only sit between distinct confidences: keep the last answer of each tie group
    last_of_group = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    ok = np.flatnonzero((running >= target) & last_of_group)
    return float(confidence[order][ok[-1]]) if len(ok) else math.inf


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Accuracy of the auto-graded answers against the share auto-graded, most confident first.

    Returns:
        Columns ``coverage`` (share auto-graded, 1/N .. 1) and ``accuracy`` (of those answers).
    """
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError("confidence and correct must be 1-D, non-empty and of equal length")
    order = np.argsort(-confidence, kind="stable")
    n = np.arange(1, len(order) + 1)
    return pd.DataFrame({"coverage": n / len(order), "accuracy": np.cumsum(correct[order]) / n})


def teacher_view(runs: Mapping[tuple[str, int], dict], labels: torch.Tensor, val: np.ndarray, test: np.ndarray,
                 target: float) -> pd.DataFrame:
    """Per (arm, seed): the threshold chosen on validation and what it gives on test.

    Args:
        runs: ``{(arm, seed): {"val": probs, "test": probs}}`` from :meth:`TestRecorder.by_row`.
        labels: Every target label.
        val: Validation indices (the threshold is chosen here).
        test: Test indices (read once, at the chosen threshold).
        target: Required accuracy of the auto-graded answers.

    Returns:
        One row per (arm, seed): ``threshold``, ``checks_per_100`` (answers per 100 a teacher
        still grades on test), ``auto_accuracy`` (accuracy of the auto-graded test answers; NaN
        when none), ``accuracy`` (of every test answer), ``confidence`` (mean top-class probability
        on test), ``overconfidence`` (mean confidence minus accuracy, on test) and
        ``val_auto_per_100`` (answers per 100 auto-graded on validation at the threshold).
    """
    rows = []
    for (arm, seed), probs in runs.items():
        val_conf, val_pred = probs["val"].max(-1)
        threshold = choose_threshold(val_conf.numpy(), (val_pred == labels[val]).numpy(), target)
        conf, pred = probs["test"].max(-1)
        correct = (pred == labels[test]).numpy()
        auto = conf.numpy() >= threshold
        val_auto = 100 * float((val_conf.numpy() >= threshold).mean())
        rows.append({"arm": arm, "seed": seed, "threshold": threshold, "checks_per_100": 100 * (1 - auto.mean()),
                     "val_auto_per_100": val_auto,
                     "auto_accuracy": float(correct[auto].mean()) if auto.any() else math.nan,
                     "accuracy": float(correct.mean()), "confidence": float(conf.mean()),
                     "overconfidence": float(conf.mean() - correct.mean())})
    return pd.DataFrame(rows)


def plot_coverage(runs: Mapping[tuple[str, int], dict], labels: torch.Tensor, test: np.ndarray,
                  arms: Sequence[str], target: float, title: str = ""):
    """Accuracy of the auto-graded test answers against coverage, one line per arm (mean over seeds).

    Returns:
        The matplotlib figure (nothing is saved).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    grid = np.linspace(0.05, 1.0, 96)
    for arm in arms:
        curves = []
        for (name, _), probs in runs.items():
            if name == arm:
                conf, pred = probs["test"].max(-1)
                curve = coverage_curve(conf.numpy(), (pred == labels[test]).numpy())
                curves.append(np.interp(grid, curve["coverage"], curve["accuracy"]))
        if not curves:
            raise ValueError(f"no runs of arm {arm!r}; the runs hold {sorted({name for name, _ in runs})}")
        ax.plot(100 * grid, np.mean(curves, axis=0), label=f"{arm} ({len(curves)} seeds)")
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.0%}")
    ax.set_xlabel("answers auto-graded per 100 (most confident first)")
    ax.set_ylabel("accuracy of the auto-graded answers (test)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def coverage_comparison(view: pd.DataFrame, budget: Budget) -> Comparison:
    """The teacher's view as a :class:`~tlutils.core.compare.Comparison`: answers auto-graded per 100 (higher is better).

    ``test`` is ``100 - checks_per_100`` on test at the threshold chosen on validation, so
    :func:`~tlutils.core.compare.assert_better` and ``claim_verdict`` read paired, same-seed gaps.

    Args:
        view: The output of :func:`teacher_view`.
        budget: The budget the arms ran under.
    """
    missing = {"arm", "seed", "checks_per_100", "val_auto_per_100"} - set(view.columns)
    if missing:
        raise ValueError(f"view lacks the columns {sorted(missing)}; pass the output of teacher_view")
    table = pd.DataFrame({"arm": view["arm"], "seed": view["seed"], "val": view["val_auto_per_100"],
                          "test": 100 - view["checks_per_100"], "trainable_params": 0, "seconds": 0.0, "steps": 0,
                          "choice": [{"threshold": t} for t in view["threshold"]]})
    return Comparison(table, metric="answers auto-graded per 100", budget=budget)


def threshold_transfer(source_probs: torch.Tensor, source_labels: torch.Tensor, target_probs: torch.Tensor,
                       target_labels: torch.Tensor, target: float) -> dict:
    """Choose a threshold on one handwriting (e.g. MNIST) and read what it gives on another.

    Returns:
        ``{"threshold", "source_auto_accuracy", "target_auto_accuracy", "target_auto_share", "n_auto"}``:
        the accuracy of the answers above the threshold on each set, the share of target answers
        above it and how many they are.
    """
    def read(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if len(probs) != len(labels) or probs.ndim != 2:
            raise ValueError(f"probs must be N x classes with N labels, got {tuple(probs.shape)} and {len(labels)}")
        conf, pred = probs.max(-1)
        return conf.numpy(), (pred == labels).numpy()

    conf, correct = read(source_probs, source_labels)
    threshold = choose_threshold(conf, correct, target)
    target_conf, target_correct = read(target_probs, target_labels)
    auto = target_conf >= threshold
    return {"threshold": threshold, "source_auto_accuracy": float(correct[conf >= threshold].mean()),
            "target_auto_accuracy": float(target_correct[auto].mean()) if auto.any() else math.nan,
            "target_auto_share": float(auto.mean()), "n_auto": int(auto.sum())}


def comparison_table(results: Mapping[int, Comparison], reference: str = "scratch", z: float = 2.0) -> pd.DataFrame:
    """One row per (labels per class, arm): test mean and SE, the paired gap to ``reference`` and its verdict.

    Args:
        results: ``{labels_per_class: Comparison}``.
        reference: The arm every other arm is paired with.
        z: Standard errors a gap must exceed to count (see ``gap_verdict``).

    Returns:
        Columns ``per_class``, ``arm``, ``test_mean``, ``test_se``, ``gap``, ``gap_se``, ``verdict``, ``choices``.
    """
    from tlutils.core.compare import gap_verdict

    rows = []
    for per_class, result in results.items():
        summary = result.summary(reference=reference)
        for arm, row in summary.iterrows():
            choices = result.table.loc[result.table["arm"] == arm, "choice"].tolist()
            verdict = "reference" if arm == reference else gap_verdict(row["diff_mean"], row["diff_se"], z)
            rows.append({"per_class": per_class, "arm": arm, "test_mean": row["test_mean"], "test_se": row["test_se"],
                         "gap": row["diff_mean"], "gap_se": row["diff_se"], "verdict": verdict,
                         "choices": "; ".join(", ".join(f"{k}={v:g}" for k, v in c.items()) or "-" for c in choices)})
    return pd.DataFrame(rows)


def ink_statistics(images: np.ndarray, threshold: int = 128) -> dict:
    """How a set of ``N x H x W`` ``uint8`` digit images is drawn: ink share, stroke darkness, digit box size.

    Returns:
        ``{"ink_share"}`` (pixels above ``threshold``), ``"mean_ink"`` (mean intensity of the inked
        pixels, 0-255), ``"box_height"`` and ``"box_width"`` (mean bounding box of the ink, as a
        share of the image side).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"expected a non-empty N x H x W uint8 array, got {images.dtype} {images.shape}")
    ink = images > threshold
    rows, cols = ink.any(axis=2), ink.any(axis=1)

    def extent(mask: np.ndarray) -> np.ndarray:
        first, last = mask.argmax(axis=1), mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0) / mask.shape[1]

    return {"ink_share": float(ink.mean()), "mean_ink": float(images[ink].mean()) if ink.any() else 0.0,
            "box_height": float(extent(rows).mean()), "box_width": float(extent(cols).mean())}


def confidence_gap(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean top-class confidence minus accuracy, with its standard error over examples.

    Positive: the model is overconfident (it says 0.9 and is right less often); negative: underconfident.

    Args:
        probs: ``N x classes`` probabilities.
        labels: ``N`` true labels.

    Returns:
        ``(gap, se)``.
    """
    if probs.ndim != 2 or len(probs) != len(labels) or len(probs) < 2:
        raise ValueError(f"probs must be N x classes (N >= 2) with N labels, got {tuple(probs.shape)} and {len(labels)}")
    conf, pred = probs.max(-1)
    gaps = (conf - (pred == labels).float()).numpy().astype(float)
    return float(gaps.mean()), float(gaps.std(ddof=1) / math.sqrt(len(gaps)))
