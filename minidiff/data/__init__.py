"""Data for minidiff: images as float tensors [B, C, H, W] in [-1, 1], converted from uint8 HWC.

    SpritesDataset     the DeepLearning.AI course's 16x16 sprites, from its two .npy files
    ProceduralSprites  the embedded stand-in: same format and classes, with captions; the default
                       wherever the course's files are absent (see load_sprites)
    ProceduralDigits   MNIST-like 28x28 digits drawn with random pens; load_mnist reads MNIST itself
    ImageFolder        your own pictures, from a folder
"""

from .convert import from_uint8_images, to_uint8_images
from .digits import DigitArrays, ProceduralDigits, load_mnist
from .image_folder import IMAGE_EXTENSIONS, ImageFolder
from .preview import class_grid, save_grid_png
from .procedural import (
    COLOR_NAMES,
    SYMMETRIC_CLASSES,
    VOCABULARY,
    ProceduralSprites,
    all_sprite_colors,
    sprite_structure_checks,
)
from .sprite_arrays import CLASS_NAMES, SpriteArrays
from .sprites import SpritesDataset, load_sprites

__all__ = [
    "CLASS_NAMES", "COLOR_NAMES", "IMAGE_EXTENSIONS", "SYMMETRIC_CLASSES", "VOCABULARY",
    "DigitArrays", "ImageFolder", "ProceduralDigits", "ProceduralSprites", "SpriteArrays", "SpritesDataset",
    "all_sprite_colors", "class_grid", "from_uint8_images", "load_mnist", "load_sprites", "save_grid_png",
    "sprite_structure_checks", "to_uint8_images",
]
