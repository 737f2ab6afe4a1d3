"""Your own images: every picture in a folder (and its subfolders), as training data. Pillow only.

Each image is converted to RGB (transparent pixels composited onto white), centre-cropped to a
square, resized to ``size`` x ``size``, flipped left-right with probability 1/2 if ``random_flip``,
and mapped to [-1, 1]. Item ``k`` is the image tensor alone, ``[3, size, size]``: a folder has no
labels, so a trainer treats it as unconditional data (no context).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .convert import from_uint8_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _find_images(root: str, extensions) -> list:
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()  # a fixed walk order, so index k is the same file on every machine
        paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(extensions)]
    return paths


def load_rgb_square(path: str, size: int) -> np.ndarray:
    """One image file -> (size, size, 3) uint8: RGB on white, centre-cropped, resized (bicubic)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image.convert("RGBA"))
            image = image.convert("RGB")
    except Exception as err:  # not an image, truncated, unsupported format
        raise ValueError(f"could not read image file {path}: {err}") from err
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.uint8)  # a writable copy


class ImageFolder(Dataset):
    """All images under ``root`` (recursive, sorted paths): item ``k`` is ``[3, size, size]`` in [-1, 1].

    Raises FileNotFoundError for a missing folder or one without images of the accepted
    ``extensions``; reading a file that is not a valid image raises ValueError naming it.
    ``generator`` (a torch.Generator) makes the random flips reproducible in one process; leave it
    None with DataLoader workers (each worker's torch RNG is seeded differently, a shared one is not).
    """

    def __init__(self, root: str, size: int, random_flip: bool = True, extensions=IMAGE_EXTENSIONS,
                 generator: torch.Generator = None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.paths = _find_images(root, self.extensions)
        if not self.paths:
            raise FileNotFoundError(f"no images with extensions {self.extensions} in {root} (searched recursively)")
        self.root, self.size, self.random_flip, self.generator = root, size, random_flip, generator

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> torch.Tensor:
        pixels = load_rgb_square(self.paths[k], self.size)  # (size, size, 3) uint8
        image = from_uint8_images(pixels[None])[0]  # [3, size, size] in [-1, 1]
        if self.random_flip and torch.rand((), generator=self.generator) < 0.5:
            image = image.flip(-1)
        return image
