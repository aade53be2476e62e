"""What fine-tuning costs, and the cheaper ways: BitFit, bottleneck adapters, int8 dynamic quantisation.

* :func:`bitfit` trains only the bias terms (Ben Zaken et al., 2022).
* :class:`BottleneckAdapter` and :func:`add_adapter` insert a small residual down-up projection
  (Houlsby et al., 2019) after a frozen layer.
* :func:`optimizer_state_bytes`, :func:`trainable_bytes` and :func:`quantize_dynamic_int8` measure
  memory, checkpoint size and inference cost instead of assuming them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def bitfit(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """Freeze every parameter except the biases (and the modules named in ``keep``, e.g. a new head).

    Returns:
        The model, changed in place.

    Raises:
        ValueError: the model has no bias terms to train.
    """
    biases = 0
    for name, param in model.named_parameters():
        is_bias = name.rsplit(".", 1)[-1] == "bias"
        kept = any(name == prefix or name.startswith(prefix + ".") for prefix in keep)
        param.requires_grad = is_bias or kept
        biases += is_bias
    if biases == 0:
        raise ValueError("the model has no parameters named '*.bias': BitFit has nothing to train "
                         "(layers built with bias=False, e.g. convolutions before BatchNorm)")
    return model


class BottleneckAdapter(nn.Module):
    """``x + up(relu(down(x)))`` on the last dimension; ``up`` starts at zero, so it starts as the identity.

    Args:
        dim: Feature size of ``x``.
        bottleneck: Hidden size (``r``): ``2 * dim * r + dim + r`` parameters.
    """

    def __init__(self, dim: int, bottleneck: int = 16):
        super().__init__()
        if bottleneck < 1 or dim < 1:
            raise ValueError(f"dim and bottleneck must be positive, got {dim} and {bottleneck}")
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.up(torch.relu(self.down(inputs)))


def add_adapter(layer: nn.Module, dim: int, bottleneck: int = 16) -> nn.Sequential:
    """Freeze ``layer`` and return ``Sequential(layer, BottleneckAdapter(dim, bottleneck))``."""
    for param in layer.parameters():
        param.requires_grad = False
    return nn.Sequential(layer, BottleneckAdapter(dim, bottleneck))


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of the trainable parameters: what a fine-tune must store beyond the shared pre-trained model."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state (AdamW: two moments per trainable parameter), after a step."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value))


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` quantised to int8 weights (dynamic activation scales).

    Raises:
        ValueError: the model has no ``nn.Linear`` layer (nothing would be quantised).
    """
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("the model has no nn.Linear layers; dynamic int8 quantisation only changes those")
    import warnings

    with warnings.catch_warnings():  # torch 2.9 deprecates torch.ao.quantization in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def add_bert_adapters(encoder: nn.Module, bottleneck: int = 16) -> nn.Module:
    """Freeze a BERT-family encoder and put a :class:`BottleneckAdapter` after every layer's feed-forward output.

    Each ``layer.output.dense`` (``intermediate -> hidden``) becomes ``Sequential(dense, adapter)``, so the
    adapter acts before the residual connection and layer norm, where Houlsby et al. (2019) place it.

    Returns:
        The encoder, changed in place; only the adapters are trainable.
    """
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError("expected a BERT-family encoder with encoder.layer[i].output.dense (e.g. BertModel)")
    encoder.requires_grad_(False)
    for layer in layers:
        dense = layer.output.dense
        layer.output.dense = add_adapter(dense, dense.out_features, bottleneck)
    return encoder


def training_memory_bytes(model: nn.Module, inputs: dict, targets: torch.Tensor) -> dict:
    """What one training step must hold beyond the weights, counted tensor by tensor (deterministic).

    ``activations`` are the tensors autograd saves for the backward pass during one forward pass
    (each storage counted once), ``gradients`` one gradient per trainable parameter, ``optimizer`` the two
    AdamW moments per trainable parameter. These are the parts of peak training memory that depend on what
    is trained; the process's peak (allocator overhead, temporaries of the backward pass) is larger.

    Args:
        model: Returns logits for ``model(**inputs)``.
        inputs: A dict batch (e.g. ``input_ids``, ``attention_mask``).
        targets: Class indices.

    Returns:
        ``{"weights", "activations", "gradients", "optimizer", "total"}`` in bytes.
    """
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(**inputs)
        loss = nn.functional.cross_entropy(getattr(logits, "logits", logits), targets)
    del loss
    parameter_storages = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
    activations = sum(size for key, size in seen.items() if key not in parameter_storages)
    gradients = trainable_bytes(model)
    result = {"weights": sum(p.numel() * p.element_size() for p in model.parameters()),
              "activations": activations, "gradients": gradients, "optimizer": 2 * gradients}
    result["total"] = sum(result.values())
    return result


def step_seconds(model: nn.Module, inputs: dict, targets: torch.Tensor, lr: float = 1e-4, repeats: int = 5) -> float:
    """Median wall-clock seconds of one AdamW training step on one batch (after one warm-up step).

    Trains a throw-away copy, so ``model`` is not changed.
    """
    import statistics
    import time

    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        logits = model(**inputs)
        nn.functional.cross_entropy(getattr(logits, "logits", logits), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached and contiguous: what a fine-tune has to ship."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def checkpoint_bytes(model: nn.Module, path, trainable_only: bool = True) -> int:
    """Write the (trainable) parameters to ``path`` as safetensors and return the file's size in bytes."""
    from pathlib import Path

    from safetensors.torch import save_file

    tensors = trainable_state_dict(model) if trainable_only else {
        name: p.detach().contiguous().clone() for name, p in model.state_dict().items() if torch.is_tensor(p)}
    if not tensors:
        raise ValueError("nothing to save: no parameter is trainable")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path.stat().st_size


def serialized_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (works for int8-quantised models too)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def inference_seconds(model: nn.Module, inputs: dict, repeats: int = 5) -> float:
    """Median wall-clock seconds of one forward pass of ``model(**inputs)`` without gradients (after a warm-up)."""
    import statistics
    import time

    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])
