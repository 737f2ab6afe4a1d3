"""Your own images: every picture in a folder, as training data, with or without labels. Pillow only.

Two layouts, told apart by what ``root`` holds directly:

    flat (unconditional)            labelled (torchvision's ImageFolder convention)
    root/a.png                      root/cat/x.png     -> class 0 "cat"
    root/b.jpg                      root/cat/more/y.png (any depth below a class folder)
    root/sub/c.png (also read)      root/dog/z.png     -> class 1 "dog"

A folder with image files directly in it is flat: every image below it, item ``k`` is the image
tensor alone. A folder with no images of its own and class subfolders is labelled: ``classes`` are
the subfolder names, sorted; ``class_to_idx`` maps them to ids 0..K-1; item ``k`` is ``(image, class
id)``, the id an int. Hidden entries (a leading dot) are skipped. ``labelled=True`` / ``False`` forces
a layout.

Pixels: EXIF orientation is applied (a phone's portrait photo stands up); transparent pixels are
composited onto white; 16-bit images (PNG "I;16" / "I") are scaled by 1/65535 and float images
("F", e.g. a float TIFF) are read as values in [0, 1], so mid-gray is mid-gray at every bit depth.
Then the image is centre-cropped to a square, resized (bicubic) to ``size`` x ``size``, converted to
``channels`` (1: gray, 3: RGB), flipped left-right with probability 1/2 if ``random_flip``, and mapped
to [-1, 1]. Only regular files are read: a FIFO or a device named ``x.png`` is skipped, not opened.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..limits import check_image_side
from .convert import from_uint8_images
from .counter_rng import random_bits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")   # "I": Pillow's 32-bit int mode, 16-bit PNGs open so
FLIP_STREAM = 0x464C4950                                        # counter-RNG stream of the seeded flips ("FLIP")


def _is_image_file(path: str, extensions) -> bool:
    """A regular file (symlinks followed) whose name ends with one of `extensions`; never opens it."""
    if not path.lower().endswith(extensions) or os.path.basename(path).startswith("."):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)              # a FIFO would block open(); a device too
    except OSError:                                             # a broken symlink, no permission
        return False


def _find_images(root: str, extensions) -> list:
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))  # fixed order on every machine
        paths += [p for p in (os.path.join(folder, f) for f in sorted(files)) if _is_image_file(p, extensions)]
    return paths


def _to_float_image(image):
    """A 16-bit or float Pillow image -> mode "F" with values in [0, 1]; other images unchanged."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float32) / 65535.0  # 32768 -> 0.50001 (mid-gray), not white
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)            # float images hold [0, 1]
    else:
        return image
    return Image.fromarray(np.clip(np.nan_to_num(values), 0.0, 1.0).astype(np.float32), mode="F")


def load_image(path: str, size: int, channels: int = 3) -> np.ndarray:
    """One image file -> (size, size, channels) uint8 or, for 16-bit and float files, float32 in [0, 1].

    EXIF orientation applied, transparency composited onto white, centre-cropped, resized (bicubic).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_float_image(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image.convert("RGBA"))
            if image.mode != "F":
                image = image.convert("RGB" if channels == 3 else "L")
    except Exception as err:  # not an image, truncated, unsupported format
        raise ValueError(f"could not read image file {path}: {err}") from err
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    if image.mode == "F":                                       # (size, size) float in [0, 1]
        values = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)[..., None]
        return np.repeat(values, channels, axis=-1)
    pixels = np.array(image, dtype=np.uint8)                    # a writable copy
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _class_folders(root: str, extensions) -> Optional[list]:
    """Sorted names of root's class subfolders if root is labelled (no images of its own), else None."""
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    if any(_is_image_file(os.path.join(root, e), extensions) for e in entries):
        return None
    folders = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    return folders or None


class ImageFolder(Dataset):
    """The images under ``root``: item ``k`` is ``[channels, size, size]`` in [-1, 1], and its class id
    (an int) when the folder is labelled (see the module docstring).

    Attributes: ``paths`` (sorted), and for a labelled folder ``classes``, ``class_to_idx``, ``targets``
    (one class id per path) and ``samples`` ((path, class id) pairs), as in torchvision; None for a flat folder.
    Raises FileNotFoundError for a missing folder, one without images of the accepted ``extensions``,
    or a class folder without images; reading a file that is not a valid image raises ValueError naming it.

    Flips: with ``generator`` (a torch.Generator) they are reproducible in one process. A Trainer calls
    ``seed_augmentation(seed, epoch)`` instead: then whether item k is flipped depends only on
    (seed, epoch, k), the same in every process, DataLoader worker and resumed run.
    """

    def __init__(self, root: str, size: int, random_flip: bool = True, extensions=IMAGE_EXTENSIONS,
                 generator: Optional[torch.Generator] = None, channels: int = 3, labelled: Optional[bool] = None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        check_image_side(size, "size")                                   # at most limits.MAX_IMAGE_SIDE
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
        if labelled not in (None, True, False):
            raise ValueError(f"labelled must be None (decide from the folder), True or False, got {labelled!r}")
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.root, self.size, self.channels = root, int(size), channels
        self.random_flip, self.generator, self.flip_seed = random_flip, generator, None
        classes = _class_folders(root, self.extensions) if labelled is not False else None
        if labelled and classes is None:
            raise FileNotFoundError(f"labelled=True needs class subfolders (root/<class>/<image>) and no images "
                                    f"directly in {root}")
        self.classes, self.class_to_idx, self.targets, self.samples = None, None, None, None
        if classes is None:
            self.paths = _find_images(root, self.extensions)
        else:
            per_class = [_find_images(os.path.join(root, name), self.extensions) for name in classes]
            empty = [name for name, paths in zip(classes, per_class) if not paths]
            if empty:
                raise FileNotFoundError(f"class folder(s) {empty} in {root} hold no images with extensions "
                                        f"{self.extensions}; remove them or add images")
            self.classes = list(classes)
            self.class_to_idx = {name: i for i, name in enumerate(classes)}
            self.paths = [p for paths in per_class for p in paths]
            self.targets = [i for i, paths in enumerate(per_class) for _ in paths]
            self.samples = list(zip(self.paths, self.targets))                # torchvision's (path, class id) list
        if not self.paths:
            raise FileNotFoundError(f"no images with extensions {self.extensions} in {root} (searched recursively)")

    def __len__(self) -> int:
        return len(self.paths)

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """From now on, flip item k iff bit (seed, epoch, k) of a counter-based RNG says so (Trainer-driven)."""
        self.flip_seed = (int(seed), int(epoch))

    def _flip(self, k: int) -> bool:
        if not self.random_flip:
            return False
        if self.flip_seed is not None:
            seed, epoch = self.flip_seed
            return bool(random_bits(seed, FLIP_STREAM ^ epoch, np.array(k)) >> np.uint64(63))
        return bool(torch.rand((), generator=self.generator) < 0.5)

    def image(self, k: int) -> torch.Tensor:
        """Image k, never flipped: [channels, size, size] float32 in [-1, 1]."""
        pixels = load_image(self.paths[k], self.size, self.channels)      # (size, size, C)
        if pixels.dtype == np.uint8:
            return from_uint8_images(pixels[None])[0]                     # [C, size, size]
        return torch.from_numpy(pixels).permute(2, 0, 1) * 2.0 - 1.0      # [0, 1] -> [-1, 1]

    def __getitem__(self, k: int):
        image = self.image(k)
        if self._flip(k):
            image = image.flip(-1)
        return image if self.classes is None else (image, self.targets[k])

    def tensors(self):
        """(images [N, C, size, size], class ids int64 [N] or None): every image, unflipped (for metrics)."""
        images = torch.stack([self.image(k) for k in range(len(self))])
        labels = torch.tensor(self.targets, dtype=torch.int64) if self.classes is not None else None
        return images, labels
