"""Loaders that turn resolved assets into ready pre-trained models.

Every loader goes through :func:`tlutils.assets.resolve`, so the same call works
offline (mirror, package, cache) and online (the canonical download). Weights
files are read with ``torch.load(weights_only=True)`` or safetensors only.

Example:
    >>> model = load_mobilenet_v2()          # real ImageNet weights
    >>> random_model = load_mobilenet_v2(pretrained=False)
"""

from __future__ import annotations


import torch
import torchvision
from torch import nn

from tlutils.assets import Resolved, resolve

TORCHVISION_CLASSICS = ("resnet18", "resnet50", "vgg16", "inception_v3")
HUB_CLASSICS = ("bert-base-uncased", "roberta-base", "gpt2", "wav2vec2-base")


def _load_state(found: Resolved) -> dict:
    return torch.load(found.file(".pth"), map_location="cpu", weights_only=True)


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
        model.load_state_dict(_load_state(resolve("mobilenet_v2")))
    return model.eval()


def load_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with ImageNet weights.

    The offline weights use another library's key names but the same parameter
    order and shapes, so they are mapped positionally after checking every shape.
    Inputs are normalised with mean = std = 0.5 (``tlutils.data.LITE_MEAN``).
    """
    import timm

    if not pretrained:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    found = resolve("efficientnet_lite0")
    if found.source == "online":
        return timm.create_model(f"hf-hub:{found.location}", pretrained=True).eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source, target = _load_state(found), model.state_dict()
    shapes_match = len(source) == len(target) and all(
        a.shape == b.shape for a, b in zip(source.values(), target.values()))
    if not shapes_match:
        raise ValueError(f"{found.location} does not match tf_efficientnet_lite0 parameter for parameter; "
                         "is it the EfficientNet-Lite0 file?")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model.eval()


def load_torchvision_classic(name: str, pretrained: bool = True) -> nn.Module:
    """ResNet-18/50, VGG-16 or Inception-v3 from torchvision.

    With ``pretrained=False`` the architecture is built offline (for parameter
    counts and anatomy); the ImageNet weights need the internet once.
    """
    if name not in TORCHVISION_CLASSICS:
        raise ValueError(f"unknown torchvision model {name!r}; choose one of {TORCHVISION_CLASSICS}")
    state = _load_state(resolve(name)) if pretrained else None  # offline, fail before building anything
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
    return AutoTokenizer.from_pretrained(location), AutoModel.from_pretrained(location).eval()


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
    :mod:`tlutils.audio` (:func:`~tlutils.audio.load_ge2e`, :func:`~tlutils.audio.load_wav2vec2_asr`).

    Returns:
        The model, or ``(tokenizer_or_processor, model)`` for text and speech models.
    """
    loaders = {
        "mobilenet_v2": load_mobilenet_v2, "efficientnet_lite0": load_efficientnet_lite0,
        "minilm_l6": lambda: load_text_encoder("minilm_l6"), "minilm_l3": lambda: load_text_encoder("minilm_l3"),
        "smollm2_135m": load_smollm2, "whisper_tiny_en": load_whisper,
        **{n: (lambda n=n: load_torchvision_classic(n)) for n in TORCHVISION_CLASSICS},
        **{n: (lambda n=n: load_text_encoder(n)) for n in HUB_CLASSICS if n != "wav2vec2-base"},
    }
    if name not in loaders:
        raise ValueError(f"no model loader for {name!r}; choose one of {sorted(loaders)}")
    return loaders[name]()
