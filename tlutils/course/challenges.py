"""The experiments of notebook 12: one pre-trained MobileNetV2 split at a block, its lower part cached.

The lower blocks (``features[:cut]``) are frozen and run once per image (:func:`block_features`,
cached); every arm then trains the last block and a head on the cached activations
(:func:`top_block_model`), which makes 3 seeds x many arms affordable on a CPU. The ImageNet
head stays attached as the source head, so forgetting can be measured on real photo crops
(:func:`photo_crops`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.compare import Outcome, Trial
from tlutils.core.datasets import images_to_tensor
from tlutils.core.features import extract_features
from tlutils.core.models import load_mobilenet_v2
from tlutils.core.runtime import seeded
from tlutils.core.surgery import trainable_parameter_count
from tlutils.core.train import evaluate, fit
from tlutils.topics.domain import BodyHead
from tlutils.topics.regularizers import TwoHeadNet


class PreprocessedBody(nn.Module):
    """``uint8`` images (grey ``N x H x W`` or ``N x H x W x 3``) -> ImageNet-normalised, resized -> ``lower``."""

    def __init__(self, lower: nn.Module, size: int, flip: bool = False):
        super().__init__()
        self.lower, self.size, self.flip = lower, size, flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images_to_tensor(images.numpy(), size=self.size)
        return self.lower(batch.flip(-1) if self.flip else batch)


def mobilenet_parts(cut: int = 18) -> tuple[nn.Module, nn.Module, nn.Module]:
    """ImageNet MobileNetV2 split into ``(lower, top, imagenet_head)``.

    ``lower`` is ``features[:cut]`` (frozen, eval mode); ``top`` is ``features[cut:]`` followed by global
    average pooling and flattening (``N x 1280``); ``imagenet_head`` is the original 1000-class classifier.
    """
    model = load_mobilenet_v2()
    if not 1 <= cut < len(model.features):
        raise ValueError(f"cut must be between 1 and {len(model.features) - 1}, got {cut}")
    lower = nn.Sequential(*model.features[:cut]).eval().requires_grad_(False)
    top = nn.Sequential(*model.features[cut:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return lower, top, model.classifier


def block_features(lower: nn.Module, images: np.ndarray, size: int, cache_name: str, fingerprint: str,
                   flip: bool = False, batch_size: int = 128) -> torch.Tensor:
    """Activations of the frozen ``lower`` blocks for ``uint8`` images, cached on disk.

    Returns:
        ``N x C x h x w`` float tensor (``320 x 1 x 1`` per image at 32 px with ``cut=18``).
    """
    images = torch.from_numpy(np.ascontiguousarray(images))
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=batch_size)
    flat, _ = extract_features(PreprocessedBody(lower, size, flip), loader, cache_name=cache_name,
                               fingerprint=f"{fingerprint} size={size} flip={flip} n={len(images)}")
    side = {32: 1, 64: 2, 96: 3, 128: 4}.get(size) or math.ceil(size / 32)
    return flat.view(len(images), -1, side, side)


def photo_crops(photos: dict[str, np.ndarray], per_photo: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """Random square crops (30-70 % of the shorter side) of real photos, resized to ``size``: ``N x size x size x 3``."""
    from PIL import Image

    rng, crops = np.random.default_rng(seed), []
    for image in photos.values():
        height, width = image.shape[:2]
        for _ in range(per_photo):
            side = int(rng.uniform(0.3, 0.7) * min(height, width))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
            crops.append(np.asarray(crop, dtype=np.uint8))
    return np.stack(crops)


def top_block_model(top: nn.Module, num_classes: int, seed: int, domain_head: bool = False) -> BodyHead:
    """A fresh copy of the pre-trained ``top`` as the body, a new seeded head (and domain head)."""
    import copy

    with seeded(seed):
        head = nn.Linear(1280, num_classes)
        domain = nn.Sequential(nn.Linear(1280, 64), nn.ReLU(), nn.Linear(64, 2)) if domain_head else None
    return BodyHead(copy.deepcopy(top).requires_grad_(True), head, domain)


def two_head_model(top: nn.Module, imagenet_head: nn.Module, num_classes: int, seed: int,
                   keep_bn_statistics: bool = True) -> TwoHeadNet:
    """The pre-trained ``top`` shared by the frozen ImageNet head (``"source"``) and a new seeded head (``"target"``).

    With ``keep_bn_statistics`` the body's BatchNorm layers keep their ImageNet running statistics while
    training (momentum 0: batches are still normalised with their own statistics, the stored ones never
    move); otherwise the target data overwrite them, and the source head sees differently normalised features.
    """
    import copy

    with seeded(seed):
        head = nn.Linear(1280, num_classes)
    source = copy.deepcopy(imagenet_head).requires_grad_(False)
    shared = copy.deepcopy(top).requires_grad_(True)
    for module in shared.modules():
        if keep_bn_statistics and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    return TwoHeadNet(shared, source, head)


def accuracy_of(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``model`` on cached features (eval mode, one pass)."""
    loader = DataLoader(TensorDataset(features, labels), batch_size=512)
    return evaluate(model, loader, torch.device("cpu"))["accuracy"]


def train_steps(trial: Trial, model: nn.Module, dataset, *, lr: float, batch_size: int = 32, step=None,
                weight_decay: float = 0.0, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                early_stopping: bool = False, steps: int | None = None, loader=None):
    """Train ``model`` for the trial's step budget (or ``steps``); returns its :class:`History`.

    With ``early_stopping`` the weights of the epoch with the lowest loss on ``val`` are kept;
    otherwise the last weights are.
    """
    loader = loader if loader is not None else trial.loader(dataset, batch_size)
    steps = steps or trial.budget.steps
    val_loader = DataLoader(TensorDataset(*val), batch_size=512) if val is not None else None
    return fit(model, loader, val_loader, epochs=math.ceil(steps / len(loader)), max_steps=steps, lr=lr,
               weight_decay=weight_decay, step=step, monitor="val_loss" if early_stopping else None,
               device=torch.device("cpu"), progress=False)


def outcome(model: nn.Module, history, val: tuple[torch.Tensor, torch.Tensor], choice: dict | None = None) -> Outcome:
    """The :class:`~tlutils.core.compare.Outcome` of a trained arm, scored on the validation split."""
    return Outcome(model, val=accuracy_of(model, *val), steps=history.steps,
                   trainable_params=trainable_parameter_count(model), choice=choice or {})


Split = tuple[torch.Tensor, torch.Tensor]


def _subset(split: Split, per_class: int | None, seed: int) -> Split:
    from tlutils.core.datasets import balanced_subset

    if per_class is None:
        return split
    index = torch.as_tensor(balanced_subset(split[1].numpy(), per_class, seed=seed))
    return split[0][index], split[1][index]


def shift_arms(top: nn.Module, source: Split, target: Split, target_val: Split, label_counts=(2, 10),
               batch_size: int = 32, lr: float = 1e-3, dann_strength: float = 0.3, coral_weight: float = 1.0,
               in_domain: dict | None = None, source_val: Split | None = None) -> dict:
    """The arms of the domain-shift comparison: no target labels, a few, all (the oracle).

    ``target`` holds the target training images; only the ``"source + k/class"``, ``"target k/class"`` and
    oracle arms read its labels. With ``in_domain`` (a dict) and ``source_val`` the source-only arm records
    its in-domain accuracy per seed.
    """
    from tlutils.topics.adaptation import recalibrate_batchnorm
    from tlutils.topics.domain import coral_step, dann_step, labelled_target_step
    from tlutils.topics.regularizers import JointBatches

    def source_only(trial: Trial, adabn: bool = False) -> Outcome:
        model = top_block_model(top, 10, trial.seed)
        history = train_steps(trial, model, TensorDataset(*source), lr=lr, batch_size=batch_size)
        if in_domain is not None and not adabn:
            in_domain[trial.seed] = accuracy_of(model, *source_val)
        if adabn:  # re-estimate BatchNorm statistics on the unlabelled target images; no weight changes
            recalibrate_batchnorm(model, DataLoader(TensorDataset(*target), batch_size=128), torch.device("cpu"))
        return outcome(model, history, target_val)

    def joint(trial: Trial, step, other: Split, domain_head: bool = False) -> Outcome:
        model = top_block_model(top, 10, trial.seed, domain_head=domain_head)
        batches = JointBatches(trial.loader(TensorDataset(*source), batch_size),
                               trial.loader(TensorDataset(*other), min(batch_size, len(other[1]))))
        return outcome(model, train_steps(trial, model, None, lr=lr, step=step, loader=batches), target_val)

    def target_only(trial: Trial, per_class: int | None) -> Outcome:
        model, labelled = top_block_model(top, 10, trial.seed), _subset(target, per_class, trial.seed)
        history = train_steps(trial, model, TensorDataset(*labelled), lr=lr, batch_size=min(batch_size, len(labelled[1])))
        return outcome(model, history, target_val)

    arms = {"source only": source_only, "AdaBN": lambda t: source_only(t, adabn=True),
            "CORAL": lambda t: joint(t, coral_step(coral_weight), target),
            "DANN": lambda t: joint(t, dann_step(dann_strength), target, domain_head=True)}
    for k in label_counts:
        arms[f"source + {k}/class"] = lambda t, k=k: joint(t, labelled_target_step(), _subset(target, k, t.seed))
        arms[f"target {k}/class"] = lambda t, k=k: target_only(t, k)
    arms["oracle (all target labels)"] = lambda t: target_only(t, None)
    return arms


def overfitting_arms(top: nn.Module, views: torch.Tensor, labels: torch.Tensor, val: Split, per_class: int,
                     lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.1, l2_sp: float = 0.1,
                     mixup: float = 0.4, curves: dict | None = None) -> dict:
    """The arms of the overfitting comparison on ``per_class`` labels per class (last weights unless said).

    ``views[0]`` are the cached features of the training images, ``views[1:]`` of augmented copies.
    With ``curves`` (a dict) the plain arm records its History per seed (validation every epoch).
    """
    from tlutils.topics.forgetting import penalty_step
    from tlutils.topics.overfitting import FeatureAugmentation, mixup_step
    from tlutils.topics.regularizers import l2_sp_penalty

    def run(trial: Trial, *, rate=lr, step=None, decay=0.0, early=False, augment=False, frozen=False,
            alpha=0.0, record=False) -> Outcome:
        index = torch.as_tensor(_subset((torch.arange(len(labels)), labels), per_class, trial.seed)[0])
        model = top_block_model(top, 10, trial.seed)
        model.body.requires_grad_(not frozen)
        if alpha:
            start = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("body.")}
            step = penalty_step(lambda: l2_sp_penalty(model, start, alpha=alpha, beta=0.0, head="head"))
        data = (FeatureAugmentation(views[:, index], labels[index]) if augment
                else TensorDataset(views[0, index], labels[index]))
        history = train_steps(trial, model, data, lr=rate, step=step, weight_decay=decay, batch_size=batch_size,
                              val=val if (early or record) else None, early_stopping=early)
        if record and curves is not None:
            curves[trial.seed] = history
        return outcome(model, history, val)

    return {"plain (last weights)": lambda t: run(t, record=True),
            "early stopping": lambda t: run(t, early=True),
            "flip augmentation": lambda t: run(t, augment=True),
            f"weight decay {weight_decay:g}": lambda t: run(t, decay=weight_decay),
            "head only (body frozen)": lambda t: run(t, frozen=True, rate=10 * lr),
            "lr / 10": lambda t: run(t, rate=lr / 10),
            f"L2-SP alpha={l2_sp:g}": lambda t: run(t, alpha=l2_sp),
            "mixup": lambda t: run(t, step=mixup_step(mixup))}


def source_logits(model: TwoHeadNet, inputs: torch.Tensor) -> torch.Tensor:
    """The ImageNet head's logits of a :class:`TwoHeadNet` on cached inputs (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(chunk, "source") for chunk in inputs.split(256)])


def forgetting_arms(top: nn.Module, imagenet_head: nn.Module, train: Split, val: Split, fisher_inputs: torch.Tensor,
                    held_out: torch.Tensor, retained: dict, lr: float = 1e-3, batch_size: int = 32,
                    l2_sp: float = 1.0, ewc: float = 100.0, lwf: float = 1.0, adapter_size: int = 16) -> dict:
    """The arms of the forgetting comparison; each records ``retained[(arm, seed)]``, the top-1 agreement of
    its ImageNet head with the original model's on ``held_out`` photo crops (never used for training).

    The Fisher of EWC is computed once, from the original model's own predictions on ``fisher_inputs``.
    """
    from tlutils.topics.efficient import BottleneckAdapter
    from tlutils.topics.forgetting import ewc_penalty, fisher_diagonal, lwf_step, penalty_step, top1_agreement
    from tlutils.topics.regularizers import l2_sp_penalty

    original = two_head_model(top, imagenet_head, 10, seed=0)
    reference, start = source_logits(original, held_out), {n: p.detach().clone() for n, p in original.named_parameters()}
    shared = {n: p for n, p in original.named_parameters() if n.startswith("shared.")}
    fisher = fisher_diagonal(lambda x: original(x, "source"),
                             DataLoader(TensorDataset(fisher_inputs, torch.zeros(len(fisher_inputs))), batch_size=64),
                             shared, torch.device("cpu"))
    old_logits = source_logits(original, train[0])  # LwF: what the source head said about the target images
    body = {n: start[n] for n in shared}

    def run(trial: Trial, name: str, step=None, frozen=False, adapter=False, data=None, keep_bn=True) -> Outcome:
        model = two_head_model(top, imagenet_head, 10, trial.seed, keep_bn_statistics=keep_bn)
        model.shared.requires_grad_(not frozen)
        if adapter:  # the adapter sits on the target path only: the source head still reads the frozen body
            with seeded(trial.seed):
                model.heads["target"] = nn.Sequential(BottleneckAdapter(1280, adapter_size), model.heads["target"])
        step = step(model) if step is not None else None
        history = train_steps(trial, model, data or TensorDataset(*train), lr=lr, step=step, batch_size=batch_size)
        retained[(name, trial.seed)] = top1_agreement(source_logits(model, held_out), reference)
        return outcome(model, history, val)

    specs = {"fine-tune, BN statistics updated": {"keep_bn": False}, "fine-tune (no protection)": {},
             "L2-SP": {"step": lambda m: penalty_step(lambda: l2_sp_penalty(m, body, alpha=l2_sp, beta=0.0, head="heads"))},
             "EWC": {"step": lambda m: penalty_step(lambda: ewc_penalty(m, start, fisher, strength=ewc))},
             "LwF": {"step": lambda m: lwf_step(lwf), "data": TensorDataset(train[0], train[1], old_logits)},
             "head only (body frozen)": {"frozen": True},
             "adapter (target path only)": {"frozen": True, "adapter": True}}
    return {name: (lambda t, name=name, spec=spec: run(t, name, **spec)) for name, spec in specs.items()}


def plot_label_curve(summary, label_counts, total_labels: int, title: str = ""):
    """Target test accuracy (mean +- SE) against target labels per class; unsupervised arms as lines at 0."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for prefix, marker in (("source + ", "o-"), ("target ", "s--")):
        rows = summary.loc[[f"{prefix}{k}/class" for k in label_counts]]
        ax.errorbar(list(label_counts), rows["test_mean"], yerr=rows["test_se"], fmt=marker, capsize=3,
                    label=f"{prefix.strip()} k labelled target/class" if prefix.startswith("source") else "target only")
    for arm, colour in zip(("source only", "AdaBN", "CORAL", "DANN"), ("grey", "tab:green", "tab:purple", "tab:red")):
        ax.errorbar([0], [summary.loc[arm, "test_mean"]], yerr=[summary.loc[arm, "test_se"]], fmt="D", color=colour,
                    capsize=3, label=f"{arm} (no target labels)")
    oracle = summary.loc["oracle (all target labels)"]
    ax.axhline(oracle["test_mean"], color="black", linestyle=":", label=f"oracle ({total_labels} target labels)")
    ax.set(xlabel="labelled target examples per class", ylabel="target test accuracy", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_tradeoff(table, retained: dict, title: str = ""):
    """Target test accuracy against retained source knowledge: one point per arm and seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for index, (arm, rows) in enumerate(table.groupby("arm", sort=False)):
        x = [retained[(arm, seed)] for seed in rows["seed"]]
        ax.scatter(x, rows["test"], label=arm, color=plt.cm.tab10(index), alpha=0.8)
    ax.set(xlabel="top-1 agreement with the original ImageNet model (held-out photo crops)",
           ylabel="target test accuracy", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def retained_comparison(retained: dict, budget):
    """The retained-knowledge scores as a :class:`~tlutils.core.compare.Comparison` (val = test = agreement)."""
    import pandas as pd

    from tlutils.core.compare import Comparison

    rows = [{"arm": arm, "seed": seed, "val": value, "test": value, "trainable_params": 0, "seconds": 0.0,
             "steps": 0, "choice": {}} for (arm, seed), value in retained.items()]
    return Comparison(pd.DataFrame(rows), metric="agreement", budget=budget)
