"""Notebook 10, autonomous vehicles: road users recognised from few photos, and the sim-to-real gap.

Tux Paint's stamps are cut-outs on transparency. Stamps in a category's own folder are mostly real
photos; stamps in its ``cartoon/`` subfolder are drawn. Drawn images play the part of a driving
simulator's renderings ("sim"), photos the part of camera frames ("real"). Every cut-out is pasted on
a crop of the same real asphalt-like texture (scikit-image's gravel photo) so that both domains share
the background and differ only in how the object is depicted.

The experiment runs through :mod:`tlutils.core.compare`: for each seed a stratified split of the target
domain into a few labelled images, a small labelled validation split (for the probe's ``C``) and a test
split, which the protocol scores once per arm. Arms differ in the features (raw pixels, the no-transfer
baseline, or frozen ImageNet MobileNetV2 features) and in the labelled data they train on (target labels,
source-domain labels only, source labels after CORAL or AdaBN alignment, or source plus a few target labels).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.assets import resolve
from tlutils.core.compare import Outcome, Trial, best_on_validation
from tlutils.core.datasets import balanced_subset, images_to_tensor
from tlutils.core.features import extract_features, fit_linear_probe, standardize
from tlutils.topics.adaptation import recalibrate_batchnorm

#: The classes and the stamp folders (relative to the stamps root) whose PNGs belong to each.
CLASS_FOLDERS = {
    "road vehicle": ("vehicles/auto", "vehicles/construction", "vehicles/emergency", "vehicles/masstransit",
                     "vehicles/race", "vehicles/cycle", "vehicles/farming", "vehicles/garbagetruck.png"),
    "animal": ("animals",),
}
#: Stamps left out, with the reason: exact mirror images (they would leak between splits) and one drawing
#: that sits in a photo folder.
EXCLUDED = {"_mirror": "a mirrored copy of another stamp", "sedan_police.png": "a drawing in a photo folder"}
DOMAINS = ("photo", "cartoon")
#: The arms of :func:`domain_arms`, in the order of the tables.
ARMS = ("pixels: target labels", "pixels: source only", "CNN: target labels", "CNN: source, as few labels",
        "CNN: source only",
        "CNN: source + CORAL", "CNN: source + AdaBN", "CNN: source + target labels")


def list_stamps(root: str | Path | None = None, max_per_class: int | None = 20) -> pd.DataFrame:
    """List the stamp PNGs of :data:`CLASS_FOLDERS` with their class and domain.

    Args:
        root: The stamps folder; ``None`` resolves Tux Paint's (``/usr/share/tuxpaint/stamps``).
        max_per_class: Keep at most this many per class and domain, spread evenly over the sorted
            list (animal photos outnumber everything else); ``None`` keeps all.

    Returns:
        A DataFrame with columns ``path``, ``name``, ``label`` (class name) and ``domain``, sorted by path.

    Raises:
        FileNotFoundError: A class has no image in one of the domains.
    """
    # The stamps folder is the same one that carries the recorded descriptions of notebook 09.
    root = Path(resolve("real_words").path if root is None else root)
    rows = []
    for label, folders in CLASS_FOLDERS.items():
        for folder in folders:
            target = root / folder
            paths = [target] if target.suffix == ".png" else sorted(target.rglob("*.png"))
            for path in paths:
                if path.is_file() and not any(key in path.name for key in EXCLUDED):
                    domain = "cartoon" if "cartoon" in path.relative_to(root).parts else "photo"
                    rows.append(dict(path=str(path), name=path.stem, label=label, domain=domain))
    table = pd.DataFrame(rows, columns=["path", "name", "label", "domain"]).sort_values("path")
    parts = []
    for (label, domain), group in table.groupby(["label", "domain"], sort=False):
        if max_per_class is not None and len(group) > max_per_class:
            group = group.iloc[np.linspace(0, len(group) - 1, max_per_class).round().astype(int)]
        parts.append(group)
    table = pd.concat(parts).sort_values("path").reset_index(drop=True) if parts else table
    counts = table.groupby(["label", "domain"]).size()
    for label in CLASS_FOLDERS:
        for domain in DOMAINS:
            if counts.get((label, domain), 0) == 0:
                raise FileNotFoundError(f"no {domain} stamps of class {label!r} under {root}; "
                                        "is tuxpaint-stamps-default installed?")
    return table


def composite(cutout: np.ndarray, background: np.ndarray, size: int = 128, fill: float = 0.8) -> np.ndarray:
    """Paste an RGBA cut-out, scaled to ``fill`` of the canvas and centred, on a ``size`` crop of ``background``.

    Args:
        cutout: ``H x W x 4`` ``uint8`` image (alpha = transparency).
        background: ``h x w x 3`` ``uint8`` photo, at least ``size`` on each side.
        size: Side of the square output.
        fill: The longer side of the object as a fraction of ``size``.

    Returns:
        ``size x size x 3`` ``uint8``.
    """
    from PIL import Image

    cutout, background = np.asarray(cutout), np.asarray(background)
    if cutout.ndim != 3 or cutout.shape[2] != 4 or cutout.dtype != np.uint8:
        raise ValueError(f"cutout must be an H x W x 4 uint8 RGBA image, got {cutout.shape} {cutout.dtype}")
    if background.ndim != 3 or background.shape[2] != 3 or min(background.shape[:2]) < size:
        raise ValueError(f"background must be H x W x 3 with both sides >= size={size}, got {background.shape}")
    if not 0 < fill <= 1:
        raise ValueError(f"fill must be in (0, 1], got {fill}")
    canvas = Image.fromarray(np.ascontiguousarray(background[:size, :size])).convert("RGBA")
    item = Image.fromarray(cutout)
    scale = fill * size / max(item.size)
    item = item.resize((max(1, round(item.width * scale)), max(1, round(item.height * scale))), Image.LANCZOS)
    canvas.alpha_composite(item, ((size - item.width) // 2, (size - item.height) // 2))
    return np.asarray(canvas.convert("RGB"))


def load_composites(table: pd.DataFrame, background: np.ndarray, size: int = 128) -> np.ndarray:
    """Every stamp of ``table`` composited on a crop of ``background`` (crop position fixed by its file name)."""
    from PIL import Image

    images = []
    for path in table["path"]:
        offset = zlib.crc32(Path(path).name.encode())
        top = offset % (background.shape[0] - size + 1)
        left = (offset // 7919) % (background.shape[1] - size + 1)
        with Image.open(path) as image:
            images.append(composite(np.asarray(image.convert("RGBA")), background[top:, left:], size))
    return np.stack(images)


class _Body(nn.Module):
    """``uint8`` images -> ImageNet-normalised -> MobileNetV2 body -> global average pool (``N x 1280``)."""

    def __init__(self, features: nn.Module, size: int):
        super().__init__()
        self.features, self.size = features, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images_to_tensor(images.numpy(), size=self.size)).mean(dim=(2, 3))


def _loader(images: np.ndarray, batch_size: int = 64) -> DataLoader:
    images = torch.from_numpy(np.ascontiguousarray(images))
    return DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch_size)


def cnn_features(model: nn.Module, images: np.ndarray, domains: np.ndarray, size: int, cache_name: str) -> dict:
    """Frozen MobileNetV2 features, as pre-trained and with AdaBN (BatchNorm re-estimated per domain).

    Args:
        model: An ImageNet MobileNetV2 (e.g. ``load_mobilenet_v2()``); it is not modified.
        images: ``N x H x W x 3`` ``uint8`` composites.
        domains: ``N`` domain names (``"photo"`` / ``"cartoon"``).
        size: Input side in pixels.
        cache_name: Stem of the feature cache files.

    Returns:
        ``{"imagenet": N x 1280, "adabn": N x 1280}`` numpy arrays; in ``"adabn"`` each domain's rows
        come from a copy of the body whose BatchNorm statistics were re-estimated on that domain's images
        (unlabelled; the test images are among them, as in AdaBN).
    """
    import copy

    domains = np.asarray(domains)
    body = _Body(copy.deepcopy(model.features).eval(), size)
    out = {"imagenet": extract_features(body, _loader(images), cache_name=f"{cache_name}_imagenet",
                                        fingerprint=f"size={size}")[0].numpy()}
    adabn = np.zeros_like(out["imagenet"])
    for domain in np.unique(domains):
        rows = np.flatnonzero(domains == domain)
        adapted = _Body(copy.deepcopy(model.features), size)
        recalibrate_batchnorm(adapted, _loader(images[rows]), torch.device("cpu"))
        adabn[rows] = extract_features(adapted, _loader(images[rows]), cache_name=f"{cache_name}_adabn_{domain}",
                                       fingerprint=f"size={size} adabn")[0].numpy()
    out["adabn"] = adabn
    return out


def pixel_features(images: np.ndarray, side: int = 24) -> np.ndarray:
    """The no-transfer baseline's input: each image shrunk to ``side x side`` RGB, flattened, in [0, 1]."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    return torch.nn.functional.interpolate(batch, size=(side, side), mode="area").flatten(1).numpy()


def coral(source: np.ndarray, target: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """Closed-form CORAL (Sun, Feng and Saenko, 2016): re-colour source features with the target covariance.

    Both inputs should be standardised already. The source is whitened with ``(C_s + shrink I)^-1/2``
    and coloured with ``(C_t + shrink I)^1/2``; ``shrink`` keeps the covariances of few, wide rows invertible.

    Returns:
        The aligned source features, same shape as ``source``.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1] or min(len(source), len(target)) < 2:
        raise ValueError(f"need N x D and M x D features with N, M >= 2, got {source.shape} and {target.shape}")
    if not shrink > 0:
        raise ValueError(f"shrink must be positive, got {shrink}")

    def apply_power(rows: np.ndarray, features: np.ndarray, exponent: float) -> np.ndarray:
        # rows @ (C + shrink I)^exponent through the thin SVD of the centred features: with N << D
        # the covariance has rank < N, so this costs N x D work instead of a D x D eigendecomposition.
        centred = features - features.mean(axis=0)
        _, singular, vectors_t = np.linalg.svd(centred, full_matrices=False)
        eigen = singular ** 2 / (len(features) - 1)
        gains = (eigen + shrink) ** exponent - shrink ** exponent
        return shrink ** exponent * rows + ((rows @ vectors_t.T) * gains) @ vectors_t
    return apply_power(apply_power(source, source, -0.5), target, 0.5)


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall: 0.5 for a two-class guess of one class, whatever the class sizes."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or labels.size == 0:
        raise ValueError(f"need equally long, non-empty predictions and labels, got {predicted.shape}, {labels.shape}")
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


@dataclass
class Split:
    """One seed's split of the target domain's rows: a few labelled, a validation and a test part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_domain(labels: np.ndarray, rows: np.ndarray, shots: int, n_val: int, seed: int) -> Split:
    """Per class: ``shots`` labelled rows, ``n_val`` validation rows, the rest test (at least one).

    Raises:
        ValueError: A class has fewer than ``shots + n_val + 1`` rows.
    """
    labels, rows = np.asarray(labels), np.asarray(rows)
    if shots < 1 or n_val < 1:
        raise ValueError(f"shots and n_val must be at least 1, got {shots} and {n_val}")
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels[rows]):
        members = rng.permutation(rows[labels[rows] == c])
        if len(members) < shots + n_val + 1:
            raise ValueError(f"class {c!r} has {len(members)} images; shots={shots} + n_val={n_val} + 1 test needed")
        for part, chunk in zip(parts, (members[:shots], members[shots:shots + n_val], members[shots + n_val:])):
            part.extend(chunk.tolist())
    return Split(*(np.sort(np.array(part)) for part in parts))


@dataclass
class StampPredictor:
    """What an arm returns: a probe and how to turn rows into its input. ``score(rows)`` is balanced accuracy."""

    probe: object
    transform: Callable[[np.ndarray], np.ndarray]
    labels: np.ndarray
    seed: int

    def score(self, rows: np.ndarray) -> float:
        return balanced_accuracy(self.probe.predict(self.transform(rows)), self.labels[rows])


@dataclass
class DomainTask:
    """Inputs of one direction (source domain -> target domain), cached features of every stamp.

    Args:
        features: ``{"pixels", "imagenet", "adabn"}`` -> ``N x D`` arrays over all stamps.
        labels: ``N`` integer labels.
        domains: ``N`` domain names.
        target: The domain scored (``"photo"`` or ``"cartoon"``); the other is the source.
        shots: Labelled target images per class.
        n_val: Validation images per class (target domain).
    """

    features: dict
    labels: np.ndarray
    domains: np.ndarray
    target: str
    shots: int = 3
    n_val: int = 2

    def __post_init__(self):
        if self.target not in DOMAINS:
            raise ValueError(f"target must be one of {DOMAINS}, got {self.target!r}")
        missing = {"pixels", "imagenet", "adabn"} - set(self.features)
        if missing:
            raise ValueError(f"features lacks {sorted(missing)}")
        self.labels, self.domains = np.asarray(self.labels), np.asarray(self.domains)

    @property
    def source_rows(self) -> np.ndarray:
        return np.flatnonzero(self.domains != self.target)

    def split(self, seed: int) -> Split:
        return split_domain(self.labels, np.flatnonzero(self.domains == self.target), self.shots, self.n_val, seed)

    def score_test(self, outcome: Outcome) -> float:
        """The protocol's scorer: balanced accuracy on this seed's target test split."""
        return outcome.predictor.score(self.split(outcome.predictor.seed).test)


def _arm(task: DomainTask, kind: str, train: str, align: str, cs: Sequence[float]) -> Callable[[Trial], Outcome]:
    """One arm: features ``kind`` trained on ``train`` rows, aligned by ``align`` (``none``/``coral``/``adabn``).

    ``train`` is ``target`` (the seed's few labelled target images), ``few`` (as many source images per
    class, drawn with the seed: the gap at equal labels), ``source`` (every source image) or ``both``.
    """
    def arm(trial: Trial) -> Outcome:
        split = task.split(trial.seed)
        feats = task.features["adabn" if align == "adabn" else kind]
        source, target_pool = task.source_rows, np.concatenate([split.train, split.val, split.test])
        few = source[balanced_subset(task.labels[source], task.shots, seed=trial.seed)]
        rows = {"target": split.train, "source": source, "few": few, "both": np.concatenate([source, split.train])}[train]
        ref = feats[rows] if train in ("target", "few") else feats[source]
        # CORAL aligns first and second moments: target rows are standardised with the target's own
        # statistics (all its images, unlabelled). Every other arm standardises with its training rows.
        t_ref = feats[target_pool] if align == "coral" else ref
        x_train = standardize(feats[rows], ref)
        if align == "coral":
            x_train = coral(x_train, standardize(feats[target_pool], t_ref))
        transform = lambda r: standardize(feats[r], t_ref)  # noqa: E731

        def run(c: float) -> Outcome:
            probe = fit_linear_probe(x_train, task.labels[rows], C=c)
            return Outcome(probe, val=balanced_accuracy(probe.predict(transform(split.val)), task.labels[split.val]),
                           steps=0, trainable_params=int(probe.coef_.size + probe.intercept_.size))
        chosen = best_on_validation(list(cs), run, name="C")
        chosen.predictor = StampPredictor(chosen.predictor, transform, task.labels, trial.seed)
        return chosen
    return arm


def domain_arms(task: DomainTask, cs: Sequence[float] = (0.01, 0.1, 1.0)) -> dict[str, Callable[[Trial], Outcome]]:
    """The arms of :data:`ARMS` for one direction; every arm picks ``C`` on the target validation split.

    Args:
        task: The direction and its cached features.
        cs: Inverse L2 strengths of the logistic-regression head to choose from.

    Returns:
        ``{arm name: arm(trial) -> Outcome}`` for :func:`tlutils.core.compare.compare`; score with
        ``task.score_test``.
    """
    specs = {"pixels: target labels": ("pixels", "target", "none"),
             "pixels: source only": ("pixels", "source", "none"),
             "CNN: target labels": ("imagenet", "target", "none"),
             "CNN: source, as few labels": ("imagenet", "few", "none"),
             "CNN: source only": ("imagenet", "source", "none"),
             "CNN: source + CORAL": ("imagenet", "source", "coral"),
             "CNN: source + AdaBN": ("imagenet", "source", "adabn"),
             "CNN: source + target labels": ("imagenet", "both", "none")}
    return {name: _arm(task, *specs[name], cs) for name in ARMS}


def plot_domains(results: dict, title: str = ""):
    """Grouped bars: balanced test accuracy (mean +- SE) per arm, one group per target domain.

    Args:
        results: ``{"cartoon -> photo": Comparison, ...}``.

    Returns:
        The matplotlib figure.
    """
    import textwrap

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    width = 0.8 / len(results)
    for i, (direction, result) in enumerate(results.items()):
        summary = result.summary()
        x = np.arange(len(summary)) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, summary["test_mean"], width, yerr=summary["test_se"].fillna(0), capsize=3, label=direction)
    ax.set_xticks(np.arange(len(ARMS)), [textwrap.fill(arm, 13) for arm in ARMS], fontsize=8)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("balanced test accuracy\n(mean ± SE over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", ncols=3)
    fig.tight_layout()
    return fig
