"""TrainConfig: every setting of a training run, checked on construction; and lr_at, its learning-rate schedule.

    config = TrainConfig(steps=2000, batch_size=100, lr=1e-3, warmup_steps=100, decay="linear")
    config = TrainConfig.from_dict(json.load(f)["train"])     # unknown keys: an error listing the known ones

minidiff.train.Trainer runs it; every checkpoint stores ``config.to_dict()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Tuple, Union

import torch

from .config_types import check_value
from .losses import WEIGHTINGS, Weighting
from .schedule import PREDICTION_TYPES, PredictionType

Decay = Literal["linear", "cosine", "constant"]
MixedPrecision = Literal["no", "bf16", "fp16", "auto"]
Objective = Literal["diffusion", "dsm", "flow"]
DECAYS = ("linear", "cosine", "constant")
MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")
OBJECTIVES = ("diffusion", "dsm", "flow")
MAX_SEED = 2**63 - 1                      # torch.Generator.manual_seed takes at most 64 bits


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved in every checkpoint."""

    steps: Optional[int] = None           # optimiser steps in all; None: `epochs` passes over the data
    epochs: int = 1                       # used only when steps is None (the course trains 32 epochs)
    batch_size: int = 100                 # GLOBAL images per optimiser step (split over processes)
    grad_accum_steps: int = 1             # micro-batches per process per step (same result, less memory)
    lr: float = 1e-3                      # peak learning rate (the course: 1e-3)
    warmup_steps: int = 0                 # linear warm-up from lr/warmup to lr over these steps
    decay: Decay = "linear"               # after warm-up: "linear" to min_lr (the course) | "cosine" | "constant"
    min_lr: float = 0.0                   # the learning rate reached at the last step
    weight_decay: float = 0.0             # AdamW's decoupled weight decay
    adam_betas: Tuple[float, float] = (0.9, 0.999)   # AdamW's moment decay rates
    grad_clip: Optional[float] = 1.0      # clip the global gradient norm to this; None: no clipping
    ema_decay: float = 0.999              # EMA weights: ema = d * ema + (1 - d) * w after every step
    ema_warmup: bool = True               # use d_k = min(ema_decay, (1 + k) / (10 + k)) early on
    context_dropout: float = 0.1          # probability of replacing a sample's context by "no context"
    mixed_precision: MixedPrecision = "no"  # "no" | "bf16" | "fp16" autocast (fp16 with a GradScaler; CUDA) |
                                          # "auto": bf16 where the device computes it natively, else "no"
    channels_last: bool = False           # NHWC memory layout (faster convolutions on recent GPUs)
    compile: bool = False                 # torch.compile the model for training
    seed: int = 0                         # seeds data order, noise, context dropout and sample grids
    objective: Objective = "diffusion"    # "diffusion" (Ho et al., with a NoiseSchedule) | "dsm" (with an SDE) |
                                          # "flow" (flow matching, a velocity network, with sde=RectifiedFlow())
    prediction_type: PredictionType = "epsilon"  # the network's target: "epsilon" | "sample" | "v_prediction"
    loss_weighting: Weighting = "none"    # "none" | "min_snr" (see losses.diffusion_loss)
    dsm_t_min: float = 1e-5               # smallest SDE time drawn by the dsm objective
    log_every: int = 50                   # write a row to loss.csv (and redraw loss.png) this often
    sample_every: int = 0                 # write a sample grid this often (0: only at the end if > 0 steps)
    sample_steps: int = 25                # DDIM steps (or SDE steps) for those grids
    samples_per_class: int = 8            # columns of a grid (rows: classes, or 8 rows if unconditional)
    checkpoint_every: int = 0             # write out_dir/checkpoint.pt this often (and always at the end)
    keep_last: int = 0                    # also keep the newest N of those as out_dir/checkpoints/step_NNNNNN.pt
    tensorboard: bool = False             # also log loss, lr and sample grids to out_dir/tensorboard (extra)
    out_dir: Optional[Union[str, os.PathLike]] = None   # where files go; None: train in memory, write nothing
    device: str = "auto"                  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:1" ...
    num_workers: int = 0                  # DataLoader worker processes
    progress: bool = True                 # show a tqdm bar with loss, lr and images/s

    def __post_init__(self):
        hints = typing.get_type_hints(TrainConfig)                       # JSON types: "0.1" is not a number
        for field in dataclasses.fields(self):                         # choices (Literal): checked below
            if typing.get_origin(hints[field.name]) is not typing.Literal:
                check_value(getattr(self, field.name), hints[field.name], f"TrainConfig.{field.name}")

        def check(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {value!r}")
        check("decay", self.decay, DECAYS)
        check("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        check("objective", self.objective, OBJECTIVES)
        check("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check("loss_weighting", self.loss_weighting, WEIGHTINGS)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 0):
            raise ValueError(f"TrainConfig.steps must be None or an integer >= 0, got {self.steps!r}")
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("grad_accum_steps", 1), ("log_every", 1),
                              ("sample_steps", 1), ("samples_per_class", 1), ("warmup_steps", 0),
                              ("sample_every", 0), ("checkpoint_every", 0), ("keep_last", 0), ("num_workers", 0),
                              ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.seed > MAX_SEED:
            raise ValueError(f"TrainConfig.seed must be an integer in [0, 2**63 - 1], got {self.seed}")
        for name, low, high in (("context_dropout", 0.0, 1.0), ("ema_decay", 0.0, 1.0)):
            if not low <= getattr(self, name) <= high:                 # NaN fails too
                raise ValueError(f"TrainConfig.{name} must lie in [{low}, {high}], got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}")
        for name in ("min_lr", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be None or a finite number > 0, got {self.grad_clip}")
        if not 0 < self.dsm_t_min < 1:
            raise ValueError(f"TrainConfig.dsm_t_min must lie in the open interval (0, 1), got {self.dsm_t_min}")
        self.adam_betas = tuple(self.adam_betas)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, where: str = "TrainConfig") -> "TrainConfig":
        """Build from a plain dict; unknown keys are an error that lists the known ones.

        where: how errors name the fields, e.g. "train" (a config file's section): "train.lr: expected ...".
        "dsm_eps" (older checkpoints and files) is read as dsm_t_min, with a DeprecationWarning."""
        check_value(values, dict, where)
        if "dsm_eps" in values:
            warnings.warn("TrainConfig field dsm_eps is now dsm_t_min; the old name is read until the next release",
                          DeprecationWarning, stacklevel=2)
            values = {("dsm_t_min" if k == "dsm_eps" else k): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            prefix = "unknown TrainConfig field(s)" if where == "TrainConfig" else f"{where}: unknown field(s)"
            raise ValueError(f"{prefix} {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**values)
        except ValueError as error:
            message = str(error)
            if where != "TrainConfig" and message.startswith("TrainConfig."):
                message = where + "." + message[len("TrainConfig."):]
            raise ValueError(message) from None


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total_steps`.

    Warm-up: lr * (step + 1) / warmup_steps, reaching lr at step warmup_steps - 1. Then with progress
    p = (step - warmup) / (total - warmup) in [0, 1): linear lr + (min_lr - lr) p, cosine
    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2, or constant lr.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.decay == "constant":
        return config.lr
    p = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    if config.decay == "linear":
        return config.lr + (config.min_lr - config.lr) * p
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * p))


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bfloat16 natively, so that bf16 autocast is faster than float32.

    CUDA: compute capability 8.0 or newer (Ampere). CPU: oneDNN's bf16 kernels (AVX512-BF16 or AMX). A CPU
    without them (AVX2 only, for example) emulates bf16 and runs a ContextUnet training step 10-20 times slower
    than in float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(mixed_precision: str, device: torch.device) -> str:
    """The autocast a run uses on ``device``: "auto" becomes "bf16" where it is native, else "no"."""
    if mixed_precision == "auto":
        return "bf16" if native_bf16(device) else "no"
    return mixed_precision
