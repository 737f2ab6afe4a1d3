"""Handwritten-looking digits for the score-SDE lesson: procedural glyphs, or MNIST if you have it.

:class:`ProceduralDigits` draws 0-9 as pen strokes (lines and elliptic arcs) in a unit box, renders
each digit once per stroke thickness onto a fine template, then gives every image its own random
affine pen: scale, slant, rotation and offset, sampled bilinearly. White on black, 28x28, the digit
in the middle ~20x20 pixels: MNIST's format. No download, deterministic in ``(n, seed)``.

:func:`load_mnist` reads the MNIST files (the raw idx files, gzipped or not) if they are present.
Both give a :class:`DigitArrays`: item ``k`` is ``(image [1, H, W] float in [-1, 1], label int64)``.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from .convert import from_uint8_images
from .counter_rng import random_integers, random_uniform


class DigitArrays(Dataset):
    """Digits held as arrays: ``images`` (N, H, W, 1) uint8, ``labels`` (N,) int64 in 0..9."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int):
        image = from_uint8_images(self.images[k][None])[0]  # [1, H, W] in [-1, 1]
        return image, torch.tensor(self.labels[k], dtype=torch.int64)

    def tensors(self):
        """The whole set: ``(images [N, 1, H, W] in [-1, 1], labels [N] int64)``."""
        return from_uint8_images(self.images), torch.from_numpy(self.labels.copy())


# ----------------------------------------------------------------------------- the glyphs
def _arc(cx, cy, rx, ry, start_deg, end_deg, points=16):
    """Points on an ellipse; angles in degrees, 0 = right, 90 = down (y grows downwards)."""
    theta = np.radians(np.linspace(start_deg, end_deg, points))
    return list(zip(cx + rx * np.cos(theta), cy + ry * np.sin(theta)))


# each digit: a list of variants; each variant: a list of strokes; each stroke: a polyline of (x, y)
# points in the unit box, x to the right, y downwards
GLYPHS = {
    0: [[_arc(0.5, 0.5, 0.42, 0.5, 0, 360, 24)]],
    1: [[[(0.5, 0.0), (0.5, 1.0)]], [[(0.22, 0.22), (0.55, 0.0), (0.55, 1.0)]]],
    2: [[_arc(0.5, 0.3, 0.42, 0.3, 190, 385) + [(0.05, 1.0), (0.98, 1.0)]]],
    3: [[_arc(0.5, 0.26, 0.38, 0.26, 200, 450), _arc(0.5, 0.74, 0.44, 0.26, 270, 520)]],
    4: [[[(0.72, 1.0), (0.72, 0.0), (0.0, 0.68), (1.0, 0.68)]],
        [[(0.2, 0.0), (0.05, 0.62), (0.98, 0.62)], [(0.72, 0.28), (0.72, 1.0)]]],
    5: [[[(0.9, 0.0), (0.22, 0.0), (0.15, 0.46)] + _arc(0.5, 0.68, 0.42, 0.32, 225, 510)]],
    6: [[[(0.8, 0.0), (0.45, 0.22), (0.2, 0.5), (0.1, 0.72)], _arc(0.5, 0.7, 0.4, 0.3, 0, 360, 24)]],
    7: [[[(0.02, 0.0), (0.98, 0.0), (0.38, 1.0)]],
        [[(0.02, 0.0), (0.98, 0.0), (0.38, 1.0)], [(0.38, 0.52), (0.85, 0.52)]]],
    8: [[_arc(0.5, 0.24, 0.34, 0.24, 0, 360, 20), _arc(0.5, 0.73, 0.42, 0.27, 0, 360, 24)]],
    9: [[_arc(0.5, 0.3, 0.4, 0.3, 0, 360, 24), [(0.9, 0.3), (0.8, 1.0)]]],
}
GLYPH_ASPECT = 0.62  # glyph width / height: x is scaled by this so strokes are round pens
THICKNESSES = (0.08, 0.105, 0.13, 0.155, 0.18)  # pen widths, in glyph heights (x20 ~ pixels)
_TEMPLATE = 64  # template resolution: 32 pixels per glyph height, covering [-0.5, 1.5]^2


def _distance_to_polyline(px, py, points):
    """Distance from each point (px, py) to a polyline, elementwise: same shape as px."""
    best = np.full(px.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.hypot(px - x0 - t * dx, py - y0 - t * dy))
    return best


@lru_cache(maxsize=None)
def _templates():
    """(10, V, len(THICKNESSES), 64, 64) float32 ink in [0, 1], and the variant count per digit."""
    coords = (np.arange(_TEMPLATE) + 0.5) / (_TEMPLATE / 2) - 0.5  # pixel centres in glyph units
    py, px = np.meshgrid(coords, coords, indexing="ij")
    n_variants = max(len(v) for v in GLYPHS.values())
    out = np.zeros((10, n_variants, len(THICKNESSES), _TEMPLATE, _TEMPLATE), np.float32)
    for digit, variants in GLYPHS.items():
        for v in range(n_variants):
            strokes = variants[v % len(variants)]
            d = np.min([_distance_to_polyline(px, py, [(x * GLYPH_ASPECT, y) for x, y in s]) for s in strokes], 0)
            for j, width in enumerate(THICKNESSES):  # antialiased edge, one template pixel wide
                out[digit, v, j] = np.clip((width / 2 - d) * (_TEMPLATE / 2) + 0.5, 0.0, 1.0)
    return out, np.array([len(GLYPHS[d]) for d in range(10)])


def _bilinear(templates, index, ty, tx):
    """Sample templates[index[i]] at float pixel coords (ty, tx) of shape (n, H, W); zero outside."""
    y0, x0 = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = ty - y0, tx - x0
    out = np.zeros(ty.shape, np.float32)
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + oy, x0 + ox
        inside = (yy >= 0) & (yy < _TEMPLATE) & (xx >= 0) & (xx < _TEMPLATE)
        out += w * np.where(inside, templates[index, yy.clip(0, _TEMPLATE - 1), xx.clip(0, _TEMPLATE - 1)], 0)
    return out


class ProceduralDigits(DigitArrays):
    """``n`` MNIST-like digits, ``size`` x ``size`` grey, white on black; label ``k % 10`` for image ``k``.

    Each image has its own pen thickness, slant, rotation, scale and offset (counter-based RNG:
    image ``k`` depends only on ``(seed, k)``). ``images`` (n, size, size, 1) uint8, ``labels`` (n,).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 28):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(size, (int, np.integer)) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        templates, n_variants = _templates()
        flat = templates.reshape(-1, _TEMPLATE, _TEMPLATE)  # (10 * V * W, 64, 64)
        k = np.arange(n)
        labels = k % 10
        variant = random_integers(seed, 1, k, n_variants[labels])
        thickness = random_integers(seed, 2, k, len(THICKNESSES))
        index = (labels * templates.shape[1] + variant) * len(THICKNESSES) + thickness

        # the pen: output = centre + height * R(rotation) @ Shear(slant) @ (glyph - glyph_centre)
        height = size * (20 / 28) * random_uniform(seed, 3, k, 0.75, 1.0)  # pixels per glyph height
        slant = random_uniform(seed, 4, k, -0.35, 0.35)
        angle = np.radians(random_uniform(seed, 5, k, -10.0, 10.0))
        shift_x = random_uniform(seed, 6, k, -1.2, 1.2) * size / 28
        shift_y = random_uniform(seed, 7, k, -1.2, 1.2) * size / 28

        images = np.empty((n, size, size, 1), np.uint8)
        pixel = np.arange(size) + 0.5 - size / 2  # pixel centres relative to the image centre
        for start in range(0, n, 2048):  # chunks bound the memory of the (chunk, H, W) coordinates
            s = slice(start, start + 2048)
            oy = pixel[None, :, None] - shift_y[s, None, None]  # (c, H, 1)
            ox = pixel[None, None, :] - shift_x[s, None, None]  # (c, 1, W)
            cos, sin = np.cos(angle[s])[:, None, None], np.sin(angle[s])[:, None, None]
            gx, gy = (cos * ox + sin * oy), (-sin * ox + cos * oy)  # undo the rotation
            gx = gx - slant[s, None, None] * gy  # undo the slant
            gx, gy = gx / height[s, None, None], gy / height[s, None, None]  # glyph units
            tx = (gx + 0.5 * GLYPH_ASPECT + 0.5) * (_TEMPLATE / 2) - 0.5  # template pixel coords
            ty = (gy + 0.5 + 0.5) * (_TEMPLATE / 2) - 0.5
            ink = _bilinear(flat, index[s, None, None], ty, tx)  # (c, H, W)
            images[s, ..., 0] = np.round(np.clip(ink, 0, 1) * 255).astype(np.uint8)
        super().__init__(images, labels)
        self.seed, self.size = seed, size


# ----------------------------------------------------------------------------- MNIST from its files
_MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: str) -> np.ndarray:
    """Read an idx file (MNIST's format: magic, dims as big-endian int32, then uint8 data)."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    shape = tuple(np.frombuffer(data, ">i4", count=ndim, offset=4))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def _find(root: str, name: str):
    for folder in (root, os.path.join(root, "MNIST", "raw"), os.path.join(root, "raw")):
        for candidate in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
            if os.path.isfile(candidate):
                return candidate
    return None


def load_mnist(root: str, train: bool = True, download: bool = False) -> DigitArrays:
    """MNIST from its idx files under ``root`` (or ``root/MNIST/raw``, torchvision's layout).

    ``download=True`` fetches them with torchvision's MNIST first, if torchvision is installed
    and the network is reachable. Without the files: FileNotFoundError; use ProceduralDigits.
    """
    image_name, label_name = _MNIST_FILES[train]
    if download and _find(root, image_name) is None:
        try:
            from torchvision.datasets import MNIST  # optional: only for downloading
        except Exception as err:  # not installed, or a build that does not match torch
            raise FileNotFoundError(
                f"MNIST is not under {root} and torchvision cannot be imported to download it ({err}); "
                "use minidiff.data.ProceduralDigits instead"
            ) from err
        MNIST(root, train=train, download=True)
    image_path, label_path = _find(root, image_name), _find(root, label_name)
    if image_path is None or label_path is None:
        raise FileNotFoundError(
            f"MNIST files {image_name}[.gz] and {label_name}[.gz] not found under {root} "
            "(nor in MNIST/raw); use minidiff.data.ProceduralDigits for an offline stand-in"
        )
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST files {image_path} and {label_path} do not match: {images.shape}, {labels.shape}")
    return DigitArrays(images[..., None].copy(), labels)
