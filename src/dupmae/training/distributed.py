"""Small torch.distributed helpers that are no-ops in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes (in place on a copy); returns it unchanged alone."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    """Leave the process group cleanly (a gloo group torn down at interpreter exit can abort a rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def accelerator_available() -> bool:
    """CUDA or Apple MPS. Without one, `use_cpu` must be set or accelerate will not start
    gloo DDP under torchrun (every process would silently train alone)."""
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def check_world_size(training_args) -> None:
    """Refuse to train when torchrun started N processes but the trainer sees another count."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:
        raise RuntimeError(f"launched with WORLD_SIZE={launched} but the trainer runs "
                           f"{training_args.world_size} process(es): distributed set-up failed")
