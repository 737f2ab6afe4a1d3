"""SpriteArrays: sprites held as arrays with the course's five classes; the base of SpritesDataset
(sprites.py, the course's files) and ProceduralSprites (procedural.py, the embedded stand-in).

Item ``k`` is ``(image [3, H, W] float in [-1, 1], context [5] float)``; the context is the one-hot
class, or all zeros with ``null_context=True`` (the course's unconditional option).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .convert import from_uint8_images

CLASS_NAMES = ("hero", "non-hero", "food", "spell", "side-facing")
COURSE_SPRITES_FILE = "sprites_1788_16x16.npy"
COURSE_LABELS_FILE = "sprite_labels_nc_1788_16x16.npy"
COURSE_SIZE = 89400  # images in the course's files


class SpriteArrays(Dataset):
    """Sprites held as arrays: ``images`` (N, H, W, 3) uint8 and ``labels`` (N, 5) float32 one-hot.

    ``classes`` names the five label columns, as torchvision's datasets name theirs.
    """

    classes = list(CLASS_NAMES)

    def __init__(self, images: np.ndarray, labels: np.ndarray, null_context: bool = False):
        self.images = images
        self.labels = labels.astype(np.float32, copy=False)
        self.null_context = null_context

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int):
        image = from_uint8_images(self.images[k][None])[0]  # [3, H, W] in [-1, 1]
        context = torch.from_numpy(self.labels[k].copy())  # [5]
        if self.null_context:
            context = torch.zeros_like(context)
        return image, context

    @property
    def class_ids(self) -> np.ndarray:
        """(N,) int64: the index into CLASS_NAMES of each image."""
        return self.labels.argmax(axis=1)

    def tensors(self):
        """The whole set at once: ``(images [N, 3, H, W] in [-1, 1], contexts [N, 5])``.

        For small data sets it is faster to keep these on the GPU than to use a DataLoader.
        """
        contexts = torch.from_numpy(self.labels.copy())
        if self.null_context:
            contexts = torch.zeros_like(contexts)
        return from_uint8_images(self.images), contexts
