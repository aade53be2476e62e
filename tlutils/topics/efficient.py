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
