"""Data parallelism for recovery, on the launcher's own process group (`torchrun --nproc-per-node N`).

torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; `init_from_env` joins that group (NCCL on CUDA, gloo on the
CPU). Each rank trains on its rows of every global batch and PyTorch DDP averages the LoRA gradients (one
all-reduce per optimizer step), so N ranks end with the weights of one process on the same global batch.
Frozen base weights are replicated; only rank 0 writes files.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch

# rank 0 prunes, evaluates and exports alone while the others wait for the recover stage: hours on big models
WAIT = timedelta(hours=24)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=WAIT)
    return world()


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """PyTorch DDP over the running process group: gradients of the trainable parameters (the LoRA weights)
    averaged over the ranks in backward; frozen parameters are left alone."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    # every rank loaded the same weights and LoRA init (seeded): no start-up broadcast of the whole base
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False, init_sync=False)


def average(value: float) -> float:
    """The mean of a number over the ranks."""
    import torch.distributed as dist

    _, n = world()
    if n == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / n


def barrier() -> None:
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier()


def broadcast(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (pickled; small messages only)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """Every rank's `value`, in rank order (on every rank)."""
    import torch.distributed as dist

    n = world()[1]
    if n == 1:
        return [value]
    out: list = [None] * n
    dist.all_gather_object(out, value)
    return out
