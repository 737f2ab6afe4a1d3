"""Argument checks shared by the samplers: `sample` (samplers.py) and `sde_sample` (sde_samplers.py) call
the same `check_sampling_inputs`, so both refuse the same bad input with the same messages."""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
from torch import Tensor


def check_int(name: str, value, minimum: int) -> None:
    """value must be an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_shape(shape) -> tuple:
    """A sample shape (B, ...) of at least two positive ints, as a tuple."""
    try:
        shape = tuple(operator.index(s) for s in shape)                   # ints only: 2.5 or "2" is an error
    except TypeError:
        raise ValueError(f"shape must be a sequence of ints like (B, C, H, W), got {shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must have at least 2 positive dimensions (B, ...), got {shape}")
    return shape


def check_sampling_inputs(shape, x_T: Optional[Tensor] = None, context: Optional[Tensor] = None,
                          guidance_scale: Optional[float] = None) -> tuple:
    """The checks every sampler entry point makes on what it is given; returns shape as a tuple of ints.

    x_T: [B, ...] = shape, finite. context: [B, ...], finite if float. guidance_scale: None or a finite
    number >= 0, and then a context is needed (the condition to guide towards).
    """
    shape = check_shape(shape)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        if not torch.isfinite(x_T).all():
            raise ValueError("x_T must be finite: it holds NaN or inf")
    if guidance_scale is not None:
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if context is None:
            raise ValueError("guidance_scale needs a context (the condition to guide towards)")
    if context is not None:
        if context.ndim == 0 or context.shape[0] != shape[0]:
            raise ValueError(f"context must have batch size {shape[0]} (shape [B, ...]), got {tuple(context.shape)}")
        if context.is_floating_point() and not torch.isfinite(context).all():
            raise ValueError("context must be finite: it holds NaN or inf")
    return shape
