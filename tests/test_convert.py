"""Tests for tlutils.convert: the CTranslate2 reader and the three one-time conversions.

The reader is tested on small synthetic files written here straight from the
format description in ctranslate2/specs/model_spec.py (so the writer does not
share code with the reader). The conversions run on the real files shipped in
pip packages and are skipped, with the reason, when a package is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tlutils.core.assets import resolve
from tlutils.core.convert import (
    _load_checked,
    convert_minilm_onnx,
    convert_smollm2_gguf,
    convert_whisper_ct2,
    ct2_float_weights,
    load_ct2,
    read_ct2,
)
from tlutils.core.paths import project_root
from tlutils.core.sources import MIRROR_ENV, AssetNotFoundError

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TLLAB_OFFLINE": "1"}

# ===================================================================== a CTranslate2 writer for the tests

CT2_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
BFLOAT16 = 5


def ct2_string(text: str) -> bytes:
    """uint16 length counting the final NUL, then UTF-8 bytes and the NUL."""
    data = text.encode("utf-8")
    return struct.pack("<H", len(data) + 1) + data + b"\0"


def ct2_record(name: str, type_id: int, shape: tuple[int, ...], raw: bytes) -> bytes:
    """One variable: name, rank, dimensions, type id, byte count, bytes."""
    dims = b"".join(struct.pack("<I", dim) for dim in shape)
    return ct2_string(name) + struct.pack("<B", len(shape)) + dims + struct.pack("<BI", type_id, len(raw)) + raw


def array_record(name: str, array: np.ndarray) -> bytes:
    return ct2_record(name, CT2_TYPE_IDS[array.dtype.name], array.shape, np.ascontiguousarray(array).tobytes())


def ct2_bytes(records: list[bytes], aliases: dict[str, str] | None = None, spec: str = "TestSpec",
              version: int = 6) -> bytes:
    """A complete model.bin: header, variables, alias table."""
    aliases = aliases or {}
    header = struct.pack("<I", version) + ct2_string(spec) + struct.pack("<II", 3, len(records))
    alias_table = struct.pack("<I", len(aliases)) + b"".join(ct2_string(a) + ct2_string(t) for a, t in aliases.items())
    return header + b"".join(records) + alias_table


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder/embeddings/weight": rng.standard_normal((5, 3)).astype(np.float32),
        "encoder/layer_0/linear/weight": rng.standard_normal((2, 4)).astype(np.float16),
        "encoder/layer_0/linear/bias": np.arange(2, dtype=np.int8),
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "decoder/ids": np.array([7, -1, 2**30], dtype=np.int32),
    }


@pytest.fixture
def sample_model_bin(tmp_path) -> Path:
    records = [array_record(name, array) for name, array in sample_arrays().items()]
    return _write(tmp_path / "model.bin", ct2_bytes(records, aliases={"decoder/projection/weight":
                                                                      "encoder/embeddings/weight"}))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ===================================================================== reader


def test_read_ct2_round_trips_names_shapes_dtypes_and_values(sample_model_bin):
    weights = read_ct2(sample_model_bin)
    for name, array in sample_arrays().items():
        assert weights[name].dtype == array.dtype and weights[name].shape == array.shape, name
        np.testing.assert_array_equal(weights[name], array)
    assert weights["encoder/num_heads"].shape == () and int(weights["encoder/num_heads"]) == 6
    # The alias is resolved to the very array it names.
    assert weights["decoder/projection/weight"] is weights["encoder/embeddings/weight"]


def test_load_ct2_keeps_spec_and_aliases_apart(sample_model_bin):
    ct2 = load_ct2(sample_model_bin)
    assert (ct2.spec_name, ct2.spec_revision) == ("TestSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "encoder/embeddings/weight"}
    assert "decoder/projection/weight" not in ct2.variables


def test_read_ct2_widens_bfloat16_to_float32(tmp_path):
    values = np.array([1.5, -2.0, 0.15625, 2.0**127], dtype=np.float32)  # all exact in bfloat16
    upper_halves = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = _write(tmp_path / "model.bin", ct2_bytes([ct2_record("w", BFLOAT16, (2, 2), upper_halves)]))
    weights = read_ct2(path)
    assert weights["w"].dtype == np.float32
    np.testing.assert_array_equal(weights["w"], values.reshape(2, 2))


def test_ct2_float_weights_undoes_int8_and_int16_quantisation():
    float_weight = np.array([[0.5, -1.0], [2.0, 4.0]], dtype=np.float32)
    row_scale = np.array([127.0, 31.75], dtype=np.float32)  # 127 / row maximum, as CTranslate2 computes it
    variables = {
        "a/weight": np.rint(float_weight * row_scale[:, None]).astype(np.int8), "a/weight_scale": row_scale,
        "b/weight": np.array([[1024, -512]], dtype=np.int16), "b/weight_scale": np.array(1024.0, dtype=np.float32),
        "c/bias": np.array([1.0, 2.0], dtype=np.float16), "num_heads": np.array(6, dtype=np.int16),
    }
    weights = ct2_float_weights(variables)
    assert sorted(weights) == ["a/weight", "b/weight", "c/bias"]
    assert all(array.dtype == np.float32 for array in weights.values())
    np.testing.assert_allclose(weights["a/weight"], float_weight, atol=0.02)
    np.testing.assert_array_equal(weights["b/weight"], [[1.0, -0.5]])


@pytest.mark.parametrize("keep", [3, 10, 40, 58, 100, -1])
def test_truncated_model_bin_names_the_problem(sample_model_bin, keep):
    data = sample_model_bin.read_bytes()
    sample_model_bin.write_bytes(data[:keep])  # cut in the header, a name, a shape, the data, the alias table
    with pytest.raises(ValueError, match="truncated or corrupted"):
        read_ct2(sample_model_bin)


@pytest.mark.parametrize("data, message", [
    (ct2_bytes([], version=5), "binary version 5"),
    (ct2_bytes([ct2_record("w", 0, (2, 2), bytes(12))]), "claims 12 bytes"),
    (ct2_bytes([ct2_record("w", 9, (1,), bytes(4))]), "unknown type id 9"),
    (ct2_bytes([], aliases={"a": "nowhere"}), "points to missing variable"),
    (ct2_bytes([]) + b"junk", "unexpected bytes"),
    (b"\x06\x00\x00\x00\x04\x00abcd" + bytes(8), "not a NUL-terminated string"),
])
def test_corrupted_model_bin_names_the_problem(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_ct2(_write(tmp_path / "model.bin", data))


def test_missing_model_bin_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="CTranslate2 model.bin"):
        read_ct2(tmp_path / "model.bin")


# ===================================================================== the load check every conversion uses


def test_load_checked_refuses_missing_unexpected_and_misshaped_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    good = {name: torch.ones_like(tensor) for name, tensor in model.state_dict().items()}
    _load_checked(model, {k: v for k, v in good.items() if k != "1.weight"}, allowed_missing={"1.weight"})
    assert torch.equal(model[0].weight, torch.ones(2, 3))
    for broken, message in [({k: v for k, v in good.items() if k != "0.bias"}, r"missing: \['0.bias'\]"),
                            ({**good, "2.weight": torch.ones(1)}, r"unexpected: \['2.weight'\]"),
                            ({**good, "0.weight": torch.ones(3, 2)}, r"0.weight: converted \(3, 2\)")]:
        with pytest.raises(ValueError, match=message):
            _load_checked(model, broken)


# ===================================================================== helpers for the real conversions


def package_file(name: str) -> Path:
    """Resolve a raw asset shipped in a pip package, or skip the test saying what is missing."""
    try:
        return resolve(name, build=False, sources=("mirror", "package")).path
    except AssetNotFoundError as error:
        pytest.skip(f"source package for {name} is not installed ({str(error).splitlines()[-1]})")


def fsdd_clip(file_name: str) -> tuple[np.ndarray, int]:
    """Load an FSDD recording from the data mirror (CI's location if $TLLAB_MIRROR is unset)."""
    import soundfile

    mirror = Path(os.environ.get(MIRROR_ENV) or project_root().parent / "shared" / "data")
    path = mirror / "fsdd" / "recordings" / file_name
    if not path.is_file():
        pytest.skip(f"FSDD recording {path} not found; set ${MIRROR_ENV} to a folder holding fsdd/")
    audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate


@contextlib.contextmanager
def offline_env():
    """Module-scoped fixtures run before conftest's per-test offline settings, so set them here too."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    source = package_file("whisper_tiny_en_ct2")
    out_dir = tmp_path_factory.mktemp("whisper_tiny_en")
    with offline_env():
        convert_whisper_ct2(source, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    return model, WhisperProcessor.from_pretrained(whisper_dir)


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnx", reason="onnx reads the MiniLM-L3 graph")
    onnx_file, tokenizer_dir = package_file("minilm_l3_onnx"), package_file("minilm_l6")
    out_dir = tmp_path_factory.mktemp("minilm_l3")
    with offline_env():
        convert_minilm_onnx(onnx_file, tokenizer_dir, out_dir)
    return out_dir


# ===================================================================== Whisper


def test_whisper_conversion_is_a_complete_tied_model(whisper):
    model, processor = whisper
    parameters = sum(p.numel() for p in model.parameters())
    assert 37.5e6 < parameters < 38.0e6  # Whisper tiny.en has 37.8M
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # Every output id has a token: the 1,501 timestamps <|0.00|> ... <|30.00|> end the vocabulary.
    tokenizer = processor.tokenizer
    assert len(tokenizer) == model.config.vocab_size == 51864
    assert tokenizer.convert_ids_to_tokens([50362, 50363, 51863]) == ["<|notimestamps|>", "<|0.00|>", "<|30.00|>"]
    assert tokenizer.decode([50257, 50362, 17250, 13, 50256], skip_special_tokens=True) == "Hi."
    assert model.generation_config.no_timestamps_token_id == 50362


def whisper_features(processor, clip: str) -> torch.Tensor:
    """Log-mel features of an FSDD clip, resampled from 8 kHz to Whisper's 16 kHz."""
    import torchaudio.functional

    audio, rate = fsdd_clip(clip)
    audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy()
    return processor(audio, sampling_rate=16000, return_tensors="pt").input_features


@pytest.mark.parametrize("clip, words", [("6_jackson_28.wav", {"six", "6"}), ("3_jackson_30.wav", {"three", "3"})])
def test_whisper_first_token_is_the_spoken_digit(whisper, clip, words):
    model, processor = whisper
    prompt = torch.tensor([[50257, 50362]])  # <|startoftranscript|> <|notimestamps|>
    with torch.no_grad():
        encoded = model.model.encoder(whisper_features(processor, clip)).last_hidden_state
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=prompt).logits[0, -1]
    assert encoded.shape == (1, 1500, 384)  # 30 s of (padded) audio, 20 ms per encoder frame
    assert processor.tokenizer.decode([int(logits.argmax())]).strip().lower() in words


def test_whisper_generate_transcribes_a_real_recording(whisper):
    model, processor = whisper
    with torch.no_grad():
        generated = model.generate(whisper_features(processor, "2_lucas_2.wav"), max_new_tokens=8)
    assert processor.tokenizer.decode(generated[0], skip_special_tokens=True).strip() == "Two."


def test_whisper_rejects_another_ctranslate2_model(tmp_path):
    _write(tmp_path / "model.bin", ct2_bytes([], spec="TransformerSpec"))
    with pytest.raises(ValueError, match="not a WhisperSpec"):
        convert_whisper_ct2(tmp_path, tmp_path / "out")


def test_whisper_reports_a_truncated_real_model_bin(tmp_path):
    source = package_file("whisper_tiny_en_ct2")
    with open(source / "model.bin", "rb") as handle:
        _write(tmp_path / "model.bin", handle.read(1 << 20))
    with pytest.raises(ValueError, match="truncated"):
        convert_whisper_ct2(tmp_path, tmp_path / "out")


def test_whisper_needs_its_tokenizer(tmp_path):
    source = package_file("whisper_tiny_en_ct2")
    for name in ("model.bin", "config.json"):
        (tmp_path / name).symlink_to(source / name)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        convert_whisper_ct2(tmp_path, tmp_path)


# ===================================================================== MiniLM-L3


def test_minilm_embeddings_rank_paraphrases_first(minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(minilm_dir).eval(), AutoTokenizer.from_pretrained(minilm_dir)
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (3, 12)
    assert 17.3e6 < sum(p.numel() for p in model.parameters()) < 17.5e6
    sentences = ["A man is playing guitar.", "Someone plays an instrument.", "The stock market fell today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(embeddings[0] @ embeddings[1]), float(embeddings[0] @ embeddings[2])
    assert similar > unrelated + 0.2, (similar, unrelated)


def test_minilm_rejects_a_tokenizer_of_another_size(tmp_path):
    pytest.importorskip("onnx", reason="onnx reads the MiniLM-L3 graph")
    onnx_file, tokenizer_dir = package_file("minilm_l3_onnx"), package_file("minilm_l6")
    fake_tokenizer = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, fake_tokenizer, ignore=shutil.ignore_patterns("*.safetensors"))
    vocab = (fake_tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (fake_tokenizer / "vocab.txt").write_text("\n".join(vocab[:1000]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has 1000 tokens but the model has 30522"):
        convert_minilm_onnx(onnx_file, fake_tokenizer, tmp_path / "out")


def test_minilm_rejects_a_file_that_is_not_onnx(tmp_path):
    pytest.importorskip("onnx", reason="onnx reads the MiniLM-L3 graph")
    not_onnx = _write(tmp_path / "model.onnx", b"definitely not a protobuf" * 10)
    with pytest.raises(ValueError, match="ONNX|BERT"):
        convert_minilm_onnx(not_onnx, tmp_path, tmp_path)


# ===================================================================== SmolLM2


def test_smollm2_rejects_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF model file"):
        convert_smollm2_gguf(tmp_path / "missing.gguf", tmp_path)
    with pytest.raises(ValueError, match="not a GGUF model file"):
        convert_smollm2_gguf(_write(tmp_path / "model.gguf", b"PK\x03\x04 a zip file"), tmp_path)


def test_smollm2_conversion_answers_a_chat_question(tmp_path):
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    out_dir = tmp_path / "smollm2_135m"
    out_dir.mkdir()
    try:
        convert_smollm2_gguf(package_file("smollm2_gguf"), out_dir)
        check_smollm2_folder(out_dir)
    finally:
        shutil.rmtree(out_dir)  # 540 MB: do not leave it in pytest's kept temporary folders


def check_smollm2_folder(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None  # a plain checkpoint, not GGUF-backed
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    with torch.no_grad():
        answer = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:]
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)
