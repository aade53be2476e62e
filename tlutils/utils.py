"""Seeding, device and argument-checking helpers."""

from __future__ import annotations

import os
import random
from typing import Any, Sequence

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a run gives the same numbers twice.

    Args:
        seed: Any integer; notebooks re-seed before every random step
            (data split, new head, training).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the best device: CUDA, then Apple's MPS, then the CPU.

    Args:
        prefer: Force a device name such as ``"cpu"`` (also read from ``$TLLAB_DEVICE``).

    Returns:
        The chosen :class:`torch.device`.
    """
    prefer = prefer or os.environ.get("TLLAB_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def environment_report() -> dict:
    """Versions and hardware facts shown at the top of the tour notebook."""
    import platform

    import torchaudio
    import torchvision
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "device": str(get_device()),
        "cpu threads": torch.get_num_threads(),
    }


def check_one_of(value: Any, allowed: Sequence[Any], what: str) -> None:
    """Raise a ValueError naming the bad value and the allowed ones.

    Example:
        >>> check_one_of("max", ("cls", "mean"), "pooling")
        Traceback (most recent call last):
        ValueError: unknown pooling 'max'; allowed values: 'cls', 'mean'
    """
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed values: {', '.join(repr(item) for item in allowed)}")
