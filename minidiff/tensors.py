"""Small tensor helpers every part of minidiff shares: broadcasting per-sample values, batched times and
reproducible noise."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """One value per sample, [B], reshaped to [B, 1, ..., 1] so it broadcasts against like [B, ...]."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def batch_time(t: float, like: Tensor) -> Tensor:
    """The time t for every sample of like [B, ...]: [B] in like's dtype and device."""
    return torch.full((like.shape[0],), t, dtype=like.dtype, device=like.device)


def randn(shape, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to `device`: a seed gives the same
    numbers whatever device the sample lives on."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)
