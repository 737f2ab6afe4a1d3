"""Procedural sprites: the embedded stand-in for the course's sprite files, with captions.

The course's ``sprites_1788_16x16.npy`` cannot be downloaded here, so :class:`ProceduralSprites` is
minidiff's default sprite data wherever those files are absent. It makes 16x16 RGB pixel art in the
course's five classes and array format (same Dataset interface as ``SpritesDataset``):

    hero         front-facing humanoids with a helmet, crown or hat, a cape, two swords or a shield
    non-hero     front-facing creatures: slime, ghost, bat, spider, robot, cyclops
    food         apple, cherries, pear, mushroom, strawberry, grapes (some with a leaf)
    spell        radial magic: glow, ring, star, burst, orb
    side-facing  profiles of a hero, a bird and a cat, facing left or right

How it works, in three steps, all vectorised over the whole batch:

1. A *bank* of role maps is built once: every drawing of ``sprite_art.py`` combined with every
   accessory it can take, pasted into a 16x16 canvas and outlined. A role map says, per pixel,
   which *role* paints it (background, outline, main colour, skin, ...).
2. For image ``k`` the counter-based RNG (``counter_rng.py``) picks a bank entry of the class
   ``k % 5``, a shift, a main and a second colour, a background, skin and hair. Image ``k`` depends
   only on ``(seed, k)``: ``ProceduralSprites(10, s)`` is a prefix of ``ProceduralSprites(100, s)``.
3. Two integer gathers make the images: role maps by (entry, shifted row, column), then colours by
   (image, role). About 250,000 sprites per second on one CPU core (90,000 in ~0.35 s).

Each image gets a caption that is true of it by construction, e.g. "red hero with a helmet and
two swords", "green apple with a leaf", "blue ring spell", "brown side-facing cat facing left".
:func:`sprite_structure_checks` measures how sprite-like a batch of images is (used to judge
samples of a trained model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

from ..file_io import atomic_write
from . import sprite_art as art
from .counter_rng import random_integers
from .sprite_arrays import CLASS_NAMES, COURSE_LABELS_FILE, COURSE_SPRITES_FILE, SpriteArrays

COLOR_NAMES = tuple(art.COLORS)
SYMMETRIC_CLASSES = ("hero", "non-hero", "spell")  # drawn exactly left-right symmetric
_CANVAS, _MARGIN = 16, 2  # drawings are 12x12, pasted at (2, 2); outline may reach row/col 1
_MAX_SHIFT = 2
_ROLE = {c: r for r, c in enumerate(art.ROLE_CHARS)}  # role character -> palette row
_TRANSPARENT = -1


@dataclass
class _Entry:
    """One bank entry: a 16x16 role map and what can be said about a sprite drawn from it."""

    kind: str  # "slime", "hero", "apple", ...
    roles: np.ndarray  # (16, 16) int8 palette rows
    caption: str  # with {color} and maybe {color2} slots
    colors: tuple  # names the main colour may take
    shift_x: bool  # may it move sideways (not for symmetric classes)


# ----------------------------------------------------------------------------- building the bank
def _parse(drawing) -> np.ndarray:
    """12 strings of 12 role characters -> (12, 12) int8, -1 where transparent."""
    assert len(drawing) == 12 and all(len(row) == 12 for row in drawing), drawing
    return np.array([[_TRANSPARENT if c == "." else _ROLE[c] for c in row] for row in drawing], np.int8)


def _compose(*drawings, flip: bool = False) -> np.ndarray:
    """Layer drawings (first at the back), paste into the canvas, outline: (16, 16) role map."""
    layer = np.full((12, 12), _TRANSPARENT, np.int8)
    for drawing in drawings:
        top = _parse(drawing) if isinstance(drawing, list) else drawing
        layer = np.where(top != _TRANSPARENT, top, layer)
    canvas = np.zeros((_CANVAS, _CANVAS), np.int8)  # 0 = background
    canvas[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN] = np.maximum(layer, 0)
    return _outline(canvas[:, ::-1] if flip else canvas)


def _outline(canvas: np.ndarray) -> np.ndarray:
    """Paint the outline role on every background pixel that touches the sprite (4-neighbours)."""
    filled = canvas != 0
    touching = np.zeros_like(filled)
    touching[1:] |= filled[:-1]
    touching[:-1] |= filled[1:]
    touching[:, 1:] |= filled[:, :-1]
    touching[:, :-1] |= filled[:, 1:]
    return np.where(touching & ~filled, _ROLE["o"], canvas).astype(np.int8)


def _spell_drawing(shape: str, radius: float) -> np.ndarray:
    """A radial spell drawn from distances to the centre: (12, 12) role codes, -1 transparent."""
    y, x = np.mgrid[0:12, 0:12] - 5.5  # centred between the middle pixels: symmetric by construction
    d = np.hypot(x, y)
    ax, ay = np.abs(x), np.abs(y)
    code = np.full((12, 12), _TRANSPARENT, np.int8)
    a, shade, light, white = _ROLE["a"], _ROLE["A"], _ROLE["^"], _ROLE["w"]
    if shape == "glow":
        code[d < radius] = shade
        code[d < radius * 0.75] = a
        code[d < radius * 0.45] = light
        code[d < 1.0] = white
    elif shape == "ring":
        code[(d < radius) & (d >= radius - 1.6)] = a
        code[(d < radius - 1.6) & (d >= radius - 2.3)] = light
    elif shape == "star":  # four-pointed sparkle: a thin cross that narrows, and a small diamond
        code[(np.minimum(ax, ay) < 1.0) & (ax + ay < radius + 1)] = a
        code[ax + ay < 2.5] = light
        code[d < 1.0] = white
    elif shape == "burst":  # eight rays and a core
        on_ray = (np.minimum(ax, ay) < 1.0) | (np.abs(ax - ay) < 0.8)
        code[on_ray & (d < radius + 0.5) & (d > 2.2)] = a
        code[d < 2.2] = light
        code[(d > radius - 1.2) & (d < radius + 0.5) & on_ray] = shade
    elif shape == "orb":  # a ball with four sparkles at the corners
        code[d < radius - 1.5] = a
        code[d < radius - 3.0] = light
        code[(ax > 3.9) & (ax < 5.1) & (ay > 3.9) & (ay < 5.1) & (np.abs(ax - ay) < 0.5)] = light
    return code


def _caption(subject: str, features) -> str:
    return subject + (" with " + " and ".join(features) if features else "")


@lru_cache(maxsize=None)
def _bank():
    """All bank entries, grouped by class: {class name: [_Entry, ...]}. Built once (a few ms)."""
    bank = {name: [] for name in CLASS_NAMES}
    body_colors = tuple(c for c in COLOR_NAMES if c not in ("white", "grey"))
    vivid = tuple(c for c in body_colors if c != "brown")

    for drawing, headgear, cape, held in product(
        art.HERO_BODIES.values(), (None, *art.HERO_HEADGEAR), (False, True), (None, *art.HERO_HELD)
    ):
        layers = ([art.HERO_CAPE] if cape else []) + [drawing]
        layers += ([art.HERO_HEADGEAR[headgear]] if headgear else []) + ([art.HERO_HELD[held]] if held else [])
        features = ([f"a {headgear}"] if headgear else []) + (["a {color2} cape"] if cape else [])
        features += [held] if held else []
        bank["hero"].append(_Entry("hero", _compose(*layers), _caption("{color} hero", features), body_colors, False))

    for kind, drawing in art.MONSTERS.items():
        colors = {"ghost": COLOR_NAMES, "slime": vivid}.get(kind, body_colors)
        bank["non-hero"].append(_Entry(kind, _compose(drawing), "{color} " + kind, colors, False))
        if kind in art.MONSTERS_WITH_CROWN:  # a crown fits above the short ones
            crowned = _compose(drawing, art.MONSTER_CROWN)
            bank["non-hero"].append(_Entry(kind, crowned, f"{{color}} {kind} with a crown", colors, False))

    for kind, drawing in art.FOODS.items():
        for leaf, flip in product((False, True) if kind in art.FOOD_LEAVES else (False,), (False, True)):
            layers = [drawing] + ([art.FOOD_LEAVES[kind]] if leaf else [])
            features = ["white spots"] if kind == "mushroom" else ["a leaf"] if leaf else []
            caption = _caption("{color} " + kind, features)
            bank["food"].append(_Entry(kind, _compose(*layers, flip=flip), caption, art.FOOD_COLORS[kind], True))

    for shape, radius in product(("glow", "ring", "star", "burst", "orb"), (3.8, 4.7, 5.6)):
        roles = _compose(_spell_drawing(shape, radius))
        bank["spell"].append(_Entry(shape, roles, f"{{color}} {shape} spell", vivid, False))

    side_options = [("hero", extra, cape) for extra, cape in product((None, *art.SIDE_EXTRAS), (False, True))]
    side_options += [("bird", None, False), ("cat", None, False)]
    for (kind, extra, cape), facing in product(side_options, ("right", "left")):
        layers = ([art.SIDE_CAPE] if cape else []) + [art.SIDE_BODIES[kind]]
        layers += [art.SIDE_EXTRAS[extra]] if extra else []
        features = ([extra] if extra else []) + (["a {color2} cape"] if cape else [])
        caption = _caption(f"{{color}} side-facing {kind} facing {facing}", features)
        colors = body_colors if kind == "hero" else ("red", "blue", "yellow", "brown", "grey", "orange")
        bank["side-facing"].append(_Entry(kind, _compose(*layers, flip=facing == "left"), caption, colors, True))
    return bank


def _shift_range(roles: np.ndarray, axis: int):
    """(low, high) shifts along ``axis`` that keep the sprite off the 1-pixel border."""
    used = np.flatnonzero((roles != 0).any(axis=1 - axis))
    return max(1 - used[0], -_MAX_SHIFT), min(_CANVAS - 2 - used[-1], _MAX_SHIFT)


@lru_cache(maxsize=None)
def _bank_arrays():
    """The bank as flat arrays, for vectorised gathers (E = number of entries)."""
    entries = [e for name in CLASS_NAMES for e in _bank()[name]]
    first = np.cumsum([0] + [len(_bank()[name]) for name in CLASS_NAMES])
    roles = np.stack([e.roles for e in entries])  # (E, 16, 16)
    dy = np.array([_shift_range(e.roles, 0) for e in entries])  # (E, 2)
    dx = np.array([_shift_range(e.roles, 1) if e.shift_x else (0, 0) for e in entries])  # (E, 2)
    width = max(len(e.colors) for e in entries)
    colors = np.array([([COLOR_NAMES.index(c) for c in e.colors] * width)[:width] for e in entries])  # (E, C)
    n_colors = np.array([len(e.colors) for e in entries])
    return entries, first, roles, dy, dx, colors, n_colors


def _color_table():
    """(K, 3, 3) uint8: for colour k, its [light, base, shade] RGB."""
    return np.array([art.COLORS[c] for c in COLOR_NAMES], np.uint8)


def all_sprite_colors() -> np.ndarray:
    """(P, 3) uint8: every RGB colour the generator can paint (for the palette check)."""
    fixed = [c for row in art.COLORS.values() for c in row] + list(art.FIXED.values())
    return np.unique(np.array(fixed + list(art.BACKGROUNDS + art.SKINS + art.HAIRS), np.uint8), axis=0)


# ----------------------------------------------------------------------------- generating
_STREAMS = dict(entry=1, dy=2, dx=3, color=4, color2=5, background=6, skin=7, hair=8)


def _generate(n: int, seed: int):
    """Images (n, 16, 16, 3) uint8, class ids (n,), bank entry ids (n,), palettes (n, R, 3), colours."""
    entries, first, bank_roles, dy_range, dx_range, bank_colors, n_colors = _bank_arrays()
    k = np.arange(n)

    def rand(stream, high):
        return random_integers(seed, _STREAMS[stream], k, high)

    class_id = k % len(CLASS_NAMES)  # exactly balanced, and independent of n
    entry = first[class_id] + rand("entry", first[class_id + 1] - first[class_id])  # (n,)
    dy = dy_range[entry, 0] + rand("dy", dy_range[entry, 1] - dy_range[entry, 0] + 1)
    dx = dx_range[entry, 0] + rand("dx", dx_range[entry, 1] - dx_range[entry, 0] + 1)
    color = bank_colors[entry, rand("color", n_colors[entry])]  # main colour, index into COLOR_NAMES
    n_all = len(COLOR_NAMES)
    color2 = (color + 1 + rand("color2", n_all - 1)) % n_all  # any colour but the main one

    # palette per image: row r is the RGB of role ROLE_CHARS[r]
    table = _color_table()
    palettes = np.empty((n, len(art.ROLE_CHARS), 3), np.uint8)
    palettes[:, _ROLE["_"]] = np.array(art.BACKGROUNDS, np.uint8)[rand("background", len(art.BACKGROUNDS))]
    palettes[:, _ROLE["^"]], palettes[:, _ROLE["a"]], palettes[:, _ROLE["A"]] = table[color].transpose(1, 0, 2)
    palettes[:, _ROLE["b"]], palettes[:, _ROLE["B"]] = table[color2, 1], table[color2, 2]
    palettes[:, _ROLE["s"]] = np.array(art.SKINS, np.uint8)[rand("skin", len(art.SKINS))]
    palettes[:, _ROLE["h"]] = np.array(art.HAIRS, np.uint8)[rand("hair", len(art.HAIRS))]
    for char, rgb in art.FIXED.items():
        palettes[:, _ROLE[char]] = rgb

    # shift by (dy, dx): output pixel (y, x) reads role map pixel (y - dy, x - dx); what wraps is background
    rows = (np.arange(_CANVAS)[None, :, None] - dy[:, None, None]) % _CANVAS  # (n, 16, 1)
    cols = (np.arange(_CANVAS)[None, None, :] - dx[:, None, None]) % _CANVAS  # (n, 1, 16)
    roles = bank_roles[entry[:, None, None], rows, cols]  # (n, 16, 16)
    images = palettes[k[:, None, None], roles]  # (n, 16, 16, 3)
    return images, class_id, entry, palettes, color, color2


class ProceduralSprites(SpriteArrays):
    """``n`` procedural 16x16 sprites in the course's 5 classes, deterministic in ``(n, seed)``.

    Attributes: ``images`` (n, size, size, 3) uint8, ``labels`` (n, 5) float32 one-hot (class
    ``k % 5`` for image ``k``), ``captions`` list[str], ``kinds`` list[str] (e.g. "slime"),
    ``main_colors`` list[str], ``palettes`` (n, R, 3) uint8 (row r paints role ``ROLE_CHARS[r]``).
    ``size`` must be a multiple of 16: 32 gives the same sprites upscaled x2 (nearest).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 16, null_context: bool = False):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(size, (int, np.integer)) or size < 16 or size % 16:
            raise ValueError(f"size must be a multiple of 16 (16, 32, ...), got {size!r}")
        images, class_id, entry, palettes, color, color2 = _generate(int(n), int(seed))
        if size != 16:
            f = size // 16
            images = images.repeat(f, axis=1).repeat(f, axis=2)  # nearest-neighbour upscale
        labels = np.eye(len(CLASS_NAMES), dtype=np.float32)[class_id]  # (n, 5)
        super().__init__(images, labels, null_context)
        self.seed, self.size, self.palettes = seed, size, palettes
        entries = _bank_arrays()[0]
        self.kinds = [entries[e].kind for e in entry]
        self.main_colors = [COLOR_NAMES[c] for c in color]
        self.captions = [
            entries[e].caption.format(color=COLOR_NAMES[c], color2=COLOR_NAMES[c2])
            for e, c, c2 in zip(entry, color, color2)
        ]

    def save_course_files(self, directory: str):
        """Write the course's two .npy files (so the SpritesDataset code path can be tried)."""
        for name, array in ((COURSE_SPRITES_FILE, self.images), (COURSE_LABELS_FILE, self.labels.astype(np.float64))):
            atomic_write(os.path.join(directory, name), lambda f, array=array: np.save(f, array))


@lru_cache(maxsize=None)
def kind_to_class() -> dict:
    """{drawing word ("slime", "ring", "cat", ...): sprite class}: the class each kind of sprite is drawn for
    (a kind in two classes maps to the first in CLASS_NAMES order: "hero" is a hero)."""
    kinds = {}
    for class_name, entries in _bank().items():             # in CLASS_NAMES order: "hero" first
        for entry in entries:
            kinds.setdefault(entry.kind, class_name)
    return kinds


def _caption_words():
    words = set()
    for entries in _bank().values():
        for e in entries:
            words |= set(e.caption.format(color="", color2="").split())
    return sorted(words | set(COLOR_NAMES))


VOCABULARY = _caption_words()  # every word a caption can contain, sorted


# ----------------------------------------------------------------------------- quality checks
@lru_cache(maxsize=4)
def _palette_lookup(tolerance: int) -> np.ndarray:
    """(256, 256, 256) bool: True for every RGB within ``tolerance`` of a generator colour (16 MB)."""
    lookup = np.zeros((256, 256, 256), bool)
    for r, g, b in all_sprite_colors().astype(int) - tolerance:  # the low corner of a cube
        side = 2 * tolerance + 1
        lookup[max(r, 0):r + side, max(g, 0):g + side, max(b, 0):b + side] = True
    return lookup


def sprite_structure_checks(images: np.ndarray, labels, tolerance: int = 0, min_fraction: float = 1.0) -> dict:
    """How sprite-like images are: the fraction of images passing each check.

    images: (N, H, W, 3) uint8. labels: (N, 5) one-hot or (N,) class ids. A pixel "matches" a
    colour when every channel is within ``tolerance``; an image passes a check when at least
    ``min_fraction`` of the pixels the check looks at match. The defaults (0, 1.0) are exact: what
    the generator guarantees. For model samples minidiff.metrics uses tolerance=24, min_fraction=0.8.

        palette         its pixels are colours the generator can paint
        uniform_border  the 1-pixel border is the background colour nearest to the border's median
        symmetric       left-right mirror pixels match (only images of SYMMETRIC_CLASSES count)
        all             passes every check that applies to it

    Procedural sprites pass all of them; uniform noise passes none.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    class_id = labels.argmax(axis=1) if labels.ndim == 2 else labels
    x = images.astype(np.int16)

    def matches(a, b):                                    # every channel within the tolerance
        return np.abs(a - b).max(axis=-1) <= tolerance

    lookup = _palette_lookup(tolerance)  # (256, 256, 256) bool
    on_palette = lookup[images[..., 0], images[..., 1], images[..., 2]].mean(axis=(1, 2)) >= min_fraction

    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (n, 4W, 3)
    backgrounds = np.array(art.BACKGROUNDS, np.int16)                             # (B, 3)
    median = np.median(border, axis=1)                                            # (n, 3)
    nearest = backgrounds[np.abs(median[:, None] - backgrounds).max(axis=-1).argmin(axis=1)]
    uniform_border = matches(border, nearest[:, None]).mean(axis=1) >= min_fraction

    must_be_symmetric = np.isin(class_id, [CLASS_NAMES.index(c) for c in SYMMETRIC_CLASSES])
    mirrored = matches(x, x[:, :, ::-1]).mean(axis=(1, 2)) >= min_fraction
    symmetric = mirrored[must_be_symmetric]

    passes = on_palette & uniform_border & (mirrored | ~must_be_symmetric)

    def fraction(ok):
        return float(ok.mean()) if ok.size else float("nan")

    return dict(palette=fraction(on_palette), uniform_border=fraction(uniform_border),
                symmetric=fraction(symmetric), all=fraction(passes))
