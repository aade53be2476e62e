"""Audio front ends, the truncated Whisper encoder, GE2E, the scratch CNN and enrolment classifiers."""

import math

import numpy as np
import pytest
import torch

from tlutils.core.assets import resolve
from tlutils.core.data import fixed_length, load_clips, load_spoken_words, trim_silence
from tlutils.core.metrics import word_error_rate
from tlutils.core.models import GE2EEncoder, load_ge2e, load_wav2vec2_asr
from tlutils.core.sources import AssetNotFoundError
from tlutils.core.surgery import freeze_body_except_last, trainable_parameter_count
from tlutils.core.train import fit
from tlutils.topics.speaker import (
    class_prototypes,
    enrolment_accuracy,
    ge2e_embeddings,
    normalize_volume,
    prototype_predict,
)
from tlutils.topics.speech import (
    SmallAudioCNN,
    WhisperClassifier,
    ctc_greedy_decode,
    greedy_decode,
    log_mel_spectrogram,
    text_to_digit,
    train_scratch_cnn,
    truncate_whisper_encoder,
    whisper_features,
    whisper_hidden_states,
    whisper_log_mel,
)


def tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return amplitude * torch.sin(2 * math.pi * frequency * t)


def write_wav(path, wave: torch.Tensor, rate: int):
    import soundfile

    soundfile.write(str(path), wave.numpy(), rate)
    return path


@pytest.fixture(scope="module")
def tiny_whisper():
    """A tiny, randomly initialised Whisper with the real input layout (80 mels, 1,500 positions)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
                           decoder_start_token_id=60, eos_token_id=61, pad_token_id=61, bos_token_id=61)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config.no_timestamps_token_id = 62
    model.generation_config.suppress_tokens = [63]
    model.generation_config.begin_suppress_tokens = [61]
    return model


# ------------------------------------------------------------------ clips and front ends


def test_fixed_length_crops_and_pads():
    wave = torch.arange(5.0)
    assert torch.equal(fixed_length(wave, 3), torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(fixed_length(wave, 7), torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="1-D"):
        fixed_length(torch.zeros(2, 5), 3)


def test_trim_silence_keeps_the_sound():
    rate = 8000
    wave = torch.cat([torch.zeros(rate // 2), tone(300, 0.25, rate), torch.zeros(rate // 4)])
    trimmed = trim_silence(wave, rate)
    assert abs(len(trimmed) - rate // 4) <= rate // 50
    assert torch.equal(trim_silence(torch.zeros(100), rate), torch.zeros(100))


def test_load_clips_resamples_pads_and_reports_lengths(tmp_path):
    short = write_wav(tmp_path / "a.wav", tone(440, 0.5, 8000), 8000)
    long = write_wav(tmp_path / "b.wav", tone(440, 1.5, 16000), 16000)
    waves, lengths = load_clips([short, long], seconds=1.0, sample_rate=16000)
    assert waves.shape == (2, 16000)
    assert lengths.tolist() == [8000, 16000]
    assert waves[0, 8100:].abs().max() < 0.05  # padded with silence
    spectrum = torch.fft.rfft(waves[0, :8000]).abs()
    assert abs(int(spectrum.argmax()) * 16000 / 8000 - 440) <= 2  # the tone survives resampling
    with pytest.raises(ValueError, match="no paths"):
        load_clips([])


def test_log_mel_puts_a_higher_tone_in_a_higher_band():
    waves = torch.stack([tone(300, 1.0, 16000), tone(3000, 1.0, 16000)])
    mels = log_mel_spectrogram(waves, n_mels=40)
    assert mels.shape == (2, 40, 101)
    low_band, high_band = (mels[i].mean(dim=1).argmax().item() for i in range(2))
    assert high_band > low_band
    assert all(float(m.max() - m.min()) <= 80.0 + 1e-3 for m in mels)  # the top_db floor, per clip


def test_whisper_log_mel_for_one_second_equals_the_start_of_thirty():
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    waves = fixed_length(tone(500, 0.6, 16000), 16000)[None]
    short = whisper_log_mel(waves, extractor, seconds=1.0)
    full = extractor([waves[0].numpy()], sampling_rate=16000, return_tensors="pt").input_features
    assert short.shape == (1, 80, 100) and full.shape == (1, 80, 3000)
    assert torch.allclose(short, full[..., :100], atol=1e-4)


# ------------------------------------------------------------------ Whisper encoder


def test_truncated_encoder_matches_the_transformers_forward(tiny_whisper):
    encoder = tiny_whisper.model.encoder
    short = truncate_whisper_encoder(encoder, seconds=1.0)
    assert short.embed_positions.num_embeddings == 50 and short.config.max_source_positions == 50
    assert encoder.embed_positions.num_embeddings == 1500  # the original is untouched
    assert torch.equal(short.embed_positions.weight, encoder.embed_positions.weight[:50])
    mels = torch.randn(3, 80, 100)
    with torch.no_grad():
        states = whisper_hidden_states(short, mels)
        reference = short(mels).last_hidden_state
    assert len(states) == 3 and states[0].shape == (3, 50, 32)
    assert torch.allclose(states[-1], reference, atol=1e-5)
    with pytest.raises(ValueError, match="log-mels"):
        whisper_hidden_states(short, torch.randn(3, 80, 3000))
    with pytest.raises(ValueError, match="whole number"):
        truncate_whisper_encoder(encoder, seconds=0.01)


def test_whisper_features_are_pooled_per_layer_and_cached(tiny_whisper, temp_cache):
    short = truncate_whisper_encoder(tiny_whisper.model.encoder, seconds=1.0)
    mels, labels = torch.randn(5, 80, 100), torch.arange(5)
    features, same_labels = whisper_features(short, mels, labels, "test_whisper", fingerprint="toy")
    assert features.shape == (5, 3, 32) and torch.equal(same_labels, labels)
    assert (temp_cache / "features" / "test_whisper.safetensors").is_file()
    written = (temp_cache / "features" / "test_whisper.safetensors").stat().st_mtime_ns
    again, _ = whisper_features(short, mels, labels, "test_whisper", fingerprint="toy")
    assert torch.equal(features, again)  # read from the cache, not recomputed (the file is not rewritten)
    assert (temp_cache / "features" / "test_whisper.safetensors").stat().st_mtime_ns == written
    with pytest.warns(UserWarning, match="data or labels changed"):  # other clips, same fingerprint text
        other, _ = whisper_features(short, torch.zeros_like(mels), labels, "test_whisper", fingerprint="toy")
    assert not torch.equal(features, other)


def test_partial_fine_tuning_trains_only_the_top(tiny_whisper):
    torch.manual_seed(0)
    model = WhisperClassifier(truncate_whisper_encoder(tiny_whisper.model.encoder, seconds=0.2), num_classes=2)
    freeze_body_except_last(model, 2)  # last block + final layer norm
    top = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("encoder.layers.1", "encoder.layer_norm", "head")))
    assert trainable_parameter_count(model) == top
    labels = torch.arange(32) % 2
    mels = torch.randn(32, 80, 20) + 2.0 * labels[:, None, None]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(mels, labels), batch_size=8, shuffle=True)
    history = fit(model, loader, epochs=4, lr=3e-3, seed=0, progress=False, device="cpu")
    assert history.train_loss[-1] < history.train_loss[0]


def test_greedy_decode_stops_and_respects_suppression(tiny_whisper):
    states = torch.randn(2, 50, 32)
    tokens = greedy_decode(tiny_whisper, states, max_new_tokens=5)
    assert len(tokens) == 2 and all(len(row) <= 5 for row in tokens)
    assert all(63 not in row and 61 not in row for row in tokens)


# ------------------------------------------------------------------ scratch CNN


def test_scratch_cnn_learns_tones():
    rate, labels = 16000, torch.arange(24) % 3
    waves = torch.stack([tone(300 + 900 * int(c), 0.5, rate) * (0.3 + 0.05 * i) for i, c in enumerate(labels)])
    mels = log_mel_spectrogram(waves, n_mels=32)
    model, history = train_scratch_cnn(mels, labels, 3, steps=30, batch_size=8, seed=0)
    assert history.train_loss[-1] < history.train_loss[0]
    assert model(mels).shape == (24, 3)
    with pytest.raises(ValueError, match="n_mels x frames"):
        SmallAudioCNN(32, 3)(mels[0])


# ------------------------------------------------------------------ GE2E and enrolment


def test_ge2e_encoder_outputs_unit_vectors():
    torch.manual_seed(0)
    embeddings = GE2EEncoder()(torch.rand(3, 50, 40))
    assert embeddings.shape == (3, 256)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_normalize_volume_lifts_quiet_clips_only():
    waves = torch.stack([tone(200, 1.0, 16000, amplitude=0.001), tone(200, 1.0, 16000, amplitude=0.9)])
    lengths = torch.tensor([8000, 16000])
    out = normalize_volume(waves, lengths, target_dbfs=-30.0)
    level = 10 * torch.log10(out[0, :8000].pow(2).mean())
    assert abs(float(level) + 30.0) < 0.5
    assert torch.equal(out[1], waves[1])


def test_prototypes_and_enrolment_on_separable_data():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 5
    labels = torch.arange(40) % 4
    features = centres[labels] + 0.3 * torch.randn(40, 4, generator=generator)
    prototypes = class_prototypes(features, labels, 4)
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(4))
    assert torch.equal(prototype_predict(features, prototypes), labels)
    assert enrolment_accuracy(features[:20], labels[:20], features[20:], labels[20:], 2, seeds=(0, 1)) == 1.0
    with pytest.raises(ValueError, match="no enrolment example"):
        class_prototypes(features[labels < 3], labels[labels < 3], 4)


def _resolves(name: str) -> bool:
    try:
        resolve(name, build=False)
        return True
    except AssetNotFoundError:
        return False


@pytest.mark.skipif(not (_resolves("ge2e_speaker") and _resolves("fsdd")),
                    reason="needs the resemblyzer package (GE2E weights) and the FSDD recordings")
def test_pretrained_ge2e_tells_fsdd_speakers_apart():
    from tlutils.core.data import load_fsdd

    table = load_fsdd("test")
    table = table[table["speaker"].isin(["george", "jackson", "lucas"]) & (table["take"] == 0)].reset_index(drop=True)
    waves, lengths = load_clips(list(table["path"]), seconds=1.0)
    embeddings = ge2e_embeddings(load_ge2e(), waves, lengths)
    cosine = embeddings @ embeddings.T
    speakers = table["speaker"].to_numpy()
    same = (speakers[:, None] == speakers[None]) & ~np.eye(len(speakers), dtype=bool)
    different = speakers[:, None] != speakers[None]
    assert cosine[torch.from_numpy(same)].mean() > cosine[torch.from_numpy(different)].mean() + 0.05


# ------------------------------------------------------------------ words, transcripts, wav2vec 2.0


@pytest.mark.skipif(not _resolves("real_words"), reason="needs Debian's tuxpaint-stamps-default (the recordings)")
def test_spoken_words_table():
    words = load_spoken_words(["fr", "en"])
    assert set(words["language"]) == {"fr", "en"}
    assert {"path", "stamp", "category", "language", "text"} <= set(words.columns)
    assert (words[words["language"] == "en"]["text"] != "").mean() > 0.9


def test_text_to_digit_and_word_error_rate():
    assert [text_to_digit(t) for t in ("Seven.", "7", "to", "Thank you.", "1 2", "8th 8th")] == [7, 7, 2, -1, -1, 8]
    assert word_error_rate("A red kangaroo.", "a red kangaroo") == 0.0
    assert word_error_rate("A red kangaroo.", "a kangaroo") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("...", "a")


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    labels = ("-", "|", "A", "B")
    path = [2, 2, 0, 2, 1, 3, 3, 0]
    emissions = torch.nn.functional.one_hot(torch.tensor(path), 4).float()
    assert ctc_greedy_decode(emissions, labels) == "AA B"


def test_wav2vec2_offline_error_names_the_asset():
    with pytest.raises(AssetNotFoundError, match="wav2vec2_asr_base_960h"):
        load_wav2vec2_asr()
