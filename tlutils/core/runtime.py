"""Seeding, device choice and argument checks shared by every layer."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator, Sequence

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


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with Python, NumPy and PyTorch seeded, then restore their previous states.

    Inside the block the numbers are those of :func:`set_seed` (``seed``); after it, the
    global generators continue as if the block had never run. ``seed=None`` runs the
    block on the current global state, unseeded and unrestored.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(1)
        >>> with seeded(0):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    hash_seed = os.environ.get("PYTHONHASHSEED")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        set_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            if hash_seed is None:
                os.environ.pop("PYTHONHASHSEED", None)
            else:
                os.environ["PYTHONHASHSEED"] = hash_seed


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device convention of every function: ``None`` means :func:`get_device`."""
    return get_device() if device is None else torch.device(device)


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
