"""``launch``: detectron2's multi-process launcher, with a CPU fallback.

detectron2 0.6's workers assert CUDA and join an NCCL group. Without a GPU, the same
``--num-gpus N`` starts N CPU processes joined by gloo, so multi-process training (DDP,
gathered metrics) runs and can be tested on any machine.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, args: Sequence = (), timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """detectron2's ``launch`` where CUDA is available (or for one process); else one CPU
    process per "GPU", gloo backend."""
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines,
                         machine_rank=machine_rank, dist_url=dist_url, args=tuple(args), timeout=timeout)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only: give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.warning("no CUDA: starting %d CPU processes (gloo backend)", num_gpus_per_machine)
    mp.spawn(_cpu_worker, nprocs=num_gpus_per_machine, daemon=False,
             args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout))


def _cpu_worker(local_rank: int, main_func: Callable, world_size: int, num_per_machine: int,
                machine_rank: int, dist_url: str, args: tuple, timeout: timedelta) -> None:
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=machine_rank * num_per_machine + local_rank, timeout=timeout)
    # detectron2's comm.get_local_rank/size read this group (set by its own worker on GPUs)
    for i in range(world_size // num_per_machine):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)


def ddp_kwargs(cfg) -> dict:
    """DistributedDataParallel arguments for a POMP model: ``find_unused_parameters`` from
    cfg.FIND_UNUSED_PARAM (image-label batches leave the box regressor and the mask head
    unused); no ``device_ids`` for a CPU model (detectron2 always passes the local GPU)."""
    kwargs = {"broadcast_buffers": False, "find_unused_parameters": bool(cfg.FIND_UNUSED_PARAM)}
    if cfg.MODEL.DEVICE == "cpu" or not torch.cuda.is_available():
        kwargs["device_ids"] = None
    return kwargs
