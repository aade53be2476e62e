"""Notebook 09's learning curves: frozen Whisper features vs a CNN trained from scratch on log-mels.

:func:`digit_curve` trains, per labelled-set size and seed, a linear head on cached Whisper
features and a small CNN from scratch on the same clips (:func:`curve_summary` gives mean,
SE and the paired gap); :func:`scratch_enrolment_accuracy` scores the
from-scratch CNN on speaker identification with the same enrolment draws that
:func:`~tlutils.topics.speaker.enrolment_accuracy` makes for prototypes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from tlutils.core.datasets import balanced_subset
from tlutils.core.features import feature_loader, train_linear_probe
from tlutils.core.train import evaluate
from tlutils.topics.speech import train_scratch_cnn

PROBE = "Whisper features + linear head"
SCRATCH = "scratch CNN"


def digit_curve(pick: Callable[[int, int], torch.Tensor], sizes: Sequence[int], features: torch.Tensor,
                log_mels: torch.Tensor, labels: torch.Tensor, score: Callable[[nn.Module, torch.Tensor], float], *,
                probe_epochs: int, scratch_steps: int, seeds: Sequence[int], device: torch.device | None = None
                ) -> pd.DataFrame:
    """Accuracy of a linear head on frozen features and of a scratch CNN, per labelled-set size and seed.

    At every size and seed both approaches train on the same clips (the seed draws them and
    seeds both runs); the CNN gets a fixed number of optimizer steps at every size (see
    :func:`~tlutils.topics.speech.train_scratch_cnn`).

    Args:
        pick: ``pick(per_class, seed)`` -> indices of the labelled clips.
        sizes: Labelled clips per class to try.
        features: Frozen features of every clip (``N x D``).
        log_mels: Log-mel spectrograms of every clip, the scratch CNN's input.
        labels: Class of every clip.
        score: ``score(model, inputs)`` -> the accuracy to report (on held-out clips).
        probe_epochs, scratch_steps: Training length of the head and of the CNN.
        seeds: One draw and run per seed.
        device: Where to train.

    Returns:
        One row per size and seed: ``labelled clips``, ``seed``, one column per approach
        (:data:`PROBE`, :data:`SCRATCH`). Summarise it with :func:`curve_summary`.
    """
    if not sizes or not seeds:
        raise ValueError("sizes and seeds must not be empty: e.g. sizes=[1, 3, 10], seeds=[0, 1, 2]")
    from tqdm.auto import tqdm

    num_classes = int(labels.max()) + 1
    rows = []
    for per_class, seed in tqdm([(n, s) for n in sizes for s in seeds], desc="learning curve", leave=False):
        chosen = pick(per_class, seed)
        probe, _ = train_linear_probe(features[chosen], labels[chosen], num_classes, epochs=probe_epochs, seed=seed,
                                      device=device)
        cnn, _ = train_scratch_cnn(log_mels[chosen], labels[chosen], num_classes, steps=scratch_steps, seed=seed,
                                   device=device)
        rows.append({"labelled clips": len(chosen), "seed": seed, PROBE: score(probe, features),
                     SCRATCH: score(cnn, log_mels)})
    return pd.DataFrame(rows)


def curve_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds per size, and the paired gap ``PROBE - SCRATCH`` with its SE."""
    runs = runs.assign(gap=runs[PROBE] - runs[SCRATCH])
    grouped = runs.groupby("labelled clips")[[PROBE, SCRATCH, "gap"]]
    mean, se = grouped.mean(), grouped.std(ddof=1) / np.sqrt(grouped.count())
    return mean.join(se, rsuffix=" SE")[[PROBE, f"{PROBE} SE", SCRATCH, f"{SCRATCH} SE", "gap", "gap SE"]]


def scratch_enrolment_accuracy(log_mels: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor, test: torch.Tensor,
                               clips_per_class: int, draws: Sequence[int], *, steps: int,
                               device: torch.device | None = None) -> float:
    """Test accuracy of a CNN trained from scratch on ``clips_per_class`` pool clips per class, mean over draws.

    Draw ``d`` picks the clips with ``balanced_subset(labels[pool], clips_per_class, d)``,
    the same clips :func:`~tlutils.topics.speaker.enrolment_accuracy` uses with seed ``d``.

    Args:
        log_mels: Log-mel spectrograms of every clip.
        labels: Class (speaker) of every clip.
        pool, test: Boolean masks of the enrolment pool and of the test clips.
        clips_per_class: Labelled clips per class.
        draws: Seeds of the draws (and of the training runs).
        steps: Optimizer steps per run.
        device: Where to train.
    """
    pool_ids = torch.where(pool)[0]
    num_classes = int(labels.max()) + 1
    test_loader = feature_loader(log_mels[test], labels[test], 256)
    scores = []
    for draw in draws:
        chosen = pool_ids[torch.from_numpy(balanced_subset(labels[pool].numpy(), clips_per_class, draw))]
        cnn, _ = train_scratch_cnn(log_mels[chosen], labels[chosen], num_classes, steps=steps, seed=draw, device=device)
        scores.append(evaluate(cnn, test_loader, device)["accuracy"])
    return float(np.mean(scores))
