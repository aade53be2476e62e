"""Benchmarks of the course's speed claims, as figures that do not depend on the machine.

``make bench`` runs ``.venv/bin/python benchmarks/bench.py``. Every comparison runs both
sides on the same machine, in the same process, on the same data and seed, and reports
a *ratio* (or a count) beside the absolute numbers behind it, so a slower or faster
computer changes the seconds but not the conclusion:

1. :func:`bench_fit_overhead`: :func:`tlutils.core.train.fit` against the textbook
   PyTorch loop (goal: at most 5 % slower, same final loss).
2. :func:`bench_feature_cache`: a linear probe trained on cached backbone features against
   one that recomputes the frozen backbone every epoch (goal: at least 10x faster).
3. :func:`bench_whisper_truncation`: the Whisper encoder cut to 1 s against the full 30 s one.
4. :func:`bench_length_grouping`: padding tokens of length-grouped against random text batches.
5. The peak memory each measured arm adds, each arm run in a fresh ``spawn`` child process.

Timings alternate the arms (A B, B A, A B ...) after a warm-up and report medians, so a
machine busy with other work slows both sides alike. Everything runs on the CPU with the
thread count torch finds (or ``--threads``). Feature caches go to a temporary folder, deleted at the
end; nothing is written into the repository.

Example:
    $ TLLAB_MIRROR=/work/shared/data .venv/bin/python benchmarks/bench.py --quick --json data/results/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.data import load_clips, load_fashion_mnist, load_fsdd, load_rotten_tomatoes
from tlutils.core.datasets import ArrayImageDataset, balanced_subset, image_transform, text_loader
from tlutils.core.features import extract_features, feature_loader
from tlutils.core.io import atomic_file
from tlutils.core.models import load_mobilenet_v2, load_text_encoder, load_whisper
from tlutils.core.paths import CACHE_ENV, cache_dir
from tlutils.core.runtime import seeded
from tlutils.core.train import fit
from tlutils.topics.speech import truncate_whisper_encoder, whisper_log_mel

CPU = torch.device("cpu")
MIB = 1024 * 1024
SEED = 0
TEXT_ENCODER = "minilm_l3"


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; :data:`FULL` for ``make bench``, :data:`QUICK` for a smoke run."""

    name: str
    repeats: int = 5              # timed runs per arm (after one warm-up) for benchmark 4
    fit_repeats: int = 9          # benchmark 1 resolves a few per cent: runs of 1-2 s vary by about that much
    cnn_images: int = 2000        # benchmark 1: Fashion-MNIST images (balanced over the 10 classes)
    cnn_epochs: int = 3
    probe_images: int = 400       # benchmark 2: images for the MobileNetV2 linear probe
    probe_epochs: int = 5
    probe_repeats: int = 3        # each recompute run is several backbone passes: fewer repeats suffice
    clips: int = 16               # benchmark 3: 1-s FSDD clips in the batch
    whisper_repeats: int = 3      # the full encoder takes seconds per batch and the ratio is large
    texts: int = 4000             # benchmark 4: Rotten Tomatoes texts whose padding is counted
    forward_texts: int = 128      # benchmark 4: texts of the timed encoder forward pass
    measure_memory: bool = True


FULL = Sizes("full")
QUICK = Sizes("quick", repeats=3, fit_repeats=3, cnn_images=500, cnn_epochs=2, probe_images=60, probe_repeats=2, clips=4,
              whisper_repeats=2, texts=1000, forward_texts=64)


# ----------------------------------------------------------------------------- timing

def interleaved_timings(arms: dict[str, Callable[[], Any]], repeats: int,
                        warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each arm ``repeats`` times, alternating the order (A B, B A, A B ...) after ``warmup`` runs each.

    Alternating means a change in the machine's load during the run falls on every arm
    alike, and no arm always runs first (cold caches) or last.

    Returns:
        ``(seconds, results)``: the wall-clock seconds of every timed run per arm, and each
        arm's return value from its last run.
    """
    results = {name: arm() for _ in range(warmup) for name, arm in arms.items()}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(repeats):
        for name in (list(arms) if repeat % 2 == 0 else list(arms)[::-1]):
            start = time.perf_counter()
            results[name] = arms[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the run-by-run ratios; runs made next to each other share the machine's load."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def paired_quartiles(numerator: list[float], denominator: list[float]) -> tuple[float, float]:
    """First and third quartiles of the run-by-run ratios: how far the noise spreads them."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    quartiles = statistics.quantiles(ratios, n=4)
    return quartiles[0], quartiles[2]


def timing_summary(seconds: list[float]) -> dict:
    """Median, minimum and maximum of a list of timings, plus the raw runs."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs_s": seconds}


# ----------------------------------------------------------------------------- memory

MEMORY_METHOD = ("peak resident memory each arm adds, in a fresh 'spawn' child process per arm: the peak (VmHWM) "
                 "is reset through /proc/self/clear_refs after imports, data and models are loaded, so setup's own "
                 "peak cannot hide the arm's, and read after the run, minus the resident memory before it. '1st' is "
                 "the first run (it also faults in library code and allocator pools), 'again' a second run in the "
                 "same child (the arm's own working memory). Not ru_maxrss: Linux carries a parent's peak across "
                 "fork + exec into the child's ru_maxrss, so it would read the parent's peak, not the arm's")
MEMORY_FALLBACK = ("ru_maxrss after the arm's first run minus ru_maxrss before it, in a fresh 'spawn' child process "
                   "per arm (the peak could not be reset: a lower bound, 0 when the setup, or the parent process "
                   "before the child started, peaked higher than the arm)")


def _status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (Linux) such as ``VmRSS`` or ``VmHWM``, or None where unavailable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_memory() -> bool:
    """Reset this process's peak resident memory (VmHWM) to the current one (Linux >= 4.0); True if it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _peak_added_mib(run: Callable[[], Any]) -> tuple[float, bool]:
    """Peak resident memory that ``run()`` adds over the memory before it; and whether the peak could be reset."""
    gc.collect()
    before, resident = _max_rss_bytes(), _status_bytes("VmRSS")
    reset = resident is not None and _reset_peak_memory()
    run()
    if reset:
        return (_status_bytes("VmHWM") - resident) / MIB, True
    return (_max_rss_bytes() - before) / MIB, False


def _arm_memory_in_child(arm: str, sizes: Sizes, feature_cache: str | None) -> dict:
    """Inside a fresh process: set up ``arm``, then run it twice, measuring the peak each run adds."""
    if feature_cache is not None:
        os.environ[CACHE_ENV] = feature_cache
    prepare, run = ARMS[arm]
    setup = prepare(sizes, CPU)
    first, reset = _peak_added_mib(lambda: run(setup))
    again = _peak_added_mib(lambda: run(setup))[0] if reset else None
    return {"first_run_mib": first, "again_mib": again, "method": MEMORY_METHOD if reset else MEMORY_FALLBACK}


def arm_memory(arms: list[str], sizes: Sizes, feature_cache: str | None = None) -> dict[str, dict]:
    """Peak memory added by each arm, each measured in its own freshly spawned process.

    A fresh process per arm means no arm inherits another's allocations, caches or peak.
    ``tracemalloc`` would miss the tensors (they are allocated by torch's C++ code).

    Args:
        arms: Names from :data:`ARMS`, run one after another (order matters for the warm cache).
        sizes: The benchmark sizes.
        feature_cache: The ``TLLAB_CACHE`` folder for the children (the feature-cache arms).
    """
    results = {}
    for arm in arms:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[arm] = pool.submit(_arm_memory_in_child, arm, sizes, feature_cache).result()
    return results


@contextlib.contextmanager
def temporary_env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the block, then restore it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings from transformers in the report."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ----------------------------------------------------------------------------- 1. fit vs bare loop

class SmallCNN(nn.Module):
    """Two conv-ReLU-pool blocks and a linear layer for 28 x 28 grey images (20,490 parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``N x 1 x 28 x 28`` -> ``N x num_classes`` logits."""
        return self.head(self.body(images))


@dataclass
class TrainingSetup:
    """What both arms of benchmark 1 share: one initial model, one data set, one seed."""

    initial_model: nn.Module
    dataset: TensorDataset
    epochs: int
    device: torch.device
    batch_size: int = 64
    lr: float = 1e-3


def fashion_tensors(n_images: int, seed: int) -> TensorDataset:
    """``n_images`` real Fashion-MNIST training images (balanced classes) as standardised float tensors."""
    images, labels, _ = load_fashion_mnist("train")
    picks = balanced_subset(labels, n_images // 10, seed=seed)
    x = torch.from_numpy(images[picks]).float().div(255).unsqueeze(1)
    return TensorDataset((x - x.mean()) / x.std(), torch.from_numpy(labels[picks]))


def prepare_training(sizes: Sizes, device: torch.device) -> TrainingSetup:
    """Data and a seeded initial model for benchmark 1 (tensors in memory, so the loop itself is timed)."""
    with seeded(SEED):
        model = SmallCNN()
    return TrainingSetup(model, fashion_tensors(sizes.cnn_images, SEED), sizes.cnn_epochs, device)


def shuffled_loader(dataset, batch_size: int, seed: int) -> DataLoader:
    """A shuffling loader with its own generator: the same batch order on every call."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def train_with_fit(setup: TrainingSetup) -> float:
    """Train a copy of the initial model with :func:`fit`; returns the last epoch's mean training loss."""
    model = copy.deepcopy(setup.initial_model)
    history = fit(model, shuffled_loader(setup.dataset, setup.batch_size, SEED), epochs=setup.epochs, lr=setup.lr,
                  device=setup.device, seed=SEED, progress=False)
    return history.train_loss[-1]


def train_bare(setup: TrainingSetup) -> float:
    """The textbook PyTorch loop on a copy of the same initial model; returns the last epoch's mean loss."""
    model = copy.deepcopy(setup.initial_model).to(setup.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    loader = shuffled_loader(setup.dataset, setup.batch_size, SEED)
    for _ in range(setup.epochs):
        total, count = 0.0, 0
        for images, targets in loader:
            images, targets = images.to(setup.device), targets.to(setup.device)
            optimizer.zero_grad()
            loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
    return total / count


def bench_fit_overhead(sizes: Sizes, device: torch.device) -> dict:
    """Benchmark 1: seconds of :func:`fit` against the bare loop, and whether they reach the same loss.

    Fair because both arms start from a deep copy of one seeded model, draw the same batches
    (a loader with its own seeded generator), use AdamW with the same learning rate and no
    weight decay, and take the same optimizer steps; the data are in-memory tensors, so the
    difference is the loop's own overhead (argument checks, loss bookkeeping, the disabled
    progress bar, the History). The bare loop also reads ``loss.item()`` each step, as the
    textbook loop does to report its loss. Runs of a second or two vary by a few per cent even
    on an idle virtual machine, about the size of the goal, hence more repeats here and the
    middle half of the paired ratios in the report.
    """
    setup = prepare_training(sizes, device)
    seconds, losses = interleaved_timings({"fit": lambda: train_with_fit(setup),
                                           "bare": lambda: train_bare(setup)}, sizes.fit_repeats)
    return {"images": len(setup.dataset), "epochs": setup.epochs, "batch_size": setup.batch_size,
            "steps": setup.epochs * len(shuffled_loader(setup.dataset, setup.batch_size, SEED)),
            "parameters": sum(p.numel() for p in setup.initial_model.parameters()), "repeats": sizes.fit_repeats,
            "fit": timing_summary(seconds["fit"]), "bare": timing_summary(seconds["bare"]),
            "ratio_fit_over_bare": paired_ratio(seconds["fit"], seconds["bare"]),
            "ratio_middle_half": paired_quartiles(seconds["fit"], seconds["bare"]), "goal_max_ratio": 1.05,
            "final_loss_fit": losses["fit"], "final_loss_bare": losses["bare"],
            "memory": arm_memory(["fit", "bare"], sizes) if sizes.measure_memory else {}}


# ----------------------------------------------------------------------------- 2. cached features

@dataclass
class ProbeSetup:
    """What the three arms of benchmark 2 share: one frozen backbone, one head initialisation, one data set."""

    backbone: nn.Module
    initial_head: nn.Linear
    images: ArrayImageDataset
    epochs: int
    device: torch.device
    cache_name: str
    fingerprint: str
    batch_size: int = 32
    lr: float = 1e-3


def frozen_mobilenet_body() -> nn.Module:
    """Pre-trained MobileNetV2 ``features`` + global average pooling, frozen and in eval mode (1280 outputs)."""
    body = nn.Sequential(load_mobilenet_v2(pretrained=True).features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body.requires_grad_(False).eval()


def prepare_probe(sizes: Sizes, device: torch.device) -> ProbeSetup:
    """Benchmark 2's images (Fashion-MNIST resized to 96 px by ``image_transform``), backbone and head."""
    images, labels, _ = load_fashion_mnist("train")
    picks = balanced_subset(labels, sizes.probe_images // 10, seed=SEED)
    dataset = ArrayImageDataset(images[picks], labels[picks], image_transform(96))
    with seeded(SEED):
        head = nn.Linear(1280, 10)
    fingerprint = f"bench|mobilenet_v2 features+avgpool|fashion_mnist train n={len(picks)} seed={SEED}|96px"
    return ProbeSetup(frozen_mobilenet_body(), head, dataset, sizes.probe_epochs, device, "bench_mobilenet_probe",
                      fingerprint)


def _train_head(model: nn.Module, loader: DataLoader, setup: ProbeSetup) -> float:
    return fit(model, loader, epochs=setup.epochs, lr=setup.lr, device=setup.device, seed=SEED,
               progress=False).train_loss[-1]


def probe_recompute(setup: ProbeSetup) -> float:
    """Backbone + head trained with :func:`fit`: every epoch runs the frozen backbone on every image again."""
    model = nn.Sequential(setup.backbone, copy.deepcopy(setup.initial_head))
    return _train_head(model, shuffled_loader(setup.images, setup.batch_size, SEED), setup)


def _cached_features(setup: ProbeSetup) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(setup.images, batch_size=setup.batch_size)
    return extract_features(setup.backbone, loader, setup.cache_name, setup.fingerprint, setup.device,
                            progress=False)


def _train_head_on_features(setup: ProbeSetup, features: torch.Tensor, labels: torch.Tensor) -> float:
    loader = feature_loader(features, labels, setup.batch_size, shuffle=True, seed=SEED)
    return _train_head(copy.deepcopy(setup.initial_head), loader, setup)


def probe_cold_cache(setup: ProbeSetup) -> float:
    """Delete the cache file, run :func:`extract_features` once (it writes the file), train the head on it."""
    (cache_dir() / "features" / f"{setup.cache_name}.safetensors").unlink(missing_ok=True)
    return _train_head_on_features(setup, *_cached_features(setup))


def probe_warm_cache(setup: ProbeSetup) -> float:
    """:func:`extract_features` reads the features back from the cache file; train the head on them."""
    return _train_head_on_features(setup, *_cached_features(setup))


def bench_feature_cache(sizes: Sizes, device: torch.device, feature_cache: str) -> dict:
    """Benchmark 2: a linear probe on a frozen MobileNetV2, recomputing the backbone against caching it.

    Fair because all three arms train the same seeded ``nn.Linear(1280, 10)`` with :func:`fit`
    for the same epochs, learning rate, batch size and batch order (the image loader and the
    feature loader shuffle with the same seeded generator over the same number of examples),
    so they even reach (nearly) the same loss. Recompute pays for the backbone and the image
    transform every epoch; cold cache pays once, plus writing the file; warm cache only reads it.
    With ``E`` epochs, recompute / cold can only approach ``E`` (the cold run does one of the ``E``
    backbone passes itself); recompute / warm has no such bound.
    """
    with temporary_env(CACHE_ENV, feature_cache):  # only here: other assets live in the real cache
        setup = prepare_probe(sizes, device)
        seconds, losses = interleaved_timings({"recompute": lambda: probe_recompute(setup),
                                               "cold": lambda: probe_cold_cache(setup),
                                               "warm": lambda: probe_warm_cache(setup)},
                                              sizes.probe_repeats, warmup=0)
    memory = arm_memory(["recompute", "cold", "warm"], sizes, feature_cache) if sizes.measure_memory else {}
    return {"images": len(setup.images), "epochs": setup.epochs, "batch_size": setup.batch_size,
            "repeats": sizes.probe_repeats, **{arm: timing_summary(runs) for arm, runs in seconds.items()},
            "ratio_recompute_over_cold": paired_ratio(seconds["recompute"], seconds["cold"]),
            "ratio_recompute_over_warm": paired_ratio(seconds["recompute"], seconds["warm"]),
            "goal_min_ratio": 10.0, "final_loss": losses, "memory": memory}


# ----------------------------------------------------------------------------- 3. Whisper truncation

@dataclass
class WhisperSetup:
    """Benchmark 3's encoders and the log-mels of the same clips at 30 s and at 1 s."""

    full_encoder: nn.Module
    short_encoder: nn.Module
    full_mels: torch.Tensor
    short_mels: torch.Tensor


def fsdd_clips(count: int) -> torch.Tensor:
    """``count`` real 1-s FSDD test clips at 16 kHz, spread evenly over the table (speakers and digits)."""
    table = load_fsdd("test")
    rows = np.linspace(0, len(table) - 1, count).round().astype(int)
    waves, _ = load_clips(table["path"].iloc[rows].tolist(), seconds=1.0)
    return waves


def prepare_whisper(sizes: Sizes, device: torch.device) -> WhisperSetup:
    """Whisper tiny.en's encoder, its 1-s truncation and the input features of both (computed once)."""
    quiet_transformers()
    processor, model = load_whisper()
    encoder = model.get_encoder().eval().to(device)
    waves = fsdd_clips(sizes.clips)
    return WhisperSetup(encoder, truncate_whisper_encoder(encoder, seconds=1.0).eval(),
                        whisper_log_mel(waves, processor.feature_extractor, seconds=30.0).to(device),
                        whisper_log_mel(waves, processor.feature_extractor, seconds=1.0).to(device))


@torch.inference_mode()
def whisper_full(setup: WhisperSetup) -> tuple[int, ...]:
    """The standard encoder on the clips padded to 30 s (1,500 positions)."""
    return tuple(setup.full_encoder(input_features=setup.full_mels).last_hidden_state.shape)


@torch.inference_mode()
def whisper_truncated(setup: WhisperSetup) -> tuple[int, ...]:
    """The encoder truncated to 1 s (50 positions) on the same clips."""
    return tuple(setup.short_encoder(input_features=setup.short_mels).last_hidden_state.shape)


def bench_whisper_truncation(sizes: Sizes, device: torch.device) -> dict:
    """Benchmark 3: milliseconds per 1-s clip of Whisper's encoder at 30 s against the one cut to 1 s.

    Fair because both encoders have the same weights (the truncated one keeps the first 50
    rows of the position table), see the same clips in one batch, and run through the same
    ``forward`` under ``inference_mode``. The log-mels are computed once beforehand: only the
    encoder is timed.
    """
    setup = prepare_whisper(sizes, device)
    seconds, shapes = interleaved_timings({"full": lambda: whisper_full(setup),
                                           "truncated": lambda: whisper_truncated(setup)}, sizes.whisper_repeats)
    clips = len(setup.full_mels)
    return {"clips": clips, "repeats": sizes.whisper_repeats, "output_shape": shapes,
            **{arm: {**timing_summary(runs), "ms_per_clip": 1000 * statistics.median(runs) / clips}
               for arm, runs in seconds.items()},
            "ratio_full_over_truncated": paired_ratio(seconds["full"], seconds["truncated"]),
            "memory": arm_memory(["whisper_full", "whisper_truncated"], sizes) if sizes.measure_memory else {}}


# ----------------------------------------------------------------------------- 4. length grouping

@dataclass
class TextSetup:
    """Benchmark 4's texts, tokenizer, encoder and the batches of the timed subset, both ways."""

    texts: list[str]
    labels: np.ndarray
    tokenizer: Any
    encoder: nn.Module
    grouped_batches: list[dict]
    random_batches: list[dict]
    batch_size: int = 16
    max_length: int = 64


def review_loader(texts, labels, tokenizer, group_by_length: bool, batch_size: int = 16,
                  max_length: int = 64) -> DataLoader:
    """A training loader of tokenised reviews: shuffled with seed 0, padded per batch, optionally length-grouped."""
    return text_loader(texts, labels, tokenizer, max_length, batch_size, shuffle=True, seed=SEED,
                       group_by_length=group_by_length)


def prepare_text(sizes: Sizes, device: torch.device) -> TextSetup:
    """Rotten Tomatoes reviews (balanced), the MiniLM tokenizer and encoder, and the forward subset's batches.

    MiniLM-L3 and -L6 share one tokenizer, so the token counts hold for both; the timed
    forward pass uses the 3-layer encoder to keep the benchmark short.
    """
    quiet_transformers()
    texts, labels, _ = load_rotten_tomatoes()
    picks = balanced_subset(labels, sizes.texts // 2, seed=SEED)
    texts, labels = [texts[i] for i in picks], labels[picks]
    tokenizer, encoder = load_text_encoder(TEXT_ENCODER)
    subset = np.random.default_rng(SEED).choice(len(texts), sizes.forward_texts, replace=False)
    sub_texts, sub_labels = [texts[i] for i in subset], labels[subset]
    return TextSetup(texts, labels, tokenizer, encoder.eval().to(device),
                     list(review_loader(sub_texts, sub_labels, tokenizer, True)),
                     list(review_loader(sub_texts, sub_labels, tokenizer, False)))


def token_counts(loader) -> dict:
    """Real and padding tokens over one epoch of ``loader`` (from each batch's attention mask)."""
    real = total = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return {"real": real, "padding": total - real, "total": total, "padding_fraction": (total - real) / total}


@torch.inference_mode()
def _encode_batches(encoder: nn.Module, batches: list[dict]) -> int:
    for batch in batches:
        encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return len(batches)


def text_grouped(setup: TextSetup) -> int:
    """One encoder pass over the subset in length-grouped batches."""
    return _encode_batches(setup.encoder, setup.grouped_batches)


def text_random(setup: TextSetup) -> int:
    """One encoder pass over the subset in random batches."""
    return _encode_batches(setup.encoder, setup.random_batches)


def bench_length_grouping(sizes: Sizes, device: torch.device) -> dict:
    """Benchmark 4: padding tokens per epoch with length-grouped against random batches, and the forward time.

    Fair because both loaders hold the same texts, tokenised to the same ids (truncated at 64
    tokens), in batches of 16, shuffled with seed 0; only the sampler differs. The counts are
    exact (no timing noise). The timed forward pass of the MiniLM encoder runs on a random subset, on
    batches collated beforehand, so it measures what the padding costs the encoder.
    """
    setup = prepare_text(sizes, device)
    counts = {grouped: token_counts(review_loader(setup.texts, setup.labels, setup.tokenizer, grouped))
              for grouped in (True, False)}
    seconds, _ = interleaved_timings({"grouped": lambda: text_grouped(setup),
                                      "random": lambda: text_random(setup)}, sizes.repeats)
    return {"texts": len(setup.texts), "batch_size": setup.batch_size, "max_length": setup.max_length,
            "grouped": counts[True], "random": counts[False],
            "ratio_total_tokens_grouped_over_random": counts[True]["total"] / counts[False]["total"],
            "encoder": TEXT_ENCODER, "forward_texts": sizes.forward_texts, "repeats": sizes.repeats,
            "forward_grouped": timing_summary(seconds["grouped"]), "forward_random": timing_summary(seconds["random"]),
            "ratio_forward_grouped_over_random": paired_ratio(seconds["grouped"], seconds["random"]),
            "memory": arm_memory(["text_grouped", "text_random"], sizes) if sizes.measure_memory else {}}


#: Every arm whose memory is measured: name -> (prepare(sizes, device), run(setup)).
ARMS: dict[str, tuple[Callable, Callable]] = {
    "fit": (prepare_training, train_with_fit), "bare": (prepare_training, train_bare),
    "recompute": (prepare_probe, probe_recompute), "cold": (prepare_probe, probe_cold_cache),
    "warm": (prepare_probe, probe_warm_cache),
    "whisper_full": (prepare_whisper, whisper_full), "whisper_truncated": (prepare_whisper, whisper_truncated),
    "text_grouped": (prepare_text, text_grouped), "text_random": (prepare_text, text_random),
}


# ----------------------------------------------------------------------------- machine and report

def _tiny_steps_seconds(steps: int = 20) -> float:
    """Best of three timings of ``steps`` AdamW steps of a linear head (1280 -> 10) on 32 examples."""
    with seeded(SEED):
        head, features, labels = nn.Linear(1280, 10), torch.randn(32, 1280), torch.randint(0, 10, (32,))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(head(features), labels).backward()
            optimizer.step()
        timings.append(time.perf_counter() - start)
    return min(timings)


def thread_slowdown() -> float:
    """How much slower small operations run on torch's threads than on one thread (machine-health check).

    About 1 on an idle machine. When other work holds the cores, each parallel region
    waits for a descheduled thread, and a run of many small operations slows down tens of
    times while one thread does not: then the seconds measure the scheduler, not the code.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        return 1.0
    found = _tiny_steps_seconds()
    torch.set_num_threads(1)
    try:
        single = _tiny_steps_seconds()
    finally:
        torch.set_num_threads(threads)
    return found / single


def environment(threads_source: str) -> dict:
    """Date, machine and library facts for the report header."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "torch_threads": torch.get_num_threads(), "torch_threads_source": threads_source,
            "torch": torch.__version__, "python": platform.python_version(), "device": str(CPU),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "thread_slowdown_at_start": thread_slowdown()}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _memory_cell(result: dict, arm: str) -> str:
    entry = result["memory"].get(arm)
    if not entry:
        return f"{'-':>8}{'-':>8}"
    again = "-" if entry["again_mib"] is None else f"{entry['again_mib']:.1f}"
    return f"{entry['first_run_mib']:8.1f}{again:>8}"


def _timing_rows(result: dict, arms: dict[str, tuple[str, str]]) -> list[str]:
    """One line per arm (result key -> (label, memory arm)): median, min, max seconds and the peak memory added."""
    rows = [f"   {'arm':<28}{'median s':>10}{'min s':>9}{'max s':>9}   peak +MiB: 1st  again"]
    for key, (label, memory_arm) in arms.items():
        timing = result[key]
        rows.append(f"   {label:<28}{timing['median_s']:10.3f}{timing['min_s']:9.3f}{timing['max_s']:9.3f}"
                    f"{'':11}{_memory_cell(result, memory_arm)}")
    return rows


def _repeats_line(result: dict, warmup: bool = True) -> str:
    return f"{result['repeats']} interleaved repeats" + (" after 1 warm-up" if warmup else " (no warm-up)")


def format_fit(result: dict) -> list[str]:
    ratio, goal = result["ratio_fit_over_bare"], result["goal_max_ratio"]
    low, high = result["ratio_middle_half"]
    same = result["final_loss_fit"] == result["final_loss_bare"]
    difference = abs(result["final_loss_fit"] - result["final_loss_bare"])
    header = (f"1. fit() vs a bare PyTorch loop: SmallCNN ({result['parameters']:,} parameters) on "
              f"{result['images']:,} Fashion-MNIST images, 28 px grey")
    setting = (f"   {result['epochs']} epochs x batch {result['batch_size']} = {result['steps']} AdamW steps, "
               f"no validation, progress off; {_repeats_line(result)}")
    loss = (f"   final training loss  fit {result['final_loss_fit']:.6f}  bare {result['final_loss_bare']:.6f}  "
            + ("(identical)" if same else f"(differ by {difference:.2e})"))
    return [header, setting,
            *_timing_rows(result, {"fit": ("tlutils fit()", "fit"), "bare": ("bare loop", "bare")}),
            (f"   ratio fit / bare  {ratio:.3f} (median of the paired runs; middle half {low:.3f} to {high:.3f})   "
             f"goal <= {goal:.2f}: {_verdict(ratio <= goal)}"),
            loss]


def format_cache(result: dict) -> list[str]:
    goal, epochs = result["goal_min_ratio"], result["epochs"]
    cold, warm = result["ratio_recompute_over_cold"], result["ratio_recompute_over_warm"]
    header = (f"2. Cached features vs recomputing the backbone: frozen MobileNetV2 body + average pool on "
              f"{result['images']} Fashion-MNIST images at 96 px")
    setting = (f"   linear head (1280 -> 10) trained {epochs} epochs, batch {result['batch_size']}, AdamW; "
               f"{_repeats_line(result, warmup=False)}")
    bound = (f"   (with {epochs} epochs recompute / cold can only approach {epochs}x: the cold run also makes one "
             "backbone pass)")
    losses = "   final training loss  " + "  ".join(f"{arm} {loss:.6f}" for arm, loss in result["final_loss"].items())
    return [header, setting,
            *_timing_rows(result, {"recompute": ("recompute every epoch", "recompute"),
                                   "cold": ("cold cache (extract + head)", "cold"),
                                   "warm": ("warm cache (read + head)", "warm")}),
            f"   ratio recompute / warm cache  {warm:7.1f}x   goal >= {goal:.0f}x: {_verdict(warm >= goal)}",
            f"   ratio recompute / cold cache  {cold:7.1f}x   goal >= {goal:.0f}x: {_verdict(cold >= goal)}",
            bound, losses]


def format_whisper(result: dict) -> list[str]:
    full, short = result["full"], result["truncated"]
    header = (f"3. Truncated vs full Whisper tiny.en encoder: one batch of {result['clips']} real 1-s FSDD clips; "
              f"{_repeats_line(result)}")
    per_clip = (f"   per clip  full {full['ms_per_clip']:.1f} ms  truncated {short['ms_per_clip']:.2f} ms  "
                f"ratio full / truncated {result['ratio_full_over_truncated']:.1f}x (median of paired runs)")
    shapes = result["output_shape"]
    return [header,
            *_timing_rows(result, {"full": ("full encoder (30 s input)", "whisper_full"),
                                   "truncated": ("truncated to 1 s", "whisper_truncated")}),
            per_clip, f"   encoder output  full {shapes['full']}  truncated {shapes['truncated']}"]


def format_text(result: dict) -> list[str]:
    header = (f"4. Length-grouped vs random text batches: {result['texts']:,} Rotten Tomatoes reviews, MiniLM "
              f"tokenizer, batch {result['batch_size']}, at most {result['max_length']} tokens, one epoch")
    rows = [header, f"   {'batches':<28}{'real tokens':>12}{'padding':>10}{'total':>10}{'padding %':>11}"]
    for arm in ("grouped", "random"):
        c = result[arm]
        rows.append(f"   {arm:<28}{c['real']:12,}{c['padding']:10,}{c['total']:10,}{100 * c['padding_fraction']:10.1f}%")
    rows.append(f"   ratio total tokens grouped / random  {result['ratio_total_tokens_grouped_over_random']:.3f}")
    rows.append(f"   {result['encoder']} forward over {result['forward_texts']} of the texts, {_repeats_line(result)}:")
    rows += _timing_rows(result, {"forward_grouped": ("grouped batches", "text_grouped"),
                                  "forward_random": ("random batches", "text_random")})
    rows.append(f"   ratio forward time grouped / random  {result['ratio_forward_grouped_over_random']:.3f}"
                " (median of paired runs)")
    return rows


def _load(values: list[float] | None) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "unknown"


def _field(label: str, text: str) -> list[str]:
    """A header field: the label in a 16-column margin, the text wrapped to 118 columns beside it."""
    return textwrap.wrap(text, 118, initial_indent=f"{label:<16}", subsequent_indent=" " * 16)


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _threads_check(env: dict) -> str:
    if env["torch_threads"] == 1:
        return "not needed with 1 thread"
    return (f"small operations {env['thread_slowdown_at_start']:.2f}x as slow on {_threads(env['torch_threads'])} "
            "as on 1 (about 1 on an idle machine)")


def _busy_note(env: dict) -> list[str]:
    """A warning when other work was running; the threads check is the sharper sign (the load average lags)."""
    load = (env["load_average_at_start"] or [0.0])[0]
    slowdown, threads = env["thread_slowdown_at_start"], env["torch_threads"]
    if slowdown >= 2.0:
        return _field("note", f"the cores are shared with other work: small operations ran {slowdown:.1f}x slower "
                              f"on {_threads(threads)} than on 1 (load {load:.2f} on {env['usable_cpus']} CPUs). "
                              "Threads waiting for a busy core slow runs of many small operations far more than "
                              "large ones, so the seconds are inflated and noisy and ratios between a small and a "
                              "large workload are distorted. Rerun on an idle machine, or with --threads=1.")
    if load >= env["usable_cpus"]:
        return _field("note", f"the machine was busy before the run (load {load:.2f} on {env['usable_cpus']} CPUs): "
                              "the seconds are inflated and noisy; interleaving shares the load between the arms.")
    return []


def format_report(report: dict) -> str:
    """The plain-text report: a header, then one section per benchmark."""
    env = report["environment"]
    lines = ["Transfer Learning Lab benchmarks (benchmarks/bench.py)",
             *_field("date", env["date"]),
             *_field("cpu", f"{env['cpu']}; {env['cpu_count']} CPUs ({env['usable_cpus']} usable)"),
             *_field("torch", f"{env['torch']}, {_threads(env['torch_threads'])} ({env['torch_threads_source']}), "
                              f"device {env['device']}"),
             *_field("python", env["python"]),
             *_field("load average", f"{_load(env['load_average_at_start'])} at start (1, 5, 15 min); "
                                     f"{_load(report['load_average_at_end'])} at end"),
             *_field("threads check", _threads_check(env)),
             *_busy_note(env),
             *_field("sizes", report["sizes"]["name"]),
             *_field("memory", report["memory_method"]),
             ""]
    for name, formatter in (("fit_overhead", format_fit), ("feature_cache", format_cache),
                            ("whisper_truncation", format_whisper), ("length_grouping", format_text)):
        lines += [*formatter(report["benchmarks"][name]), ""]
    lines.append(f"total wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


def _memory_method(benchmarks: dict) -> str:
    methods = {entry["method"] for result in benchmarks.values() for entry in result["memory"].values()}
    return " / ".join(sorted(methods)) if methods else "not measured"


def run_all(sizes: Sizes, threads_source: str = "as found") -> dict:
    """Run the four benchmarks with a temporary feature cache that is removed afterwards."""
    start = time.perf_counter()
    feature_cache = tempfile.mkdtemp(prefix="tllab-bench-cache-")
    try:
        env = environment(threads_source)
        benchmarks = {}
        for name, bench in (("fit_overhead", bench_fit_overhead),
                            ("feature_cache", lambda s, d: bench_feature_cache(s, d, feature_cache)),
                            ("whisper_truncation", bench_whisper_truncation),
                            ("length_grouping", bench_length_grouping)):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            benchmarks[name] = bench(sizes, CPU)
    finally:
        shutil.rmtree(feature_cache, ignore_errors=True)
    return {"environment": env, "sizes": asdict(sizes), "memory_method": _memory_method(benchmarks),
            "benchmarks": benchmarks, "wall_s": time.perf_counter() - start,
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_json(report: dict, path: str) -> None:
    """Write the report's figures as JSON, atomically (a killed run leaves no half file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _exit_on_signal(signum: int, frame) -> None:
    """A plain SIGTERM would skip the clean-up of the temporary feature cache: exit through it instead."""
    print(f"benchmarks/bench.py: stopped by signal {signum}; removing the temporary feature cache",
          file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run every benchmark, print the report and optionally write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats, for a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads (default: as torch finds them); 1 is steadier on a busy machine")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    os.environ["TLLAB_DEVICE"] = "cpu"  # every device default in tlutils (and in the children) is the CPU
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the spawned memory children start with it too
    sizes = QUICK if args.quick else FULL
    if args.no_memory:
        sizes = Sizes(**{**asdict(sizes), "measure_memory": False})
    report = run_all(sizes, "set by --threads" if args.threads else "as found")
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
