"""Preview grids: look at a data set before training on it (Pillow only)."""

from __future__ import annotations

import numpy as np


def class_grid(images: np.ndarray, class_ids: np.ndarray, per_class: int = 10, pad: int = 1) -> np.ndarray:
    """One row per class, the first ``per_class`` images of that class: (rows*(H+pad)+pad, ..., C) uint8.

    images: (N, H, W, C) uint8; class_ids: (N,) ints. The gaps are mid-grey.
    """
    n, h, w, c = images.shape
    classes = np.unique(class_ids)
    grid = np.full((len(classes) * (h + pad) + pad, per_class * (w + pad) + pad, c), 128, np.uint8)
    for row, cls in enumerate(classes):
        for col, k in enumerate(np.flatnonzero(class_ids == cls)[:per_class]):
            y, x = pad + row * (h + pad), pad + col * (w + pad)
            grid[y:y + h, x:x + w] = images[k]
    return grid


def save_grid_png(grid: np.ndarray, path: str, scale: int = 4) -> None:
    """Save a uint8 (H, W, C) array as a PNG, upscaled ``scale`` times with nearest neighbours."""
    from PIL import Image

    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
