"""Process groups started by torchrun, DDP wrapping, and the resumable, sharded sample order.

`torchrun --nproc_per_node=N ...` sets WORLD_SIZE, RANK and LOCAL_RANK; `setup()` reads them and
joins the process group (NCCL for CUDA, gloo for CPU). Without them training is single-process.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run; `owns_group` is True when `setup()` created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files."""
        return self.rank == 0


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group)."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for all processes; a no-op without a process group."""
    if get_world_size() > 1:
        dist.barrier()


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """`auto` (CUDA if available, else CPU), `cpu`, `cuda` or `cuda:N`.

    With `local_rank` (a torchrun process), `auto` and `cuda` mean `cuda:local_rank`.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={spec!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        elif local_rank is not None and device.index != local_rank:
            raise ValueError(
                f"train.device={spec!r} under torchrun: every process uses cuda:LOCAL_RANK "
                f"(here cuda:{local_rank}); set train.device to auto or cuda"
            )
    return device


def setup(device_spec: str) -> tuple[DistributedContext, torch.device]:
    """Joins the torchrun process group when WORLD_SIZE > 1; returns the context and the device.

    A process group that already exists (created by the caller) is used and left to the caller.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world_size > 1
    device = resolve_device(device_spec, local_rank if distributed else None)
    if not distributed:
        return DistributedContext(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size,
            device_id=device if device.type == "cuda" else None,
        )
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)
    return context, device


def cleanup(context: DistributedContext) -> None:
    """Destroys the process group if `setup()` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed; `model` itself otherwise.

    `find_unused_parameters` is False: every parameter gets a gradient (MSC returns the logits
    of every scale in training mode).
    """
    if not context.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync()` when `skip` (accumulation micro-batches before the last), else nothing."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def all_gather_objects(value: object, context: DistributedContext) -> list[object]:
    """`value` from every rank, in rank order ([value] when not distributed)."""
    if not context.distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The mean of a tensor over all ranks (the tensor itself when not distributed)."""
    if not context.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / context.world_size


def _hashed_seed(values: list[int], stream: int) -> int:
    """A 63-bit seed hashed from non-negative `values`; `stream` separates independent uses."""
    state = np.random.SeedSequence(values, spawn_key=(stream,)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the dataset permutation of `epoch`."""
    return _hashed_seed([seed, epoch], stream=0)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch`."""
    return _hashed_seed([seed, epoch, index], stream=1)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields `(index, augmentation seed)` pairs of one epoch, sharded by rank; resumable.

    Epoch `e` is a permutation of the dataset seeded by (seed, e), cut to a multiple of
    `world_size`; rank r takes positions r, r + world_size, ... (disjoint across ranks, as
    torch's DistributedSampler). The position is global: `offset` permutation entries of the
    epoch have been consumed over all ranks, so a run can restart in the middle of an epoch (also
    with another number of processes). `set_position()` chooses the epoch (and offset) that the
    next iteration yields.
    """

    def __init__(self, dataset_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if dataset_size < world_size:
            raise ValueError(f"{dataset_size} samples cannot be shared by {world_size} processes")
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.offset = 0

    @property
    def samples_per_epoch(self) -> int:
        """Permutation entries used per epoch, over all ranks."""
        return self.dataset_size // self.world_size * self.world_size

    def set_position(self, epoch: int, offset: int = 0) -> None:
        """The next iteration yields `epoch` from global position `offset` (a multiple of
        world_size) on."""
        if offset % self.world_size:
            raise ValueError(f"offset {offset} is not a multiple of world_size {self.world_size}")
        self.epoch = epoch
        self.offset = offset

    def permutation(self, epoch: int) -> list[int]:
        """The dataset order of `epoch`, the same on every rank."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.dataset_size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.permutation(self.epoch)
        for position in range(self.offset + self.rank, self.samples_per_epoch, self.world_size):
            yield order[position], sample_seed(self.seed, self.epoch, order[position])

    def __len__(self) -> int:
        return max(0, self.samples_per_epoch - self.offset) // self.world_size
