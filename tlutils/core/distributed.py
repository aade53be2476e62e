"""Data-parallel training on torch's distributed engine (DDP), for runs launched by ``torchrun``.

The same script runs on one process or on many: ``torchrun --nproc_per_node N`` (or
``accelerate launch``) starts N copies and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them. Every process holds a full copy
of the model; :func:`wrap` makes it a :class:`~torch.nn.parallel.DistributedDataParallel`, which
averages the gradients over the processes after each backward pass, so the optimizer step
is the same everywhere. :func:`sharded_loader` gives each process its own slice of every
global batch (a :class:`~torch.utils.data.DistributedSampler`); :func:`mean_over_processes`
averages a number for the log. Backends: ``nccl`` on GPUs, ``gloo`` on CPUs.

Example:
    >>> ctx = init()
    >>> model = wrap(model, ctx)
    >>> train = sharded_loader(dataset, per_device_batch(32, ctx), ctx, seed=0)
    >>> history = fit(model, train, device=ctx.device)
    >>> close(ctx)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass(frozen=True)
class Context:
    """Where this process sits in the run.

    Args:
        rank: This process's index, ``0 .. world_size - 1``.
        world_size: Number of processes.
        local_rank: Index on this machine (which GPU to use).
        device: The device this process trains on.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that logs and saves (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun "
                         "(unset it to run a single process)") from None


def init(device: str | torch.device | None = None) -> Context:
    """Join the process group that ``torchrun`` set up, or return a single-process context.

    Args:
        device: Force ``"cpu"`` (the ``gloo`` backend) even when GPUs exist; by default each
            process takes GPU ``LOCAL_RANK`` when CUDA is available (``nccl``), else the CPU.

    Returns:
        The process's :class:`Context`.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size == 1:
        return Context(device=target)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size}); launch with torchrun")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=target, backend=backend)


def per_device_batch(global_batch: int, ctx: Context) -> int:
    """The batch each process takes so that one optimizer step sees ``global_batch`` examples.

    Raises:
        ValueError: ``global_batch`` is not a multiple of the number of processes.
    """
    if global_batch < ctx.world_size or global_batch % ctx.world_size:
        raise ValueError(f"a global batch of {global_batch} cannot be split evenly over {ctx.world_size} processes; "
                         f"use a multiple of {ctx.world_size} (or add gradient accumulation)")
    return global_batch // ctx.world_size


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """Move the model to the process's device and wrap it in DDP when there are several processes.

    DDP broadcasts rank 0's weights at wrapping, so every process starts from the same model.
    """
    model.to(ctx.device)
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (what to save or evaluate)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sharded_loader(dataset: Dataset, batch_size: int, ctx: Context, seed: int, shuffle: bool = True,
                   collate_fn=None) -> DataLoader:
    """A loader over this process's shard of ``dataset``.

    The order is one permutation of the whole data set (seeded, reshuffled per epoch by
    :func:`~tlutils.core.train.fit` through ``sampler.set_epoch``); process ``r`` takes every
    ``world_size``-th example from ``r``. So the ``world_size`` batches of one step together
    are the same examples a single process would see with ``batch_size * world_size``.

    Args:
        dataset: The training set.
        batch_size: Examples per process and step (see :func:`per_device_batch`).
        ctx: The process's context.
        seed: Seeds the permutation (the same on every process).
        shuffle: Permute (training) or keep the order.
        collate_fn: How to build a batch (e.g. a text data set's ``collate``).
    """
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)


def mean_over_processes(value: float, ctx: Context) -> float:
    """The mean of ``value`` over all processes (the value itself for one process)."""
    if ctx.world_size == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item() / ctx.world_size)


def close(ctx: Context) -> None:
    """Leave the process group (a no-op for one process)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
