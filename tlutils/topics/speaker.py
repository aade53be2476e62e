"""Speaker identity with the pre-trained GE2E encoder: embeddings, prototypes, enrolment accuracy."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlutils.core.data import SAMPLE_RATE
from tlutils.core.models import GE2E_N_MELS, GE2EEncoder
from tlutils.core.runtime import resolve_device

GE2E_PARTIAL_SECONDS = 1.6
GE2E_TARGET_DBFS = -30.0


def normalize_volume(waves: torch.Tensor, lengths: torch.Tensor, target_dbfs: float = GE2E_TARGET_DBFS,
                     increase_only: bool = True) -> torch.Tensor:
    """Scale each clip so its loudness (over its real samples) is ``target_dbfs``.

    Args:
        waves: ``N x samples``.
        lengths: Real samples per clip (the rest is padding).
        target_dbfs: Target level in dB relative to full scale.
        increase_only: Only make quiet clips louder (Resemblyzer's choice).
    """
    lengths = lengths.to(waves.device)
    mask = torch.arange(waves.shape[1], device=waves.device)[None] < lengths[:, None]
    power = (waves.pow(2) * mask).sum(dim=1) / lengths.clamp_min(1)
    change_db = target_dbfs - 10 * torch.log10(power.clamp_min(1e-12))
    if increase_only:
        change_db = change_db.clamp_min(0.0)
    return waves * (10 ** (change_db / 20))[:, None]


def ge2e_mel(waves: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """GE2E's front end: 40-band mel **power** spectrogram (no log), 25 ms windows, 10 ms hop.

    Returns:
        ``N x frames x 40``, the layout the LSTM reads.
    """
    from torchaudio.transforms import MelSpectrogram

    mel = MelSpectrogram(sample_rate=sample_rate, n_fft=int(sample_rate * 0.025), hop_length=int(sample_rate * 0.010),
                         n_mels=GE2E_N_MELS, power=2.0, norm="slaney", mel_scale="slaney")
    return mel(waves).transpose(-1, -2)


class GE2EEmbedder(nn.Module):
    """Waveforms in, GE2E voice embeddings out, prepared the way Resemblyzer prepares them.

    Each clip is normalised to -30 dBFS (quiet clips only get louder) before the
    40-band mel front end. Resemblyzer pads short utterances with silence to a
    1.6 s window; ``pad_to_seconds=None`` keeps the clips as they are (cheaper).

    Args:
        encoder: From :func:`load_ge2e`.
        pad_to_seconds: Pad (never crop) every clip to this length first, or ``None``.
    """

    def __init__(self, encoder: GE2EEncoder, pad_to_seconds: float | None = None):
        super().__init__()
        self.encoder = encoder.eval()
        self.pad_to_seconds = pad_to_seconds

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``N x samples`` at 16 kHz and their real lengths -> ``N x 256`` unit vectors."""
        waves = normalize_volume(waves, lengths.to(waves.device))
        if self.pad_to_seconds is not None:
            waves = nn.functional.pad(waves, (0, max(0, int(self.pad_to_seconds * SAMPLE_RATE) - waves.shape[1])))
        return self.encoder(ge2e_mel(waves.cpu()).to(waves.device))

    def extra_repr(self) -> str:
        return f"pad_to_seconds={self.pad_to_seconds}"  # part of the feature cache's key, with the weights


def ge2e_embeddings(encoder: GE2EEncoder, waves: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None,
                    cache_name: str | None = None, fingerprint: str = "", batch_size: int = 64,
                    device: torch.device | str | None = None, progress: bool = False) -> torch.Tensor:
    """GE2E embeddings of clips, cached on disk by :func:`~tlutils.core.features.extract_features`.

    Args:
        encoder: From :func:`load_ge2e`.
        waves: ``N x samples`` at 16 kHz.
        lengths: Real (unpadded) samples per clip.
        labels: Stored with the cache (zeros when ``None``).
        cache_name: File name under ``data/cache/features/``; ``None`` disables caching.
        fingerprint: Optional extra text for the cache key; the encoder's weights, the clips,
            their lengths and the labels are part of the key already.
        batch_size: Clips per forward pass.
        device: Where to run; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        progress: Show a progress bar.

    Returns:
        ``N x 256`` unit-length embeddings on the CPU.
    """
    from tlutils.core.features import extract_features

    labels = torch.zeros(len(waves), dtype=torch.long) if labels is None else labels
    if waves.dim() != 2 or len(lengths) != len(waves) or len(labels) != len(waves):
        raise ValueError(f"expected N x samples waves with N lengths and N labels, got waves {tuple(waves.shape)}, "
                         f"{len(lengths)} lengths and {len(labels)} labels; pad the clips into one batch first")
    batches = [{"waves": waves[i:i + batch_size], "lengths": lengths[i:i + batch_size],
                "labels": labels[i:i + batch_size]} for i in range(0, len(waves), batch_size)]
    embeddings, _ = extract_features(GE2EEmbedder(encoder), batches, cache_name, f"ge2e|{fingerprint}",
                                     resolve_device(device), progress)
    return embeddings


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The unit-length mean embedding of every class (a speaker's voice print).

    Raises:
        ValueError: a class has no example.
    """
    units = nn.functional.normalize(embeddings.float(), dim=1)
    missing = [c for c in range(num_classes) if not bool((labels == c).any())]
    if missing:
        raise ValueError(f"classes {missing} have no enrolment example")
    means = torch.stack([units[labels == c].mean(dim=0) for c in range(num_classes)])
    return nn.functional.normalize(means, dim=1)


def prototype_predict(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The class whose prototype has the highest cosine similarity with each embedding."""
    return (nn.functional.normalize(embeddings.float(), dim=1) @ prototypes.T).argmax(dim=1)


def enrolment_accuracy(pool_features: torch.Tensor, pool_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, clips_per_class: int, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                       center: bool = True) -> float:
    """Nearest-prototype accuracy with ``clips_per_class`` enrolment clips, averaged over draws.

    For every seed, ``clips_per_class`` clips of every class are drawn from the
    pool (:func:`~tlutils.core.datasets.balanced_subset`), averaged into prototypes, and
    the test clips are assigned to the nearest prototype by cosine similarity.

    Args:
        pool_features, pool_labels: Where enrolment clips are drawn from.
        test_features, test_labels: The clips to identify.
        clips_per_class: Enrolment clips per class.
        seeds: One random draw per seed; the result is their mean.
        center: Subtract the mean feature of the whole pool first (no labels needed).
            Features of a pre-trained encoder share a large common direction that
            otherwise dominates every cosine similarity.

    Returns:
        Mean test accuracy over the draws.
    """
    from tlutils.core.datasets import balanced_subset

    offset = pool_features.float().mean(dim=0) if center else torch.zeros(pool_features.shape[1])
    pool, test = pool_features.float() - offset, test_features.float() - offset
    num_classes = int(pool_labels.max()) + 1
    scores = []
    for seed in seeds:
        chosen = torch.from_numpy(balanced_subset(pool_labels.numpy(), clips_per_class, seed))
        prototypes = class_prototypes(pool[chosen], pool_labels[chosen], num_classes)
        scores.append(float((prototype_predict(test, prototypes) == test_labels).float().mean()))
    return float(np.mean(scores))
