"""The one place where minidiff's image convention lives.

Models see images as float tensors ``[B, C, H, W]`` in ``[-1, 1]``; files and numpy arrays hold
them as ``uint8`` ``(B, H, W, C)`` in ``[0, 255]``. Every loader in ``minidiff.data`` goes through
these two functions, so the mapping ``u -> u / 127.5 - 1`` is written exactly once.
"""

from __future__ import annotations

import numpy as np
import torch


def from_uint8_images(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, C)`` in [0, 255]  ->  float32 tensor ``[B, C, H, W]`` in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (B, H, W, C), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, C, H, W)
    return x.float() / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float tensor ``[B, C, H, W]`` in [-1, 1] (values outside are clipped)  ->  uint8 ``(B, H, W, C)``.

    Exact inverse of :func:`from_uint8_images` on its outputs.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a tensor of shape [B, C, H, W], got {tuple(x.shape)}")
    u = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
