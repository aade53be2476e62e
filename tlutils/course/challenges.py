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


# ---------------------------------------------------------------------------------------------------------
# Notebook 12b: what each fine-tuning method costs (a MiniLM text classifier), and a bias measured by group.
# ---------------------------------------------------------------------------------------------------------

#: The fine-tuning methods of notebook 12b, cheapest last.
COST_METHODS = ("full fine-tuning", "last block", "BitFit", "LoRA", "adapters", "head only")


def cost_model(encoder: nn.Module, method: str, num_classes: int, seed: int, lora_rank: int = 8,
               bottleneck: int = 16) -> nn.Module:
    """A fresh :class:`~tlutils.topics.text.EncoderClassifier` on a copy of ``encoder``, set up for ``method``.

    ``"full fine-tuning"`` trains everything; ``"last block"`` the last transformer layer and the head;
    ``"BitFit"`` the biases and the head; ``"LoRA"`` rank-``lora_rank`` updates of the attention's query and
    value projections (peft) and the head; ``"adapters"`` a bottleneck adapter per layer and the head;
    ``"head only"`` the head. The new head (and LoRA's random ``A``) are drawn with ``seed``.
    """
    from tlutils.core.runtime import check_one_of
    from tlutils.topics.efficient import add_bert_adapters, bitfit
    from tlutils.topics.text import EncoderClassifier

    check_one_of(method, COST_METHODS, "method")
    import copy

    body = copy.deepcopy(encoder)
    if getattr(body, "pooler", None) is not None:
        body.pooler = None  # unused by the mean-pooling head: it would count as trainable but never get a gradient
    with seeded(seed):
        if method == "LoRA":
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                target_modules=["query", "value"])
            body = inject_adapter_in_model(config, body)
        elif method == "adapters":
            body = add_bert_adapters(body, bottleneck)
        model = EncoderClassifier(body, num_classes)
    if method == "full fine-tuning":
        model.requires_grad_(True)
    elif method == "BitFit":
        bitfit(model, keep=("classifier",))
    else:
        body.requires_grad_(False)
        if method == "last block":
            body.encoder.layer[-1].requires_grad_(True)
        for name, param in body.named_parameters():
            adapter = method == "adapters" and "output.dense.1." in name  # Sequential(dense, adapter)
            if adapter or (method == "LoRA" and "lora_" in name):
                param.requires_grad = True
        model.classifier.requires_grad_(True)
    return model


def cost_arms(encoder: nn.Module, train_set, val_loader, lr_grid: dict, batch_size: int, steps: int,
              chosen: dict, grid_scores: dict, kept: dict, keep: tuple[str, ...] = ("full fine-tuning",)) -> dict:
    """One arm per method of :data:`COST_METHODS`: train for ``steps`` steps, learning rate chosen on validation.

    At the first seed an arm meets, it tries every rate of ``lr_grid[method]`` (all counted in its steps)
    and records the best one in ``chosen``; later seeds reuse that rate, so the search is paid once.

    Args:
        encoder: The pre-trained encoder (copied per run, never changed).
        train_set: A :class:`~tlutils.core.datasets.TextDataset` of training texts.
        val_loader: Validation batches; accuracy on them picks the rate.
        lr_grid: Method -> the learning rates to try.
        batch_size, steps: Examples per step and optimizer steps per run.
        chosen: Filled with method -> chosen rate.
        grid_scores: Filled with ``(method, seed, lr) -> validation accuracy``.
        kept: Filled with ``(method, seed) -> trained model`` for the methods named in ``keep``.

    Returns:
        ``{method: arm}`` for :func:`~tlutils.core.compare.compare`.
    """
    from tlutils.core.compare import best_on_validation

    def make(method: str):
        def arm(trial: Trial) -> Outcome:
            loader = trial.loader(train_set, batch_size, collate_fn=train_set.collate)

            def run(lr: float) -> Outcome:
                model = cost_model(encoder, method, 2, trial.seed)
                history = fit(model, loader, epochs=math.ceil(steps / len(loader)), max_steps=steps, lr=lr,
                              device=torch.device("cpu"), progress=False)
                val = evaluate(model, val_loader, torch.device("cpu"))["accuracy"]
                grid_scores[(method, trial.seed, lr)] = val
                return Outcome(model, val=val, steps=history.steps, trainable_params=trainable_parameter_count(model))

            best = best_on_validation([chosen[method]] if method in chosen else lr_grid[method], run, name="lr")
            chosen.setdefault(method, best.choice["lr"])
            if method in keep:
                kept[(method, trial.seed)] = best.predictor
            return best

        return arm

    return {method: make(method) for method in COST_METHODS}


def cost_table(encoder: nn.Module, batch: dict, folder, seed: int = 0, lr: float = 1e-4, repeats: int = 3):
    """Measure, for every method, what one training step and one saved fine-tune cost.

    Args:
        encoder: The pre-trained encoder.
        batch: One training batch (dict with ``labels``), the same for every method.
        folder: Where the safetensors checkpoints of the trainable parts are written.
        seed: Seeds the new heads.
        lr: AdamW rate of the timed steps (it does not change the cost).
        repeats: Timed steps per method (the median is kept).

    Returns:
        A DataFrame indexed by method: trainable parameters, optimizer-state, gradient and saved-activation
        megabytes, their total with the weights, seconds per step, GFLOPs per step (counted, so independent of
        the machine's load; the counter skips the CPU attention kernel), checkpoint megabytes.
    """
    from pathlib import Path

    import pandas as pd

    from tlutils.topics.efficient import checkpoint_bytes, optimizer_state_bytes, step_seconds, training_memory_bytes
    from tlutils.topics.strategies import training_step_flops

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets, rows, mb = batch["labels"], {}, 1 / 2 ** 20
    for method in COST_METHODS:
        model = cost_model(encoder, method, 2, seed)
        memory = training_memory_bytes(model, inputs, targets)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        nn.functional.cross_entropy(model(**inputs), targets).backward()
        optimizer.step()
        rows[method] = {
            "trainable_params": trainable_parameter_count(model),
            "optimizer_MB": optimizer_state_bytes(optimizer) * mb,
            "gradients_MB": memory["gradients"] * mb,
            "activations_MB": memory["activations"] * mb,
            "training_MB": memory["total"] * mb,
            "seconds_per_step": step_seconds(model, inputs, targets, lr=lr, repeats=repeats),
            "GFLOP_per_step": training_step_flops(model, inputs, targets) / 1e9,
            "checkpoint_MB": checkpoint_bytes(model, Path(folder) / f"{method.replace(' ', '_')}.safetensors") * mb,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def states_before_last_block(encoder: nn.Module, mels: torch.Tensor, labels: torch.Tensor, cache_name: str,
                             fingerprint: str) -> torch.Tensor:
    """The frozen Whisper encoder's hidden states entering its last block, cached: ``N x positions x d``."""
    from tlutils.topics.speech import whisper_hidden_states

    class BelowLastBlock(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner.eval()

        @torch.no_grad()
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return whisper_hidden_states(self.inner, batch)[-2].flatten(1)

    loader = DataLoader(TensorDataset(mels, labels), batch_size=64)
    flat, _ = extract_features(BelowLastBlock(encoder), loader, cache_name=cache_name, fingerprint=fingerprint)
    return flat.view(len(mels), encoder.embed_positions.num_embeddings, -1)


class LastBlockClassifier(nn.Module):
    """A Whisper encoder's last block and final layer norm on cached states, mean pooling, a new linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, seed: int, train_block: bool = True):
        super().__init__()
        import copy

        self.block = copy.deepcopy(encoder.layers[-1]).requires_grad_(train_block)
        self.norm = copy.deepcopy(encoder.layer_norm).requires_grad_(train_block)
        with seeded(seed):
            self.head = nn.Linear(encoder.config.d_model, num_classes)

    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        """``N x positions x d`` states -> ``N x d``: the encoder's output, mean-pooled over time."""
        hidden = self.block(states, None)
        return self.norm(hidden[0] if isinstance(hidden, tuple) else hidden).mean(dim=1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(states))


def group_predictions(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class predictions of ``model`` (eval mode, no gradients) for a tensor of inputs."""
    model.eval()
    with torch.no_grad():
        batches = [model(inputs[i:i + batch_size]).argmax(-1) for i in range(0, len(inputs), batch_size)]
    return torch.cat(batches).numpy()


def group_gap_arms(encoder: nn.Module, train: Split, pooled_train: torch.Tensor, val: Split, val_groups, steps: int,
                   batch_size: int, lr_block: float, lr_head: float, models: dict) -> dict:
    """Two arms on the same digit data: a head on the frozen pre-trained encoder, and its last block fine-tuned.

    Both are scored (on validation here, on test by the protocol) by their worst group's accuracy; the
    trained models land in ``models[(arm, seed)]`` so the notebook can measure every group's accuracy.
    """
    from tlutils.topics.bias import worst_group_accuracy

    def run(trial: Trial, fine_tune: bool) -> Outcome:
        model = LastBlockClassifier(encoder, 10, trial.seed, train_block=fine_tune)
        if fine_tune:
            history = train_steps(trial, model, TensorDataset(*train), lr=lr_block, batch_size=batch_size,
                                  steps=steps)
        else:  # the frozen block's output is computed once; only the head trains
            history = train_steps(trial, model.head, TensorDataset(pooled_train, train[1]), lr=lr_head,
                                  batch_size=batch_size, steps=steps)
        name = "fine-tuned last block" if fine_tune else "head on frozen encoder"
        models[(name, trial.seed)] = model
        val_score = worst_group_accuracy(group_predictions(model, val[0]), val[1].numpy(), val_groups)
        return Outcome(model, val=val_score, steps=history.steps, trainable_params=trainable_parameter_count(model))

    return {"head on frozen encoder": lambda trial: run(trial, False),
            "fine-tuned last block": lambda trial: run(trial, True)}


def imbalanced_pool(groups, minority, keep_per_class: int, labels, seed: int) -> np.ndarray:
    """Indices of a training pool in which group ``minority`` keeps only ``keep_per_class`` examples per class."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(groups != minority)]
    for label in np.unique(labels):
        members = np.flatnonzero((groups == minority) & (labels == label))
        keep.append(rng.choice(members, size=min(keep_per_class, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def mitigation_arms(pooled: torch.Tensor, labels: torch.Tensor, groups, pools: dict, val: Split, val_groups,
                    steps: int, batch_size: int, lr: float) -> dict:
    """Heads trained on a group-imbalanced pool, without and with group-balanced sampling.

    Args:
        pooled: Frozen features of every training candidate; ``labels`` and ``groups`` alongside.
        pools: Seed -> indices of that seed's imbalanced pool (:func:`imbalanced_pool`).
        val, val_groups: Validation features and labels, and their groups (worst-group accuracy picks nothing
            here but is reported as the validation score).

    Returns:
        ``{"no mitigation": arm, "group-balanced sampling": arm}``.
    """
    from torch.utils.data import WeightedRandomSampler

    from tlutils.topics.bias import group_balanced_weights, worst_group_accuracy

    groups = np.asarray(groups)

    def run(trial: Trial, balanced: bool) -> Outcome:
        index = pools[trial.seed]
        data = TensorDataset(pooled[index], labels[index])
        with seeded(trial.seed):
            head = nn.Linear(pooled.shape[1], 10)
        loader = None
        if balanced:
            weights = torch.as_tensor(group_balanced_weights(groups[index]), dtype=torch.double)
            sampler = WeightedRandomSampler(weights, num_samples=len(index), replacement=True,
                                            generator=torch.Generator().manual_seed(trial.seed))
            loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
        history = train_steps(trial, head, data, lr=lr, batch_size=batch_size, steps=steps, loader=loader)
        val_score = worst_group_accuracy(group_predictions(head, val[0]), val[1].numpy(), val_groups)
        return Outcome(head, val=val_score, steps=history.steps, trainable_params=trainable_parameter_count(head))

    return {"no mitigation": lambda trial: run(trial, False), "group-balanced sampling": lambda trial: run(trial, True)}


# ---------------------------------------------------------------------------------------------------------
# Notebook 12, section 4b: a language model forgets general text; two tasks learnt in sequence.
# ---------------------------------------------------------------------------------------------------------

def decoder_windows(lower: nn.Module, ids: torch.Tensor, cache_name: str, fingerprint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual streams N x T x d, ids N x T)`` of token windows, the frozen lower decoder cached on disk."""
    loader = DataLoader(TensorDataset(ids, ids[:, 0]), batch_size=16)
    flat, _ = extract_features(lower, loader, cache_name=cache_name, fingerprint=f"{fingerprint} block={lower.block}",
                               progress=False)
    return flat.view(ids.shape[0], ids.shape[1], -1), ids


def lm_forgetting_arms(model: nn.Module, block: int, train: Split, val: Split, general_test: Split, retained: dict,
                       lrs: dict, batch_size: int = 4, lora_rank: int = 8, chosen: dict | None = None) -> dict:
    """The arms of the language-model forgetting comparison, on cached residual streams (:func:`decoder_windows`).

    ``"no fine-tuning"`` is the original model; ``"last blocks (full)"`` trains every weight of the decoder layers
    from ``block`` on; ``"LoRA on the last blocks"`` trains LoRA adapters (rank ``lora_rank``) on the same layers.
    Each trained arm tries the rates ``lrs[arm]`` on the first seed, keeps the one with the best narrow-text
    validation log-likelihood (stored in ``chosen``) and reuses it on later seeds. Every arm records
    ``retained[(arm, seed)]``, the log-likelihood per token of ``general_test`` (never used for a choice).
    """
    from tlutils.core.compare import best_on_validation
    from tlutils.topics.forgetting import UpperDecoder, causal_window_step, lora_upper, window_log_likelihood

    chosen = {} if chosen is None else chosen

    def finish(name: str, trial: Trial, upper: nn.Module, steps: int, choice: dict) -> Outcome:
        return Outcome(upper, val=window_log_likelihood(upper, *val), steps=steps,
                       trainable_params=trainable_parameter_count(upper), choice=choice)

    def trained(trial: Trial, name: str, lora: bool) -> Outcome:
        def run(lr: float) -> Outcome:
            upper = UpperDecoder(model, block)
            if lora:
                upper = lora_upper(upper, r=lora_rank, alpha=2 * lora_rank, seed=trial.seed)
            history = fit(upper, trial.loader(TensorDataset(*train), batch_size), epochs=1,
                          max_steps=trial.budget.steps // len(lrs[name]), lr=lr, step=causal_window_step(),
                          device=torch.device("cpu"), progress=False, monitor=None)
            return finish(name, trial, upper, history.steps, {})

        options = [chosen[name]] if name in chosen else list(lrs[name])
        result = best_on_validation(options, run, name="lr")
        chosen.setdefault(name, result.choice["lr"])
        retained[(name, trial.seed)] = window_log_likelihood(result.predictor, *general_test)
        return result

    def original(trial: Trial) -> Outcome:
        upper = UpperDecoder(model, block).requires_grad_(False)
        retained[("no fine-tuning", trial.seed)] = window_log_likelihood(upper, *general_test)
        return finish("no fine-tuning", trial, upper, 0, {})

    return {"no fine-tuning": original,
            "last blocks (full)": lambda t: trained(t, "last blocks (full)", lora=False),
            "LoRA on the last blocks": lambda t: trained(t, "LoRA on the last blocks", lora=True)}


def sequence_arms(top: nn.Module, task_a: Split, task_a_test: Split, task_b: Split, task_b_val: Split,
                  retained: dict, lr: float = 1e-3, batch_size: int = 32, ewc: float = 1000.0,
                  replay_per_class: int = 5, fisher_examples: int = 200) -> dict:
    """Two tasks learnt in sequence on one body: task A (its own head, ``"source"``), then task B (``"target"``).

    Per seed, task A is learnt once (the trial's step budget, BatchNorm statistics kept) and every arm starts
    task B from that same model, for the same budget: ``"plain (A then B)"``; ``"EWC"`` (Fisher of the A head's
    own predictions on ``fisher_examples`` A training inputs); ``"replay (k/class of A)"`` (each B batch
    joined by a batch of ``k`` stored A examples per class, :func:`~tlutils.topics.forgetting.replay_step`);
    ``"body frozen for B"`` (only the B head trains). Each records ``retained[(arm, seed)]``, the accuracy of
    the A head on ``task_a_test`` after B, and ``retained[("after A (before B)", seed)]`` is the same
    accuracy before B. The outcome is scored on task B (``task_b_val`` here, the test by the protocol).
    """
    import copy

    from tlutils.topics.forgetting import ewc_penalty, fisher_diagonal, penalty_step, replay_step
    from tlutils.topics.regularizers import JointBatches

    learnt: dict = {}

    def after_a(trial: Trial):
        if trial.seed not in learnt:
            with seeded(trial.seed):
                head_a = nn.Linear(1280, int(task_a[1].max()) + 1)
            model = two_head_model(top, head_a, int(task_b[1].max()) + 1, trial.seed)
            model.heads["source"].requires_grad_(True)
            with seeded(trial.seed):
                train_steps(trial, nn.Sequential(model.shared, model.heads["source"]), TensorDataset(*task_a),
                            lr=lr, batch_size=batch_size)
            retained[("after A (before B)", trial.seed)] = accuracy_of(nn.Sequential(model.shared, model.heads["source"]),
                                                                       *task_a_test)
            shared = {n: p for n, p in model.named_parameters() if n.startswith("shared.")}
            inputs = task_a[0][torch.randperm(len(task_a[1]), generator=torch.Generator().manual_seed(trial.seed))[:fisher_examples]]
            fisher = fisher_diagonal(lambda x: model(x, "source"), DataLoader(TensorDataset(inputs, inputs[:, 0, 0, 0]), batch_size=64),
                                     shared, torch.device("cpu"))
            learnt[trial.seed] = (model, {n: p.detach().clone() for n, p in model.named_parameters()}, fisher)
        model, start, fisher = learnt[trial.seed]
        return copy.deepcopy(model), start, fisher

    def run(trial: Trial, name: str, kind: str) -> Outcome:
        model, start, fisher = after_a(trial)
        model.heads["source"].requires_grad_(False)
        step, loader = None, None
        if kind == "ewc":
            step = penalty_step(lambda: ewc_penalty(model, start, fisher, strength=ewc))
        elif kind == "replay":
            buffer = _subset(task_a, replay_per_class, trial.seed)
            loader = JointBatches(trial.loader(TensorDataset(*task_b), batch_size),
                                  trial.loader(TensorDataset(*buffer), min(batch_size, len(buffer[1]))))
            step = replay_step(1.0)
        elif kind == "frozen":
            model.shared.requires_grad_(False)
        history = train_steps(trial, model, TensorDataset(*task_b), lr=lr, step=step, batch_size=batch_size, loader=loader)
        retained[(name, trial.seed)] = accuracy_of(nn.Sequential(model.shared, model.heads["source"]), *task_a_test)
        return outcome(model, history, task_b_val)

    kinds = {"plain (A then B)": "plain", "EWC": "ewc", f"replay ({replay_per_class}/class of A)": "replay",
             "body frozen for B": "frozen"}
    return {name: (lambda t, name=name, kind=kind: run(t, name, kind)) for name, kind in kinds.items()}
