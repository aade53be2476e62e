"""Loaders that turn resolved assets into ready pre-trained models.

Every loader goes through :func:`tlutils.assets.resolve`, so the same call works
offline (mirror, package, cache) and online (the canonical download). Weights
files are read with ``torch.load(weights_only=True)`` or safetensors only.

Example:
    >>> model = load_mobilenet_v2()          # real ImageNet weights
    >>> random_model = load_mobilenet_v2(pretrained=False)
"""

from __future__ import annotations

import pickle
import zipfile

import torch
import torchvision
from torch import nn

from tlutils.core.assets import resolve
from tlutils.core.sources import AssetDamagedError, Resolved
from tlutils.core.surgery import conv_out_channels

TORCHVISION_CLASSICS = ("resnet18", "resnet50", "vgg16", "inception_v3")
HUB_CLASSICS = ("bert-base-uncased", "roberta-base", "gpt2", "wav2vec2-base")


def load_weights_file(found: Resolved, suffix: str = ".pth") -> dict:
    """Read the resolved asset's weights file with ``torch.load(weights_only=True)``.

    Raises:
        AssetDamagedError: the file cannot be read (truncated, corrupted, not a torch
            file); the message names the file, where it came from and the fix.
    """
    path = found.file(suffix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise AssetDamagedError(
            f"{path} (asset {found.name!r}, from the {found.source} source) cannot be read as torch weights: "
            f"{str(error).splitlines()[0]}\nFix: {found.fix or 'delete the file and resolve the asset again'}"
        ) from None


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (bundled with torchvision, no download)."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def load_mobilenet_v2(pretrained: bool = True) -> nn.Module:
    """torchvision MobileNetV2 with its official ImageNet weights (or random ones).

    Args:
        pretrained: ``False`` builds the same architecture randomly initialised,
            for comparisons with training from scratch.
    """
    model = torchvision.models.mobilenet_v2()
    if pretrained:
        model.load_state_dict(load_weights_file(resolve("mobilenet_v2")))
    return model.eval()


def load_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with ImageNet weights.

    The offline weights use another library's key names but the same parameter
    order and shapes, so they are mapped positionally after checking every shape.
    Inputs are normalised with mean = std = 0.5 (``tlutils.core.datasets.LITE_MEAN``).
    """
    import timm

    if not pretrained:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    found = resolve("efficientnet_lite0")
    if found.source == "online":
        return timm.create_model(f"hf-hub:{found.location}", pretrained=True).eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source, target = load_weights_file(found), model.state_dict()
    shapes_match = len(source) == len(target) and all(
        a.shape == b.shape for a, b in zip(source.values(), target.values())
    )
    if not shapes_match:
        raise ValueError(
            f"{found.location} does not match tf_efficientnet_lite0 parameter for parameter; "
            "is it the EfficientNet-Lite0 file?"
        )
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model.eval()


def load_torchvision_classic(name: str, pretrained: bool = True) -> nn.Module:
    """ResNet-18/50, VGG-16 or Inception-v3 from torchvision.

    With ``pretrained=False`` the architecture is built offline (for parameter
    counts and anatomy); the ImageNet weights need the internet once.
    """
    if name not in TORCHVISION_CLASSICS:
        raise ValueError(f"unknown torchvision model {name!r}; choose one of {TORCHVISION_CLASSICS}")
    state = load_weights_file(resolve(name)) if pretrained else None  # offline, fail before building anything
    extra = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    model = getattr(torchvision.models, name)(**extra)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def load_text_encoder(name: str = "minilm_l6"):
    """A BERT-family encoder and its tokenizer: ``(tokenizer, model)``.

    Args:
        name: ``"minilm_l6"``, ``"minilm_l3"`` or an online-only name such as ``"bert-base-uncased"``.
    """
    from transformers import AutoModel, AutoTokenizer

    location = resolve(name).location
    model, info = AutoModel.from_pretrained(location, output_loading_info=True)
    _fix_newly_initialised(model, info.get("missing_keys", ()))
    return AutoTokenizer.from_pretrained(location), model.eval()


def _fix_newly_initialised(model, names) -> None:
    """Give the weights a checkpoint lacks (e.g. an unused BERT pooler) the same values in every process.

    Transformers initialises them from the global random state, which would make the model's
    fingerprint, and so every feature cache keyed on it, differ from run to run. A private
    generator leaves the global random state exactly as the load left it.
    """
    generator = torch.Generator().manual_seed(0)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(names):
            if name in state and state[name].is_floating_point():
                tensor = state[name]
                values = (torch.randn(tensor.shape, generator=generator) * 0.02 if tensor.dim() > 1
                          else torch.zeros(tensor.shape))
                tensor.copy_(values.to(tensor.dtype))


def load_smollm2():
    """SmolLM2-135M-Instruct as ``(tokenizer, LlamaForCausalLM)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve("smollm2_135m").location
    return AutoTokenizer.from_pretrained(location), AutoModelForCausalLM.from_pretrained(location).eval()


def load_whisper():
    """Whisper tiny.en as ``(processor, WhisperForConditionalGeneration)``."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    location = resolve("whisper_tiny_en").location
    return WhisperProcessor.from_pretrained(location), WhisperForConditionalGeneration.from_pretrained(location).eval()


def load_pretrained(name: str):
    """Load a pre-trained image, text or Whisper model by its asset name.

    The GE2E speaker encoder and wav2vec 2.0 have their own loaders in
    :mod:`tlutils.audio` (:func:`~tlutils.core.models.load_ge2e`, :func:`~tlutils.core.models.load_wav2vec2_asr`).

    Returns:
        The model, or ``(tokenizer_or_processor, model)`` for text and speech models.
    """
    loaders = {
        "mobilenet_v2": load_mobilenet_v2,
        "efficientnet_lite0": load_efficientnet_lite0,
        "minilm_l6": lambda: load_text_encoder("minilm_l6"),
        "minilm_l3": lambda: load_text_encoder("minilm_l3"),
        "smollm2_135m": load_smollm2,
        "whisper_tiny_en": load_whisper,
        "yolov3_tiny": load_yolov3_tiny,
        **{n: (lambda n=n: load_torchvision_classic(n)) for n in TORCHVISION_CLASSICS},
        **{n: (lambda n=n: load_text_encoder(n)) for n in HUB_CLASSICS if n != "wav2vec2-base"},
    }
    if name not in loaders:
        raise ValueError(f"no model loader for {name!r}; choose one of {sorted(loaders)}")
    return loaders[name]()


def mobilenet_v2_backbone(pretrained: bool = True, blocks: int = 14) -> nn.Sequential:
    """The first ``blocks`` blocks of MobileNetV2's ``features`` as a detection backbone.

    ``blocks=14`` ends after the last 96-channel block (stride 16), fine enough for
    small objects; ``blocks=19`` is the whole body (1280 channels, stride 32).

    Args:
        pretrained: ImageNet weights (``True``) or a random initialisation.
        blocks: How many blocks of ``features`` to keep (1-19).

    Returns:
        An ``nn.Sequential`` with an ``out_channels`` attribute (what torchvision's
        detectors need).
    """

    features = load_mobilenet_v2(pretrained=pretrained).features
    if not 1 <= blocks <= len(features):
        raise ValueError(f"blocks must be between 1 and {len(features)}, got {blocks}")
    body = nn.Sequential(*features[:blocks])
    body.out_channels = conv_out_channels(body)
    return body


#: Resemblyzer's GE2E front end: 40 mel bands, 25 ms windows, 10 ms hop, 1.6 s partials.
GE2E_N_MELS = 40


class GE2EEncoder(nn.Module):
    """The GE2E speaker encoder (Resemblyzer's architecture).

    Three LSTM layers (40 mel bands -> 256), the last hidden state, a linear layer,
    ReLU and L2 normalisation: one 256-d unit vector per utterance, trained with
    the generalised end-to-end loss so that clips of one voice point the same way.
    """

    def __init__(
        self, n_mels: int = GE2E_N_MELS, hidden_size: int = 256, embedding_size: int = 256, num_layers: int = 3
    ):
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
    checkpoint = load_weights_file(resolve("ge2e_speaker"), ".pt")
    state = checkpoint.get("model_state", checkpoint)
    encoder = GE2EEncoder()
    wanted = set(encoder.state_dict())
    weights = {k: v for k, v in state.items() if k in wanted}
    if set(weights) != wanted:
        raise ValueError(
            f"the GE2E checkpoint lacks {sorted(wanted - set(weights))}; is it Resemblyzer's pretrained.pt?"
        )
    encoder.load_state_dict(weights)
    return encoder.eval()


def load_wav2vec2_asr():
    """wav2vec 2.0 base fine-tuned with CTC on LibriSpeech 960 h, from torchaudio's pipeline.

    The weights are resolved like every other asset (``wav2vec2_asr_base_960h``:
    the project cache, then download.pytorch.org), so offline this raises
    :class:`~tlutils.core.sources.AssetNotFoundError` with the fix instead of a network error.

    Returns:
        ``(model, labels)``: the ``Wav2Vec2Model`` in eval mode and its CTC alphabet
        (index 0 is the blank, ``|`` is the word separator).
    """
    from torchaudio.pipelines import WAV2VEC2_ASR_BASE_960H as bundle

    folder = resolve("wav2vec2_asr_base_960h").path
    # torch.hub finds the file already in model_dir and does not download it again.
    model = bundle.get_model(dl_kwargs={"model_dir": str(folder), "weights_only": True})
    return model.eval(), bundle.get_labels()


def load_yolov3_tiny(pretrained: bool = True):
    """YOLOv3-tiny with Darknet's COCO weights (80 classes, 8.9M parameters), in eval mode.

    The weights are the official ``yolov3-tiny.weights``, checked by sha256 and converted once
    (``python -m tlutils prepare`` or the first call) into a PyTorch state dict.

    Args:
        pretrained: ``False`` builds the same network randomly initialised.

    Returns:
        A :class:`~tlutils.core.yolo.YOLOv3Tiny` whose ``class_names`` are the 80 COCO classes.

    Example:
        >>> from tlutils.core.yolo import detect
        >>> found = detect(load_yolov3_tiny(), image, score_threshold=0.5)
    """
    from tlutils.core.convert import read_class_names
    from tlutils.core.yolo import YOLOv3Tiny

    if not pretrained:
        return YOLOv3Tiny(num_classes=80).eval()
    found = resolve("yolov3_tiny")
    model = YOLOv3Tiny(num_classes=80, class_names=read_class_names(found.path / "coco.names"))
    model.load_state_dict(load_weights_file(found, ".pt"))
    return model.eval()
