"""The sprites of DeepLearning.AI's "How Diffusion Models Work" course, loaded from its .npy files.

The course ships two arrays:

    sprites_1788_16x16.npy            (N, 16, 16, 3) uint8   RGB pixel art
    sprite_labels_nc_1788_16x16.npy   (N, 5)         float   one-hot: hero, non-hero, food, spell, side-facing

They cannot be downloaded here, so wherever they are absent minidiff uses
:class:`~minidiff.data.procedural.ProceduralSprites`, a generator of sprites with the same shapes,
classes and interface. :func:`load_sprites` picks whichever is available.

Both are :class:`SpriteArrays`: a torch Dataset whose item ``k`` is
``(image [3, H, W] float in [-1, 1], context [5] float)``; the context is the one-hot class,
or all zeros with ``null_context=True`` (the course's unconditional option).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .procedural import ProceduralSprites
from .sprite_arrays import CLASS_NAMES, COURSE_LABELS_FILE, COURSE_SIZE, COURSE_SPRITES_FILE, SpriteArrays


def _load_npy(path: str, what: str) -> np.ndarray:
    """np.load that refuses pickles and says which file is wrong, whatever goes wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # truncated file, pickled object array, not a .npy file at all
        raise ValueError(f"could not read {what} file {path}: {err}") from err
    if not isinstance(array, np.ndarray):  # an .npz archive gives an NpzFile
        raise ValueError(f"{what} file {path} is not a single .npy array")
    return array


class SpritesDataset(SpriteArrays):
    """The course's sprites from its two .npy files (see the module docstring for their format).

    Raises FileNotFoundError if a file is missing and ValueError (naming the file) if a file is
    truncated, pickled, or does not have the course's shapes, dtypes and one-hot labels.
    """

    def __init__(self, sprites_path: str, labels_path: str, null_context: bool = False):
        sprites_path, labels_path = os.fspath(sprites_path), os.fspath(labels_path)
        images = _load_npy(sprites_path, "sprites")
        labels = _load_npy(labels_path, "labels")

        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"sprites file {sprites_path}: expected shape (N, H, H, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"sprites file {sprites_path}: expected dtype uint8, got {images.dtype}")
        if labels.ndim != 2 or labels.shape[1] != len(CLASS_NAMES):
            raise ValueError(f"labels file {labels_path}: expected shape (N, 5), got {labels.shape}")
        if labels.dtype.kind not in "fiu":
            raise ValueError(f"labels file {labels_path}: expected a float or integer dtype, got {labels.dtype}")
        if len(labels) != len(images):
            raise ValueError(
                f"labels file {labels_path} has {len(labels)} rows but sprites file {sprites_path} "
                f"has {len(images)} images"
            )
        one_hot = np.all((labels == 0) | (labels == 1), axis=1) & (labels.sum(axis=1) == 1)
        if not one_hot.all():
            bad = int(np.flatnonzero(~one_hot)[0])
            raise ValueError(f"labels file {labels_path}: row {bad} is not one-hot: {labels[bad]}")

        super().__init__(images, labels, null_context)
        self.sprites_path, self.labels_path = sprites_path, labels_path


def load_sprites(root=None, n: int = COURSE_SIZE, seed: int = 0, null_context: bool = False) -> SpriteArrays:
    """The course's sprites if both files are in ``root``, else ``ProceduralSprites(n, seed)``.

    A ``root`` that is given but lacks the files gives a warning, then the procedural sprites.
    """
    if root is not None:
        sprites_path = os.path.join(root, COURSE_SPRITES_FILE)
        labels_path = os.path.join(root, COURSE_LABELS_FILE)
        if os.path.isfile(sprites_path) and os.path.isfile(labels_path):
            return SpritesDataset(sprites_path, labels_path, null_context)
        warnings.warn(
            f"the course's sprite files are not in {root}; using ProceduralSprites({n}, seed={seed})",
            stacklevel=2,
        )
    return ProceduralSprites(n, seed=seed, null_context=null_context)
