"""Multi-process training with torch.distributed: the few helpers the Trainer and the CLI need.

Launch the usual entry point under torchrun and it trains data-parallel:

    torchrun --nproc_per_node=4 -m minidiff train --preset course --out runs/course

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``setup()`` reads them and joins the process group
(NCCL on GPUs, gloo on CPU). The Trainer then wraps the model in DistributedDataParallel and reads
data through a DistributedSampler. Only rank 0 (``is_main``) writes checkpoints, logs and images.

The batch rule: ``TrainConfig.batch_size`` is the GLOBAL batch of one optimiser step. Each of the
W processes takes batch_size / W images; DDP averages the gradients, so one step sees exactly the
same images and the same mean gradient as one process with the whole batch. The learning rate is
therefore NOT rescaled with W: change the number of GPUs and keep the run the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its rank among world_size processes, and its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistributedInfo:
    """The torchrun environment variables (RANK, WORLD_SIZE, LOCAL_RANK); a single process without them."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    return DistributedInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))


def setup(backend: str = "auto") -> DistributedInfo:
    """Join the process group torchrun describes (no-op in a single process); returns this process's info.

    backend "auto": "nccl" when CUDA is available, else "gloo". On CUDA, selects GPU LOCAL_RANK.
    """
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return current()
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return current()


def current() -> DistributedInfo:
    """This process's info from the live process group, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)
    return DistributedInfo()


def teardown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all processes (returned as a new tensor; the identity in one process)."""
    value = value.detach().clone()
    if current().enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if current().enabled:
        dist.barrier()
