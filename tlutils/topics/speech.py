"""Speech with a pre-trained Whisper encoder: features, classifiers, transcription, and a scratch CNN.

Whisper's encoder expects 30-s inputs; :func:`truncate_whisper_encoder` cuts its
position table so a 1-s clip costs 1/30 of the compute (the features differ from the
padded ones, a choice the notebook measures).
"""

from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from torch import nn

from tlutils.core.data import SAMPLE_RATE
from tlutils.core.runtime import resolve_device
from tlutils.core.train import History

#: Whisper's log-mel has 100 frames per second (10 ms hop); its stride-2 convolution halves that.
WHISPER_POSITIONS_PER_SECOND = 50


HOMOPHONES = {"oh": 0, "won": 1, "to": 2, "too": 2, "for": 4, "ate": 8}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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
                     fingerprint: str = "", batch_size: int = 32, device: torch.device | str | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled features of every Whisper layer, cached by :func:`~tlutils.core.features.extract_features`.

    Args:
        encoder: A (truncated) Whisper encoder, used frozen.
        mels: ``N x 80 x frames`` log-mels from :func:`whisper_log_mel`.
        labels: ``N`` labels stored alongside.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook
            number); ``None`` disables caching.
        fingerprint: Optional extra text for the cache key; the encoder's weights and depth, the
            log-mels and the labels are part of the key already.
        batch_size: Clips per forward pass.
        device: Where to run; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(features, labels)`` with features of shape ``N x (layers + 1) x d_model``.
    """
    from tlutils.core.features import extract_features, feature_loader

    if mels.dim() != 3 or len(labels) != len(mels):
        raise ValueError(f"expected N x 80 x frames log-mels and N labels, got {tuple(mels.shape)} and "
                         f"{len(labels)} labels; make them with whisper_log_mel(waves, feature_extractor)")
    extractor = WhisperFeatures(encoder)
    tag = f"whisper|layers={len(encoder.layers)}|positions={encoder.embed_positions.num_embeddings}|{fingerprint}"
    flat, labels = extract_features(extractor, feature_loader(mels, labels, batch_size), cache_name, tag,
                                    resolve_device(device), progress)
    return flat.view(len(flat), extractor.num_layers, -1), labels


class WhisperClassifier(nn.Module):
    """Whisper encoder + mean pooling + a linear ``head``, for fine-tuning end to end.

    ``model_blocks`` sees ``encoder.conv1``, ``encoder.conv2``, ``encoder.embed_positions``,
    the ``encoder.layers.i`` and ``encoder.layer_norm``, so
    :func:`~tlutils.core.surgery.freeze_body_except_last` unfreezes the top blocks.

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
                      device: torch.device | str | None = None) -> tuple[SmallAudioCNN, History]:
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
        device: Where to train; ``None`` picks :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``(model, history)``; the model is in eval mode.
    """
    from tlutils.core.features import feature_loader
    from tlutils.core.runtime import seeded
    from tlutils.core.train import fit

    with seeded(seed):  # same numbers for the same seed; the caller's random state is left alone
        model = SmallAudioCNN(spectrograms.shape[1], num_classes)
        loader = feature_loader(spectrograms, labels, min(batch_size, len(labels)), shuffle=True, seed=seed)
        epochs = max(1, -(-steps // len(loader)))
        history = fit(model, loader, epochs=epochs, lr=lr, scheduler="onecycle", device=device, progress=False)
    return model.eval(), history


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


def ctc_greedy_decode(emissions: torch.Tensor, labels: Sequence[str], blank: int = 0) -> str:
    """Best path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        emissions: ``frames x len(labels)`` scores of one clip.
        labels: The CTC alphabet; ``|`` separates words.
        blank: Index of the blank symbol.
    """
    best = torch.unique_consecutive(emissions.argmax(dim=-1)).tolist()
    return "".join(labels[i] for i in best if i != blank).replace("|", " ").strip()
