"""Pictures of what a diffusion model does: image grids, denoising GIFs, loss curves. Pillow only.

Images come in as minidiff tensors, float NCHW in [-1, 1] (values outside are clipped), with 1 or 3
channels. Small images (16x16 sprites) are enlarged by an integer `scale` with nearest-neighbour
resampling so pixels stay crisp. Every ``save_*`` function creates the parent folder and returns the
PIL image it wrote.
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------- tensors -> pixels
def to_uint8(images: Tensor) -> np.ndarray:
    """[N, C, H, W] float in [-1, 1] (C = 1 or 3) -> [N, H, W, 3] uint8 in [0, 255]."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    images = torch.nan_to_num(images, nan=0.0).clamp(-1, 1)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)            # [N, C, H, W]
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    return pixels.permute(0, 2, 3, 1).numpy()                          # [N, H, W, 3]


def make_grid(images: Tensor, nrow: Optional[int] = None, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile N images into rows of `nrow` (default ceil(sqrt(N))) -> [H', W', 3] uint8, `padding` px apart."""
    pixels = to_uint8(images)                                          # [N, H, W, 3]
    n, h, w, _ = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), pad_value, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = pixels[k]
    return grid


def grid_image(images: Tensor, nrow: Optional[int] = None, scale: int = 4, padding: int = 1) -> Image.Image:
    """make_grid as a PIL image, enlarged `scale` times with nearest-neighbour resampling."""
    image = Image.fromarray(make_grid(images, nrow, padding))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def _prepare(path: PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


# ---------------------------------------------------------------------------------- files
def save_image_grid(images: Tensor, path: PathLike, nrow: Optional[int] = None, scale: int = 4,
                    padding: int = 1) -> Image.Image:
    """Write [N, C, H, W] images in [-1, 1] as one PNG grid."""
    image = grid_image(images, nrow, scale, padding)
    image.save(_prepare(path))
    return image


def save_trajectory_gif(frames: Sequence[Tensor], path: PathLike, nrow: Optional[int] = None, scale: int = 4,
                        duration_ms: int = 80, hold_last_ms: int = 1500, max_frames: int = 100) -> Image.Image:
    """A GIF of a denoising trajectory: `frames` is a list of [N, C, H, W] batches, noisiest first.

    Long trajectories are thinned to at most `max_frames` (the first and last frame always kept);
    the final frame is held for `hold_last_ms` so the result can be seen.
    """
    if len(frames) == 0:
        raise ValueError("save_trajectory_gif needs at least one frame")
    keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round().astype(int))
    images = [grid_image(frames[k], nrow, scale) for k in keep]
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    images[0].save(_prepare(path), save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False)
    return images[0]


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)      # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def save_class_grid(images: Tensor, labels: Sequence[str], path: PathLike, scale: int = 4,
                    padding: int = 1) -> Image.Image:
    """One row per class with its label on the left: images [K, M, C, H, W] (K classes x M samples)."""
    images = torch.as_tensor(images)
    if images.ndim != 5 or images.shape[0] != len(labels):
        raise ValueError(f"images must be [K, M, C, H, W] with K = len(labels) = {len(labels)}, "
                         f"got shape {tuple(images.shape)}")
    k, m = images.shape[:2]
    grid = grid_image(images.flatten(0, 1), nrow=m, scale=scale, padding=padding)
    font = _font(12)
    label_width = 8 + max(int(ImageDraw.Draw(grid).textlength(str(label), font=font)) for label in labels)
    canvas = Image.new("RGB", (grid.width + label_width, grid.height), "white")
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = grid.height / k
    for r, label in enumerate(labels):
        draw.text((4, int((r + 0.5) * row_height) - 6), str(label), fill="black", font=font)
    canvas.save(_prepare(path))
    return canvas


def save_loss_curve(steps: Sequence[float], losses: Sequence[float], path: PathLike, title: str = "training loss",
                    size=(640, 400), log_y: bool = True) -> Image.Image:
    """A line plot of loss against step, drawn with Pillow (no matplotlib needed); log y-axis by default."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(values) & (values > 0 if log_y else True)
    steps, values = steps[keep], values[keep]
    width, height = size
    left, right, top, bottom = 64, 16, 28, 40                         # margins around the plot area
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(11)
    draw.text((left, 8), title, fill="black", font=font)
    if len(values) == 0:
        draw.rectangle([left, top, width - right, height - bottom], outline="black")
        draw.text((left + 10, top + 10), "no finite values yet", fill="gray", font=font)
        image.save(_prepare(path))
        return image

    y = np.log10(values) if log_y else values
    x_lo, x_hi = steps.min(), max(steps.max(), steps.min() + 1)
    y_lo, y_hi = y.min(), max(y.max(), y.min() + 1e-6)
    to_px = lambda sx, sy: (left + (sx - x_lo) / (x_hi - x_lo) * (width - left - right),
                            height - bottom - (sy - y_lo) / (y_hi - y_lo) * (height - top - bottom))
    for frac in np.linspace(0, 1, 5):                                  # gridlines and tick labels
        ty = y_lo + frac * (y_hi - y_lo)
        _, py = to_px(x_lo, ty)
        draw.line([left, py, width - right, py], fill=(225, 225, 225))
        draw.text((4, py - 6), f"{10 ** ty if log_y else ty:.3g}", fill="black", font=font)
        tx = x_lo + frac * (x_hi - x_lo)
        px, _ = to_px(tx, y_lo)
        draw.text((px - 10, height - bottom + 6), f"{tx:.0f}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width // 2 - 12, height - 16), "step", fill="black", font=font)
    points: List[tuple] = [to_px(sx, sy) for sx, sy in zip(steps, y)]
    if len(points) == 1:
        draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=(31, 119, 180))
    else:
        draw.line(points, fill=(31, 119, 180), width=2)
    image.save(_prepare(path))
    return image
