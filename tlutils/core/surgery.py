"""Model surgery: heads, freezing, parameter counts and layer-wise parameter groups.

The body of a pre-trained network is split into ordered *blocks* (input side
first) by :func:`model_blocks`; the classifier on top is the *head*
(:func:`head_name`). Freezing by depth, unfreezing the last k blocks and
layer-wise learning rates are all expressed in those terms, for torchvision and
timm CNNs, BERT-style encoders, Llama-style decoders and the Whisper encoder.

Example:
    >>> model = replace_head(load_mobilenet_v2(), num_classes=10)
    >>> freeze(model); unfreeze(model, [head_name(model)])
    >>> trainable_parameter_count(model)
    12810
"""

from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn

HEAD_NAMES = ("classifier", "fc", "head", "score", "lm_head", "qa_outputs")


def head_name(model: nn.Module) -> str:
    """Return the attribute name of the model's classifier head.

    Raises:
        ValueError: when no known head attribute exists.
    """
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has none of the head attributes {HEAD_NAMES}; "
                     "pass the module names to freeze/unfreeze explicitly")


def _last_linear(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """Find the last nn.Linear inside ``module``: (its parent, attribute name, the layer)."""
    if isinstance(module, nn.Linear):
        return None, "", module
    found = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            found = name
    if found is None:
        raise ValueError(f"the head {type(module).__name__} contains no nn.Linear to replace")
    parent_name, _, attr = found.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    return parent, attr, getattr(parent, attr)


def pooled_body(model: nn.Module) -> nn.Module:
    """The model without its head: ``features`` followed by global average pooling.

    This is exactly what torchvision's MobileNetV2 (and the test networks) compute
    before the classifier, so ``head(pooled_body(model)(x)) == model(x)``.

    Raises:
        ValueError: the model has no ``features`` module.
    """
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no 'features' module; pooled_body works for CNNs "
                         "built as features -> pooling -> classifier (torchvision's MobileNet and EfficientNet)")
    return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


#: Normalisation layers, whose scale and shift practice leaves out of weight decay.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that weight decay applies to in practice: no biases, no norm layers.

    Decaying a BatchNorm scale pulls it towards zero, which switches channels off; a bias has
    nothing to regularise. Libraries' fine-tuning recipes (e.g. the Hugging Face Trainer) skip both.

    Example:
        >>> "features.0.1.weight" in decayed_parameter_names(load_mobilenet_v2())   # a BatchNorm scale
        False
    """
    skipped = {f"{prefix}.{name}" if prefix else name
               for prefix, module in model.named_modules() if isinstance(module, NORM_LAYERS)
               for name, _ in module.named_parameters(recurse=False)}
    return {name for name, _ in model.named_parameters() if name not in skipped and not name.endswith("bias")}


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final linear layer of the head with a new one for ``num_classes``.

    The new layer is freshly initialised (seed first for a reproducible head);
    dropout and pooling inside the head are kept.

    Args:
        model: A classifier with a head attribute (see :data:`HEAD_NAMES`).
        num_classes: Number of target classes, a positive integer.

    Returns:
        The same model, changed in place.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    name = head_name(model)
    parent, attr, old = _last_linear(getattr(model, name))
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if parent is None:
        setattr(model, name, new)
    else:
        setattr(parent, attr, new)
    if hasattr(model, "config") and hasattr(model.config, "num_labels"):
        model.config.num_labels = num_classes
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def belongs_to(param_name: str, module_name: str) -> bool:
    """True when the parameter ``param_name`` lies inside the module ``module_name``.

    Example:
        >>> belongs_to("classifier.1.weight", "classifier"), belongs_to("classifier2.weight", "classifier")
        (True, False)
    """
    return param_name == module_name or param_name.startswith(module_name + ".")


def _matches(param_name: str, prefixes: Sequence[str] | None) -> bool:
    return prefixes is None or any(belongs_to(param_name, p) for p in prefixes)


def _set_requires_grad(model: nn.Module, prefixes: Sequence[str] | None, flag: bool) -> int:
    if prefixes is not None:
        names = [name for name, _ in model.named_parameters()]
        unknown = [p for p in prefixes if not any(_matches(n, [p]) for n in names)]
        if unknown:
            raise ValueError(f"no parameters under {unknown}; top-level modules are "
                             f"{[n for n, _ in model.named_children()]}")
    changed = 0
    for name, param in model.named_parameters():
        if _matches(name, prefixes):
            param.requires_grad_(flag)
            changed += param.numel()
    return changed


def freeze(model: nn.Module, names: Sequence[str] | None = None) -> nn.Module:
    """Stop gradients for all parameters, or those under the given module names.

    Args:
        model: Any module.
        names: Module paths such as ``["features.0", "features.1"]``; ``None`` means all.
    """
    _set_requires_grad(model, names, False)
    return model


def unfreeze(model: nn.Module, names: Sequence[str] | None = None) -> nn.Module:
    """Let gradients flow again into all parameters, or those under ``names``."""
    _set_requires_grad(model, names, True)
    return model


def _blocks_of_sequence(prefix: str, seq: Iterable) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{i}", block) for i, block in enumerate(seq)]


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Split the body (everything but the head) into ordered blocks, input side first.

    Known families: torchvision CNNs with ``features`` (MobileNetV2, VGG),
    ResNets, timm EfficientNets, BERT-style encoders, Llama-style decoders and
    the Whisper encoder; anything else falls back to its top-level children.

    Returns:
        ``(module_path, module)`` pairs; the paths work with :func:`freeze`.
    """
    if hasattr(model, "features") and isinstance(model.features, nn.Sequential):
        return _blocks_of_sequence("features", model.features)
    if all(hasattr(model, a) for a in ("conv_stem", "blocks", "conv_head")):  # timm EfficientNet
        return ([("conv_stem", model.conv_stem), ("bn1", model.bn1)] + _blocks_of_sequence("blocks", model.blocks)
                + [("conv_head", model.conv_head), ("bn2", model.bn2)])
    for base_name in ("bert", "roberta", "model", "encoder", ""):
        if base_name and not isinstance(getattr(model, base_name, None), nn.Module):
            continue
        base = getattr(model, base_name) if base_name else model
        prefix = f"{base_name}." if base_name else ""
        if hasattr(base, "embeddings") and hasattr(getattr(base, "encoder", None), "layer"):  # BERT family
            return [(prefix + "embeddings", base.embeddings)] + _blocks_of_sequence(prefix + "encoder.layer", base.encoder.layer)
        if hasattr(base, "layers") and isinstance(base.layers, nn.ModuleList):  # Llama decoder, Whisper encoder
            stem = [(prefix + n, m) for n, m in base.named_children() if n != "layers" and n not in ("norm", "layer_norm")]
            tail = [(prefix + n, m) for n, m in base.named_children() if n in ("norm", "layer_norm")]
            return stem + _blocks_of_sequence(prefix + "layers", base.layers) + tail
    head = head_name(model) if any(hasattr(model, h) for h in HEAD_NAMES) else None
    return [(n, m) for n, m in model.named_children() if n != head]


def freeze_body_except_last(model: nn.Module, k: int) -> nn.Module:
    """Freeze everything, then unfreeze the head and the last ``k`` body blocks.

    ``k = 0`` is feature extraction (head only); ``k = len(model_blocks(model))`` is
    full fine-tuning.
    """
    blocks = model_blocks(model)
    if not 0 <= k <= len(blocks):
        raise ValueError(f"k must be between 0 and {len(blocks)} (the number of blocks), got {k}")
    freeze(model)
    names = [head_name(model)] + [name for name, _ in blocks[len(blocks) - k:]]
    return unfreeze(model, names)


def conv_out_channels(body: nn.Module) -> int:
    """Channel count of a convolutional body's output (its last conv layer's)."""
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(body).__name__} has no Conv2d layer, so its output channels are unknown")
    return convs[-1].out_channels


def parameter_count(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but BatchNorm layers whose parameters are frozen stay in eval mode.

    A frozen BatchNorm must keep using the running statistics learned on the
    source data: in train mode it would normalise with each small target batch's
    statistics and silently update the running averages, so the "frozen" body
    would drift (see the Keras transfer-learning guide for the same rule).
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def layerwise_param_groups(model: nn.Module, head_lr: float, decay: float = 1.0,
                           block_lrs: Sequence[float] | None = None,
                           weight_decay: float = 0.0) -> list[dict]:
    """Parameter groups with one learning rate per block (discriminative / LLRD).

    The head gets ``head_lr``; walking down from the top, each body block gets the
    previous rate times ``decay`` (layer-wise learning-rate decay). Alternatively
    ``block_lrs`` gives the rate of every block explicitly, input side first.
    Frozen parameters are left out, and so are trainable parameters outside the head
    and the blocks of :func:`model_blocks` (such as the pooler of a BERT model, which
    mean pooling never uses): they get no group and are not trained.

    Returns:
        Groups for ``torch.optim`` with extra keys ``name`` (printed by
        :func:`param_group_table`).
    """
    blocks = model_blocks(model)
    if block_lrs is not None and len(block_lrs) != len(blocks):
        raise ValueError(f"block_lrs has {len(block_lrs)} rates but the model has {len(blocks)} blocks")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    rates = block_lrs or [head_lr * decay ** (len(blocks) - i) for i in range(len(blocks))]
    named = [(head_name(model), getattr(model, head_name(model)), head_lr)]
    named += [(name, module, lr) for (name, module), lr in zip(blocks, rates)]
    groups, seen = [], set()
    for name, module, lr in named:
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": weight_decay})
    return groups


def param_group_table(optimizer_or_groups) -> str:
    """Format each parameter group's name, learning rate and parameter count as a table."""
    groups = getattr(optimizer_or_groups, "param_groups", optimizer_or_groups)
    lines = [f"{'group':<22}{'lr':>10}{'params':>12}"]
    for i, group in enumerate(groups):
        count = sum(p.numel() for p in group["params"])
        lines.append(f"{group.get('name', i)!s:<22}{group['lr']:>10.2e}{count:>12,}")
    total = sum(p.numel() for g in groups for p in g["params"])
    lines.append(f"{'total':<22}{'':>10}{total:>12,}")
    return "\n".join(lines)


def trainable_parameters_per_block(model: nn.Module) -> list[dict]:
    """For every body block and the head: ``block``, ``params`` and ``trainable`` counts."""
    named = model_blocks(model) + [(head_name(model), getattr(model, head_name(model)))]
    rows = []
    for name, module in named:
        params = list(module.parameters())
        if params:
            rows.append({"block": name, "params": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad)})
    return rows
