"""Audio for transfer learning: clips, log-mel front ends, pre-trained speech encoders.

A speech model never sees a waveform the way we hear it: it sees a log-mel
spectrogram, energy in mel-spaced frequency bands every 10 ms, on a log scale.
This module turns sound files into fixed-length clips and spectrograms, and
wraps three ways of turning a clip into a vector:

* the **Whisper encoder** (pre-trained on 680k hours of speech), cut down to
  short clips (:func:`truncate_whisper_encoder`), mean-pooled per layer and
  cached (:func:`whisper_features`), or fine-tuned with a head (:class:`WhisperClassifier`);
* the **GE2E speaker encoder** (:func:`load_ge2e`, :func:`ge2e_embeddings`), trained
  to tell voices apart;
* a **small CNN from scratch** on log-mels (:func:`train_scratch_cnn`), the baseline.

Around them: nearest-prototype speaker enrolment (:func:`enrolment_accuracy`), real
multilingual recordings (:func:`load_spoken_words`, :func:`load_digit_names`),
zero-shot transcription (:func:`whisper_transcribe`) and wav2vec 2.0 when online
(:func:`load_wav2vec2_asr`). Linear probes on the cached features are
:func:`tlutils.features.train_linear_probe`.

Example:
    >>> waves, lengths = load_clips(load_fsdd("test")["path"], seconds=1.0)
    >>> processor, whisper = load_whisper()
    >>> encoder = truncate_whisper_encoder(whisper.model.encoder, seconds=1.0)
    >>> mels = whisper_log_mel(waves, processor.feature_extractor, seconds=1.0)
    >>> features, _ = whisper_features(encoder, mels, labels, "09_example")  # N x 5 layers x 384
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlutils.assets import resolve
from tlutils.data import read_mono

SAMPLE_RATE = 16_000
#: Whisper's log-mel has 100 frames per second (10 ms hop); its stride-2 convolution halves that.
WHISPER_POSITIONS_PER_SECOND = 50
#: Resemblyzer's GE2E front end: 40 mel bands, 25 ms windows, 10 ms hop, 1.6 s partials.
GE2E_N_MELS = 40
GE2E_PARTIAL_SECONDS = 1.6
GE2E_TARGET_DBFS = -30.0
HOMOPHONES = {"oh": 0, "won": 1, "to": 2, "too": 2, "for": 4, "ate": 8}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ------------------------------------------------------------------ clips


def fixed_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop a 1-D waveform to ``num_samples``, or pad it on the right with silence."""
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return torch.nn.functional.pad(wave, (0, num_samples - len(wave)))


def trim_silence(wave: torch.Tensor, sample_rate: int, threshold_db: float = -35.0,
                 frame_ms: float = 10.0) -> torch.Tensor:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest frame.

    Args:
        wave: 1-D waveform.
        sample_rate: Its rate in Hz.
        threshold_db: Frames whose RMS is this far below the loudest frame count as silence.
        frame_ms: Frame length for the RMS.

    Returns:
        The trimmed waveform (unchanged when it is all silence).
    """
    frame = max(1, int(sample_rate * frame_ms / 1000))
    usable = len(wave) // frame * frame
    if usable == 0:
        return wave
    rms = wave[:usable].reshape(-1, frame).pow(2).mean(dim=1).sqrt()
    loud = torch.nonzero(20 * torch.log10(rms / rms.max().clamp_min(1e-12) + 1e-12) > threshold_db).flatten()
    if len(loud) == 0:
        return wave
    return wave[int(loud[0]) * frame:(int(loud[-1]) + 1) * frame]


def load_clips(paths: Sequence[str | Path], seconds: float = 1.0, sample_rate: int = SAMPLE_RATE,
               trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Read sound files as equal-length mono clips at ``sample_rate``.

    Each file is cropped to ``seconds`` or padded with silence on the right, then
    all files of the same original rate are resampled in one batch (resampling
    thousands of short clips one by one is dominated by per-call overhead).

    Args:
        paths: Sound files (WAV, OGG, FLAC: anything soundfile reads).
        seconds: Clip length.
        sample_rate: Target rate in Hz (16,000 for Whisper, wav2vec 2.0 and GE2E).
        trim: Cut leading and trailing silence first (see :func:`trim_silence`).

    Returns:
        ``(waves, lengths)``: a ``N x (seconds * sample_rate)`` float tensor and the
        number of real (not padded) samples of each clip at ``sample_rate``.

    Example:
        >>> waves, lengths = load_clips(load_fsdd("test")["path"][:4], seconds=1.0)
        >>> waves.shape
        torch.Size([4, 16000])
    """
    from torchaudio.functional import resample

    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    if len(paths) == 0:
        raise ValueError("no paths given: there is nothing to load")
    num_samples = int(round(seconds * sample_rate))
    waves, lengths = torch.zeros(len(paths), num_samples), torch.zeros(len(paths), dtype=torch.long)
    by_rate: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, path in enumerate(paths):
        wave, rate = read_mono(path)
        wave = trim_silence(wave, rate) if trim else wave
        by_rate[rate].append((index, wave))
    for rate, items in by_rate.items():
        native = int(round(seconds * rate))
        batch = torch.stack([fixed_length(wave, native) for _, wave in items])
        batch = batch if rate == sample_rate else resample(batch, rate, sample_rate)
        for row, (index, wave) in enumerate(items):
            waves[index] = fixed_length(batch[row], num_samples)
            lengths[index] = min(num_samples, int(round(len(wave) * sample_rate / rate)))
    return waves, lengths


# ------------------------------------------------------------------ log-mel front ends


def log_mel_spectrogram(waves: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_mels: int = 64,
                        window_ms: float = 25.0, hop_ms: float = 10.0, top_db: float = 80.0) -> torch.Tensor:
    """Log-mel spectrogram in decibels, the usual input of a CNN trained on audio.

    Args:
        waves: ``N x samples`` (or 1-D) waveforms.
        sample_rate: Their rate in Hz.
        n_mels: Number of mel bands.
        window_ms: STFT window length (25 ms is the speech standard).
        hop_ms: Step between frames (10 ms gives 100 frames per second).
        top_db: Floor at this many dB below each clip's loudest bin.

    Returns:
        ``N x n_mels x frames`` (or ``n_mels x frames``) float tensor in dB.
    """
    from torchaudio.transforms import AmplitudeToDB, MelSpectrogram

    n_fft = int(sample_rate * window_ms / 1000)
    mel = MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=int(sample_rate * hop_ms / 1000),
                         n_mels=n_mels, power=2.0)
    to_db = AmplitudeToDB(stype="power", top_db=top_db)
    spectrogram = mel(waves)
    # AmplitudeToDB applies top_db per batch item only for 3-D+ input; keep it per clip.
    return to_db(spectrogram.unsqueeze(-3)).squeeze(-3) if spectrogram.ndim == 3 else to_db(spectrogram[None])[0]


def whisper_log_mel(waves: torch.Tensor, feature_extractor, seconds: float = 1.0) -> torch.Tensor:
    """Whisper's own log-mel input for ``seconds``-long clips (instead of 30 s).

    The features are exactly the first ``100 * seconds`` frames Whisper's feature
    extractor computes for the same audio padded to 30 s (80 bands, log10, clipped
    to 8 below the clip's maximum, scaled to about [-1, 1]).

    Args:
        waves: ``N x samples`` at 16 kHz.
        feature_extractor: ``processor.feature_extractor`` of a Whisper processor.
        seconds: Clip length; the result has ``100 * seconds`` frames.

    Returns:
        ``N x 80 x frames`` float tensor.
    """
    if waves.ndim != 2:
        raise ValueError(f"expected N x samples waveforms, got shape {tuple(waves.shape)}")
    samples = int(round(seconds * SAMPLE_RATE))
    out = feature_extractor([wave.numpy() for wave in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                            padding="max_length", max_length=samples, truncation=True)
    return out.input_features


# ------------------------------------------------------------------ Whisper encoder


def truncate_whisper_encoder(encoder: nn.Module, seconds: float = 1.0) -> nn.Module:
    """A copy of a Whisper encoder that takes ``seconds`` of audio instead of 30 s.

    Whisper always encodes 30 s (1,500 positions after the stride-2 convolution),
    so a 1-second word is 97% padding and the encoder's cost is wasted on it. The
    copy keeps the first ``50 * seconds`` rows of the positional table and sets
    ``config.max_source_positions`` to match; every other weight is unchanged.

    Args:
        encoder: ``WhisperForConditionalGeneration.model.encoder`` (not changed).
        seconds: Input length; must give a whole number of positions.

    Returns:
        The truncated encoder (a deep copy).
    """
    positions = seconds * WHISPER_POSITIONS_PER_SECOND
    if positions != int(positions) or not 1 <= positions <= encoder.embed_positions.num_embeddings:
        raise ValueError(f"seconds={seconds} must give a whole number of positions between 1 and "
                         f"{encoder.embed_positions.num_embeddings} (50 per second)")
    positions = int(positions)
    short = copy.deepcopy(encoder)
    table = short.embed_positions.weight.detach()[:positions].clone()
    short.embed_positions = nn.Embedding(positions, table.shape[1], _weight=table)
    short.embed_positions.requires_grad_(False)
    short.config = copy.deepcopy(encoder.config)
    short.config.max_source_positions = positions
    return short


def whisper_hidden_states(encoder: nn.Module, mels: torch.Tensor) -> list[torch.Tensor]:
    """Run a Whisper encoder block by block and keep every block's output.

    Args:
        encoder: A (possibly truncated) Whisper encoder.
        mels: ``N x 80 x frames`` log-mels; frames must be twice the positional table.

    Returns:
        ``layers + 1`` tensors of shape ``N x positions x d_model``: the input
        embedding (convolutions + positions), then each transformer block; the last
        one passes through the encoder's final layer norm, as its own output does.
    """
    positions = encoder.embed_positions.num_embeddings
    if mels.ndim != 3 or mels.shape[-1] != 2 * positions:
        raise ValueError(f"expected N x {encoder.config.num_mel_bins} x {2 * positions} log-mels for this encoder, "
                         f"got {tuple(mels.shape)}; use whisper_log_mel(..., seconds={positions / 50:g})")
    hidden = nn.functional.gelu(encoder.conv1(mels))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1) + encoder.embed_positions.weight
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    states = [hidden]
    for layer in encoder.layers:
        hidden = layer(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        states.append(hidden)
    states[-1] = encoder.layer_norm(hidden)
    return states


class WhisperFeatures(nn.Module):
    """Frozen Whisper encoder as a feature extractor: log-mels in, one vector per layer out.

    Every block's output is mean-pooled over time, so a downstream probe can pick
    the layer that suits its task (content lives higher up, voice lower down).

    Args:
        encoder: A (truncated) Whisper encoder; it is switched to eval mode and run without gradients.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval()

    @property
    def num_layers(self) -> int:
        """Number of pooled vectors per clip (embedding + one per block)."""
        return len(self.encoder.layers) + 1

    @torch.no_grad()
    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``N x 80 x frames`` log-mels -> ``N x (layers + 1) x d_model`` pooled features."""
        return torch.stack([state.mean(dim=1) for state in whisper_hidden_states(self.encoder, mels)], dim=1)


def whisper_features(encoder: nn.Module, mels: torch.Tensor, labels: torch.Tensor, cache_name: str | None = None,
                     fingerprint: str = "", batch_size: int = 32, device: torch.device | str = "cpu",
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled features of every Whisper layer, cached by :func:`~tlutils.features.extract_features`.

    Args:
        encoder: A (truncated) Whisper encoder, used frozen.
        mels: ``N x 80 x frames`` log-mels from :func:`whisper_log_mel`.
        labels: ``N`` labels stored alongside.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook
            number); ``None`` disables caching.
        fingerprint: Identifies the clips; the encoder's depth and length are added here.
        batch_size: Clips per forward pass.
        device: Where to run.
        progress: Show a progress bar.

    Returns:
        ``(features, labels)`` with features of shape ``N x (layers + 1) x d_model``.
    """
    from tlutils.features import extract_features, feature_loader

    extractor = WhisperFeatures(encoder)
    tag = f"whisper|layers={len(encoder.layers)}|positions={encoder.embed_positions.num_embeddings}|{fingerprint}"
    flat, labels = extract_features(extractor, feature_loader(mels, labels, batch_size), cache_name, tag,
                                    torch.device(device), progress)
    return flat.view(len(flat), extractor.num_layers, -1), labels


class WhisperClassifier(nn.Module):
    """Whisper encoder + mean pooling + a linear ``head``, for fine-tuning end to end.

    ``model_blocks`` sees ``encoder.conv1``, ``encoder.conv2``, ``encoder.embed_positions``,
    the ``encoder.layers.i`` and ``encoder.layer_norm``, so
    :func:`~tlutils.surgery.freeze_body_except_last` unfreezes the top blocks.

    Args:
        encoder: A (truncated) Whisper encoder; it is trained in place (pass a copy to keep the original).
        num_classes: Outputs of the new head.
        dropout: Dropout before the head.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.config.d_model, num_classes))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``N x 80 x frames`` log-mels -> ``N x num_classes`` logits."""
        return self.head(whisper_hidden_states(self.encoder, mels)[-1].mean(dim=1))


# ------------------------------------------------------------------ a small CNN from scratch


def _conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm1d(out_channels), nn.ReLU(inplace=True), nn.MaxPool1d(2))


class SmallAudioCNN(nn.Module):
    """A small CNN trained from scratch on log-mel spectrograms (the no-transfer baseline).

    The mel bands are the input channels and the convolutions slide over time
    (a *temporal* CNN): on FSDD it learned faster and ran cheaper than a 2-D CNN
    that treats the spectrogram as an image. Each block is
    conv - BatchNorm - ReLU - 2x max-pool; average pooling over time and a linear
    ``head`` follow. Every spectrogram is standardised inside the model.

    Args:
        n_mels: Mel bands of the input (channels of the first convolution).
        num_classes: Number of outputs.
        channels: Output channels of the conv blocks.
        kernel_size: Width of each convolution in frames (10 ms each).
        dropout: Dropout before the head.
    """

    def __init__(self, n_mels: int, num_classes: int, channels: Sequence[int] = (64, 64, 128),
                 kernel_size: int = 5, dropout: float = 0.2):
        super().__init__()
        widths = [n_mels, *channels]
        self.features = nn.Sequential(*(_conv_block(a, b, kernel_size) for a, b in zip(widths, widths[1:])))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """``N x n_mels x frames`` -> ``N x num_classes`` logits."""
        if spectrograms.ndim != 3:
            raise ValueError(f"expected N x n_mels x frames spectrograms, got shape {tuple(spectrograms.shape)}")
        mean = spectrograms.mean(dim=(1, 2), keepdim=True)
        std = spectrograms.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        return self.head(self.features((spectrograms - mean) / std).mean(dim=-1))


def train_scratch_cnn(spectrograms: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 150,
                      batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                      device: torch.device | str = "cpu") -> tuple[SmallAudioCNN, "History"]:
    """Train a :class:`SmallAudioCNN` from random weights for about ``steps`` optimiser steps.

    A fixed step budget (rather than a fixed number of epochs) gives small and
    large training sets the same compute, so a comparison across set sizes is fair.

    Args:
        spectrograms: ``N x n_mels x frames`` log-mels.
        labels: ``N`` class indices.
        num_classes: Outputs of the head.
        steps: Optimiser steps (rounded up to whole epochs).
        batch_size: Clips per step (fewer when the set is smaller).
        lr: Peak learning rate of the one-cycle schedule.
        seed: Seeds the initial weights and the shuffling.
        device: Where to train.

    Returns:
        ``(model, history)``; the model is in eval mode.
    """
    from tlutils.features import feature_loader
    from tlutils.train import fit
    from tlutils.utils import set_seed

    set_seed(seed)
    model = SmallAudioCNN(spectrograms.shape[1], num_classes)
    loader = feature_loader(spectrograms, labels, min(batch_size, len(labels)), shuffle=True, seed=seed)
    epochs = max(1, -(-steps // len(loader)))
    history = fit(model, loader, epochs=epochs, lr=lr, scheduler="onecycle", device=device, progress=False)
    return model.eval(), history


# ------------------------------------------------------------------ GE2E speaker encoder


class GE2EEncoder(nn.Module):
    """The GE2E speaker encoder (Resemblyzer's architecture).

    Three LSTM layers (40 mel bands -> 256), the last hidden state, a linear layer,
    ReLU and L2 normalisation: one 256-d unit vector per utterance, trained with
    the generalised end-to-end loss so that clips of one voice point the same way.
    """

    def __init__(self, n_mels: int = GE2E_N_MELS, hidden_size: int = 256, embedding_size: int = 256,
                 num_layers: int = 3):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, embedding_size)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``N x frames x 40`` mel power spectrogram -> ``N x 256`` unit-length embeddings."""
        _, (hidden, _) = self.lstm(mels)
        embedding = self.relu(self.linear(hidden[-1]))
        return embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)


def load_ge2e() -> GE2EEncoder:
    """The pre-trained GE2E speaker encoder (Resemblyzer's ``pretrained.pt``), in eval mode.

    The checkpoint also holds the training loss's similarity scale and bias; they
    are not part of the encoder and are left out.

    Raises:
        ValueError: the file does not hold the expected LSTM and linear weights.
    """
    checkpoint = torch.load(resolve("ge2e_speaker").file(".pt"), map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state", checkpoint)
    encoder = GE2EEncoder()
    wanted = set(encoder.state_dict())
    weights = {k: v for k, v in state.items() if k in wanted}
    if set(weights) != wanted:
        raise ValueError(f"the GE2E checkpoint lacks {sorted(wanted - set(weights))}; is it Resemblyzer's pretrained.pt?")
    encoder.load_state_dict(weights)
    return encoder.eval()


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


def ge2e_embeddings(encoder: GE2EEncoder, waves: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None,
                    cache_name: str | None = None, fingerprint: str = "", batch_size: int = 64,
                    device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """GE2E embeddings of clips, cached on disk by :func:`~tlutils.features.extract_features`.

    Args:
        encoder: From :func:`load_ge2e`.
        waves: ``N x samples`` at 16 kHz.
        lengths: Real (unpadded) samples per clip.
        labels: Stored with the cache (zeros when ``None``).
        cache_name: File name under ``data/cache/features/``; ``None`` disables caching.
        fingerprint: Identifies the clips (the model part is added here).
        batch_size: Clips per forward pass.
        device: Where to run.
        progress: Show a progress bar.

    Returns:
        ``N x 256`` unit-length embeddings on the CPU.
    """
    from tlutils.features import extract_features

    labels = torch.zeros(len(waves), dtype=torch.long) if labels is None else labels
    batches = [{"waves": waves[i:i + batch_size], "lengths": lengths[i:i + batch_size],
                "labels": labels[i:i + batch_size]} for i in range(0, len(waves), batch_size)]
    embeddings, _ = extract_features(GE2EEmbedder(encoder), batches, cache_name, f"ge2e|{fingerprint}",
                                     torch.device(device), progress)
    return embeddings


# ------------------------------------------------------------------ enrolment and prototypes


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
    pool (:func:`~tlutils.data.balanced_subset`), averaged into prototypes, and
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
    from tlutils.data import balanced_subset

    offset = pool_features.float().mean(dim=0) if center else torch.zeros(pool_features.shape[1])
    pool, test = pool_features.float() - offset, test_features.float() - offset
    num_classes = int(pool_labels.max()) + 1
    scores = []
    for seed in seeds:
        chosen = torch.from_numpy(balanced_subset(pool_labels.numpy(), clips_per_class, seed))
        prototypes = class_prototypes(pool[chosen], pool_labels[chosen], num_classes)
        scores.append(float((prototype_predict(test, prototypes) == test_labels).float().mean()))
    return float(np.mean(scores))


# ------------------------------------------------------------------ real spoken words in many languages

WORDS_DESCRIPTION = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<language>[a-z]{2}))?\.ogg$")


def _stamp_texts(text_file: Path) -> dict[str, str]:
    """Written descriptions of one stamp by language (the first line is English)."""
    if not text_file.is_file():
        return {}
    lines = text_file.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = {"en": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        language = key.split(".")[0]
        if value and len(language) == 2:
            texts.setdefault(language, value.strip())
    return texts


def load_spoken_words(languages: Sequence[str] | None = None) -> "pandas.DataFrame":
    """List Tux Paint's recorded stamp descriptions: real human speech in about a dozen languages.

    Every stamp (a picture of an animal, a food, a vehicle...) has short recordings
    of its description, one file per language: ``<stamp>_desc_<language>.ogg``, and
    ``<stamp>_desc.ogg`` for English. The written description comes from ``<stamp>.txt``.

    Args:
        languages: Two-letter codes to keep (for example ``("es", "fr")``); ``None`` keeps all.

    Returns:
        A DataFrame with columns ``path``, ``stamp``, ``category`` (the stamp's top-level
        folder), ``language`` and ``text`` (the written description, ``""`` when missing),
        sorted by path.

    Raises:
        FileNotFoundError: no recordings were found in the resolved folder.
    """
    import pandas as pd

    root = resolve("real_words").path
    rows = []
    for path in sorted(root.rglob("*_desc*.ogg")):
        match = WORDS_DESCRIPTION.match(path.name)
        language = (match["language"] or "en") if match else None
        if language is None or (languages is not None and language not in languages):
            continue
        text = _stamp_texts(path.with_name(match["stamp"] + ".txt")).get(language, "")
        rows.append(dict(path=str(path), stamp=match["stamp"], category=path.relative_to(root).parts[0],
                         language=language, text=text))
    if not rows:
        raise FileNotFoundError(f"no <stamp>_desc_<language>.ogg recordings for {languages or 'any language'} under {root}")
    return pd.DataFrame(rows)


DIGIT_NAME = re.compile(r"^(?P<digit>\d)_(?P<language>[a-z]{2})\.ogg$")


def load_digit_names(languages: Sequence[str] | None = None) -> "pandas.DataFrame":
    """List Tux Paint's recordings of the digit names 0-9 (``symbols/math/<digit>_<language>.ogg``).

    They were recorded separately from the stamp descriptions of
    :func:`load_spoken_words`, which makes them a second, independent test set
    for spoken-language identification.

    Returns:
        A DataFrame with columns ``path``, ``digit`` and ``language``, sorted by path.
    """
    import pandas as pd

    folder = resolve("real_words").path / "symbols" / "math"
    rows = [dict(path=str(path), digit=int(match["digit"]), language=match["language"])
            for path in sorted(folder.glob("*_*.ogg")) if (match := DIGIT_NAME.match(path.name))
            and (languages is None or match["language"] in languages)]
    if not rows:
        raise FileNotFoundError(f"no <digit>_<language>.ogg recordings for {languages or 'any language'} in {folder}")
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ transcription


def whisper_prompt(model: nn.Module) -> list[int]:
    """Decoder prompt for plain English transcription: start-of-transcript, then no-timestamps.

    Multilingual checkpoints also get ``<|en|><|transcribe|>`` after the start token.
    """
    config = model.generation_config
    prompt = [config.decoder_start_token_id]
    if getattr(config, "is_multilingual", False):
        prompt += [config.lang_to_id["<|en|>"], config.task_to_id["transcribe"]]
    return prompt + [config.no_timestamps_token_id]


@torch.no_grad()
def greedy_decode(model: nn.Module, encoder_states: torch.Tensor, max_new_tokens: int = 24) -> list[list[int]]:
    """Greedy decoding from encoder outputs, with Whisper's token suppression rules.

    Args:
        model: ``WhisperForConditionalGeneration``.
        encoder_states: ``N x positions x d_model`` encoder outputs (any number of positions).
        max_new_tokens: Upper bound on generated tokens per clip.

    Returns:
        The generated token ids of every clip, without the prompt and end token.
    """
    config = model.generation_config
    end = config.eos_token_id
    ids = torch.tensor([whisper_prompt(model)] * len(encoder_states), device=encoder_states.device)
    finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoder_states).last_hidden_state
        logits = model.proj_out(hidden[:, -1])  # only the last position is needed
        logits[:, list(config.suppress_tokens or [])] = -float("inf")
        if step == 0:
            logits[:, list(config.begin_suppress_tokens or [])] = -float("inf")
        next_ids = logits.argmax(dim=-1).masked_fill(finished, end)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        finished |= next_ids == end
        if bool(finished.all()):
            break
    prompt_length = len(whisper_prompt(model))
    return [[t for t in row[prompt_length:].tolist() if t != end] for row in ids]


@torch.no_grad()
def whisper_transcribe(model: nn.Module, processor, waves: torch.Tensor, encoder: nn.Module | None = None,
                       max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """Zero-shot transcription: Whisper's encoder, then its decoder, greedily.

    Args:
        model: ``WhisperForConditionalGeneration``.
        processor: Its ``WhisperProcessor``.
        waves: ``N x samples`` at 16 kHz.
        encoder: ``None`` uses the model's own encoder on the standard 30-s input;
            a truncated encoder (:func:`truncate_whisper_encoder`) encodes only its own
            length, which is much faster but gives the decoder a context it never saw
            in training.
        max_new_tokens: Upper bound on tokens per clip.
        batch_size: Clips per forward pass.

    Returns:
        One stripped transcript per clip.
    """
    model.eval()
    encoder = encoder if encoder is not None else model.model.encoder
    seconds = encoder.embed_positions.num_embeddings / WHISPER_POSITIONS_PER_SECOND
    texts = []
    for start in range(0, len(waves), batch_size):
        mels = whisper_log_mel(waves[start:start + batch_size], processor.feature_extractor, seconds)
        states = whisper_hidden_states(encoder, mels.to(model.device))[-1]
        tokens = greedy_decode(model, states, max_new_tokens)
        texts += [text.strip() for text in processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return texts


def text_to_digit(text: str) -> int:
    """The digit a transcript names ("Seven." -> 7, "7" -> 7); -1 when it names none or several.

    A lone spoken digit and its homophones sound the same, so "oh", "won", "to",
    "too", "for" and "ate" count as the digit they sound like.
    """
    names = {word: digit for digit, word in enumerate(DIGIT_WORDS)} | HOMOPHONES
    found = {names[t] if t in names else int(t) for t in re.findall(r"[a-z]+|\d", text.lower())
             if t in names or t.isdigit()}
    return found.pop() if len(found) == 1 else -1


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance divided by the reference length (case and punctuation ignored)."""
    ref, hyp = re.findall(r"[\w']+", reference.lower()), re.findall(r"[\w']+", hypothesis.lower())
    if not ref:
        raise ValueError("the reference transcript has no words")
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, guess in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != guess))
    return row[-1] / len(ref)


# ------------------------------------------------------------------ wav2vec 2.0 (online only)


def load_wav2vec2_asr():
    """wav2vec 2.0 base fine-tuned with CTC on LibriSpeech 960 h, from torchaudio's pipeline.

    The weights are resolved like every other asset (``wav2vec2_asr_base_960h``:
    the project cache, then download.pytorch.org), so offline this raises
    :class:`~tlutils.assets.AssetNotFoundError` with the fix instead of a network error.

    Returns:
        ``(model, labels)``: the ``Wav2Vec2Model`` in eval mode and its CTC alphabet
        (index 0 is the blank, ``|`` is the word separator).
    """
    from torchaudio.pipelines import WAV2VEC2_ASR_BASE_960H as bundle

    folder = resolve("wav2vec2_asr_base_960h").path
    # torch.hub finds the file already in model_dir and does not download it again.
    model = bundle.get_model(dl_kwargs={"model_dir": str(folder), "weights_only": True})
    return model.eval(), bundle.get_labels()


def ctc_greedy_decode(emissions: torch.Tensor, labels: Sequence[str], blank: int = 0) -> str:
    """Best path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        emissions: ``frames x len(labels)`` scores of one clip.
        labels: The CTC alphabet; ``|`` separates words.
        blank: Index of the blank symbol.
    """
    best = torch.unique_consecutive(emissions.argmax(dim=-1)).tolist()
    return "".join(labels[i] for i in best if i != blank).replace("|", " ").strip()
