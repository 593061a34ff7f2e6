"""torchrun / DistributedDataParallel plumbing.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised
with gloo on CPU and NCCL on CUDA; each process trains on its DistributedSampler share with
``global batch / world size`` samples per step, DDP averages the gradients, so a step equals
a one-process step on the same global batch. Only rank 0 writes files and reports progress.

The environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)
is read once, by :func:`environment`, and checked there. :func:`session` is the one place a
process group is made and torn down: whoever opens the session closes it
(:func:`surgery.train.run.run` does, around a whole run).

BatchNorm: on CUDA the model's BatchNorms become SyncBatchNorm (statistics over the global
batch). torch's SyncBatchNorm refuses CPU tensors, so on CPU each process normalises with
the statistics of its own share (DDP's usual semantics) and rank 0's running statistics are
kept; with ``bn="freeze"`` (running statistics fixed) a CPU run equals the one-process run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from surgery.core.errors import SurgeryError


@dataclass(frozen=True)
class Env:
    """What torchrun told this process (one process outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0


@functools.cache
def environment() -> Env:
    """torchrun's variables, read once per process and checked (a bad value is one line)."""
    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "") or str(default)
        try:
            return int(text)
        except ValueError:
            raise SurgeryError(f"environment variable {name}={text!r} is not a whole number; run under torchrun "
                               "or unset it") from None

    world = number("WORLD_SIZE", 1)
    rank, local = number("RANK", 0), number("LOCAL_RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local < max(local_world, 1):
        raise SurgeryError(f"torchrun environment RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: a rank must be "
                           "in 0..WORLD_SIZE-1")
    return Env(rank, world, local, max(1, local_world))


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return environment().rank


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Dist()  # one process, CPU: what evaluation outside a run uses


def setup(device: str = "cpu") -> Dist:
    """Join torchrun's process group if there is one; the device this process trains on.
    Prefer :func:`session`, which also tears down what it set up."""
    device = str(device)
    check_device(device)
    env = environment()
    if env.world <= 1:
        return Dist(0, 1, 0, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(env.local_rank)
        device = f"cuda:{env.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(env.rank, env.world, env.local_rank, device)


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[Dist]:
    """:func:`setup` for the block; the process group it made is destroyed when the block ends,
    however it ends (a group that existed before is left to its maker)."""
    made = dist.is_available() and not dist.is_initialized()
    d = setup(device)
    try:
        yield d
    finally:
        if made and d.distributed:
            teardown(d)


def teardown(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """DDP around ``module`` when distributed (SyncBatchNorm on CUDA); else ``module``."""
    if not d.distributed:
        return module
    if d.device.startswith("cuda"):
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[d.local_rank])
    return nn.parallel.DistributedDataParallel(module)


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Average a tensor over processes (for logged loss terms)."""
    if d.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


def gather(obj: Any, d: Dist) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not d.distributed:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not d.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any], d: Dist) -> Any:
    """Run ``fn`` on rank 0 alone (a write); every rank gets its result, and when it refused
    (:class:`SurgeryError`) every rank raises it, so no process waits for one that has left."""
    if not d.distributed:
        return fn()
    result, refused = None, None
    if d.main:
        try:
            result = fn()
        except SurgeryError as e:
            refused = e
    result, error = broadcast((result, str(refused) if refused is not None else None), d)
    if refused is not None:
        raise refused
    if error is not None:
        raise SurgeryError(error)
    return result


def check_device(device: str) -> None:
    """Refuse a device this machine cannot train on, in one line (before anything is made)."""
    if not isinstance(device, str) or (device not in ("cpu", "cuda") and not device.startswith("cuda:")):
        raise SurgeryError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SurgeryError("--device cuda: no CUDA device is available here; use --device cpu")
