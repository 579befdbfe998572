"""Data-parallel training under `torchrun`: the process group, this process's place in it, and the few
messages training exchanges outside the gradients.

`torchrun --nproc_per_node N -m nmt train CONFIG` starts N processes with RANK, WORLD_SIZE and LOCAL_RANK set;
each joins the group (NCCL on GPUs, Gloo on CPUs), trains a DistributedDataParallel replica on its own share
of every step's batches, and rank 0 alone writes the run directory. Control messages (the stop decision, the
validation outcome, logged losses) go through a Gloo group on the CPU, so they never stall the GPU stream.
Without WORLD_SIZE > 1 nothing here does anything: a plain `nmt train` is a world of one.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nmt.errors import NMTError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = None  # the CPU (Gloo) process group for control messages

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each process of a GPU run takes the GPU of its local rank."""
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.control)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        return flag if self.size == 1 else self.sum(float(flag))[0] > 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()


def join(device: torch.device) -> World:
    """Join torchrun's process group when there is one (WORLD_SIZE > 1); else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_available():
        raise NMTError("WORLD_SIZE > 1, but this torch has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return World(rank, size, local_rank, control)


def leave(world: World) -> None:
    """Destroy the process group, once what still refers to it (a DDP wrapper in a reference cycle) is
    collected."""
    if world.size > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
