"""The process group of a pre-training run: ranks, device, and the two kinds of waiting.

Training collectives (DDP's all-reduce, the per-step agreement of :meth:`ProcessGroup.agree`)
run in the default group under ``train.dist_timeout_s``. Rank 0's long work (scanning the
image folders, the feature cache, validation) is waited for in a separate gloo group with
``train.rank0_wait_s`` (:meth:`ProcessGroup.wait_for_rank0`), so a slow rank 0 never holds
another rank inside a training collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class ProcessGroup:
    world: int
    rank: int
    local_rank: int
    device: torch.device
    wait_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_rank0(self) -> None:
        """Every rank waits here until all have arrived (rank 0's long work done)."""
        if self.world > 1:
            dist.barrier(group=self.wait_group)

    def agree(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a small float64 vector (each step's readable rows, skips, loss)."""
        if self.world == 1:
            return values
        out = values.to(self.device if self.device.type == "cuda" else "cpu", torch.float64)
        dist.all_reduce(out)
        return out.cpu()


def init_process_group(device: str, dist_timeout_s: float, rank0_wait_s: float,
                       env: Optional[dict] = None) -> ProcessGroup:
    """Read torchrun's WORLD_SIZE / RANK / LOCAL_RANK; start the groups when there are several processes."""
    env = os.environ if env is None else env
    world, rank, local_rank = (int(env.get(k, d)) for k, d in
                               (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got '{device}'")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=dist_timeout_s))
    wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=rank0_wait_s)) if world > 1 else None
    if use_cuda:
        torch.cuda.set_device(dev)
    return ProcessGroup(world, rank, local_rank, dev, wait_group)
