"""torchrun / DistributedDataParallel plumbing.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised
with gloo on CPU and NCCL on CUDA; each process trains on its DistributedSampler share with
``global batch / world size`` samples per step, DDP averages the gradients, so a step equals
a one-process step on the same global batch. Only rank 0 writes files and reports progress.

BatchNorm: on CUDA the model's BatchNorms become SyncBatchNorm (statistics over the global
batch). torch's SyncBatchNorm refuses CPU tensors, so on CPU each process normalises with
the statistics of its own share (DDP's usual semantics) and rank 0's running statistics are
kept; with ``bn="freeze"`` (running statistics fixed) a CPU run equals the one-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from surgery.core.errors import SurgeryError


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


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def setup(device: str = "cpu") -> Dist:
    """Join torchrun's process group if there is one; the device this process trains on."""
    device = str(device)
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist(0, 1, 0, device)
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, device)


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


def teardown(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_device(device: str) -> None:
    """Refuse a device this machine cannot train on, in one line (before anything is made)."""
    if not isinstance(device, str) or (device not in ("cpu", "cuda") and not device.startswith("cuda:")):
        raise SurgeryError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SurgeryError("--device cuda: no CUDA device is available here; use --device cpu")
