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

import datetime
import os
from dataclasses import dataclass
from typing import Optional

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


TIMEOUT_VARIABLE = "MINIDIFF_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0      # a rank silent this long (stopped, stalled, dead) ends the job with an error


def env_info() -> DistributedInfo:
    """The torchrun environment variables (RANK, WORLD_SIZE, LOCAL_RANK); a single process without them.

    ValueError naming the variable when they do not describe a possible process: not integers,
    WORLD_SIZE < 1, RANK outside [0, WORLD_SIZE), LOCAL_RANK < 0 or outside [0, LOCAL_WORLD_SIZE).
    """
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    info = DistributedInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    local_world = read("LOCAL_WORLD_SIZE", info.world_size)
    if info.world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {info.world_size}")
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"environment variable RANK={info.rank} must lie in [0, WORLD_SIZE) = "
                         f"[0, {info.world_size}); check how the processes were launched")
    if not 1 <= local_world <= info.world_size:
        raise ValueError(f"environment variable LOCAL_WORLD_SIZE={local_world} must lie in "
                         f"[1, WORLD_SIZE = {info.world_size}]")
    if not 0 <= info.local_rank < local_world:
        raise ValueError(f"environment variable LOCAL_RANK={info.local_rank} must lie in "
                         f"[0, LOCAL_WORLD_SIZE) = [0, {local_world})")
    return info


def timeout_seconds() -> float:
    """How long a collective waits for a silent process: $MINIDIFF_DDP_TIMEOUT seconds, else 300."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds < 1e7):
        raise ValueError(f"environment variable {TIMEOUT_VARIABLE} must be a number of seconds > 0, got {value!r}")
    return seconds


def setup(backend: str = "auto", timeout_s: Optional[float] = None) -> DistributedInfo:
    """Join the process group torchrun describes (no-op in a single process); returns this process's info.

    backend "auto": "nccl" when CUDA is available, else "gloo". On CUDA, selects GPU LOCAL_RANK.
    timeout_s (default ``timeout_seconds()``): joining, and every collective after it, fails with a
    RuntimeError when another process stays silent this long, so a stopped rank ends the job, never hangs it.
    """
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return current()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name, "").strip():
            raise ValueError(f"WORLD_SIZE={info.world_size} asks for several processes, but the environment "
                             f"variable {name} is not set; launch with torchrun")
    timeout_s = timeout_seconds() if timeout_s is None else timeout_s
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={info.local_rank}, but there are only {torch.cuda.device_count()} "
                             f"CUDA devices here; start at most that many processes per node")
        torch.cuda.set_device(info.local_rank)
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as error:     # torch's DistStoreError/DistNetworkError are RuntimeErrors
        raise RuntimeError(f"rank {info.rank} could not join the {info.world_size} processes at "
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                           f"({_first_line(error)})") from None
    return current()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` came from a collective that another process never joined (gloo or NCCL)."""
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(error)
    return isinstance(error, backend_error) or any(word in text for word in ("gloo", "NCCL", "Timed out",
                                                                             "Connection closed by peer"))


def lost_contact(error: BaseException) -> RuntimeError:
    """The error a failed collective becomes: which rank, and that another process stopped or stalled."""
    return RuntimeError(f"distributed training: rank {current().rank} lost contact with the other processes "
                        f"(one stopped, crashed or stalled for over {timeout_seconds():g} s; "
                        f"${TIMEOUT_VARIABLE} sets the limit): {_first_line(error)}")


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
        try:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        except RuntimeError as error:
            raise lost_contact(error) from None
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if current().enabled:
        try:
            dist.barrier()
        except RuntimeError as error:
            raise lost_contact(error) from None


def max_over_ranks(value: int, device) -> int:
    """The largest of the processes' integers (the value itself in a single process)."""
    if not current().enabled:
        return int(value)
    tensor = torch.tensor([int(value)], device=device)
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    except RuntimeError as error:
        raise lost_contact(error) from None
    return int(tensor.item())


class StoppedByAnotherProcess(Exception):
    """This process stops because another one refused to start (that one reports why)."""


def raise_together(error: Optional[BaseException], device) -> None:
    """Raise `error` here, and StoppedByAnotherProcess in every other process, when any process has one;
    so a check that fails on one rank (rank 0's folder lock) ends all of them at once instead of
    leaving the others waiting in a collective. A no-op when no process has an error."""
    failed = max_over_ranks(int(error is not None), device) if current().enabled else int(error is not None)
    if error is not None:
        raise error
    if failed:
        raise StoppedByAnotherProcess("another process refused to start; it printed why")
