"""Tests for minidiff.data: formats, determinism, failure messages, and that sprites look like sprites."""

import gzip
import warnings

import numpy as np
import pytest
import torch

from minidiff.data import (
    CLASS_NAMES,
    VOCABULARY,
    ImageFolder,
    ProceduralDigits,
    ProceduralSprites,
    SpritesDataset,
    class_grid,
    from_uint8_images,
    load_mnist,
    load_sprites,
    sprite_structure_checks,
    to_uint8_images,
)
from minidiff.data import sprite_art as art
from minidiff.data.counter_rng import random_integers, random_uniform


@pytest.fixture(scope="module")
def sprites():
    return ProceduralSprites(2000, seed=3)


# ----------------------------------------------------------------------------- conventions
def test_uint8_round_trip_is_exact_and_maps_to_minus_one_one():
    u = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    x = from_uint8_images(u)
    assert x.shape == (4, 3, 5, 6) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert from_uint8_images(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)).flatten().tolist() == [-1.0, 1.0]
    np.testing.assert_array_equal(to_uint8_images(x), u)
    assert to_uint8_images(torch.tensor([[[[-3.0, 3.0]]]])).flatten().tolist() == [0, 255]  # clipped
    with pytest.raises(ValueError):
        from_uint8_images(u.astype(np.float32))


def test_counter_rng_is_per_index_and_per_stream():
    k = np.arange(1000)
    a = random_integers(7, 1, k, 10)
    np.testing.assert_array_equal(a[:10], random_integers(7, 1, k[:10], 10))
    assert not np.array_equal(a, random_integers(7, 2, k, 10))
    assert not np.array_equal(a, random_integers(8, 1, k, 10))
    assert np.bincount(a, minlength=10).min() > 60  # roughly uniform
    u = random_uniform(7, 3, k, -2.0, 2.0)
    assert u.min() >= -2 and u.max() < 2 and abs(u.mean()) < 0.2


# ----------------------------------------------------------------------------- procedural sprites
def test_sprites_format_and_items(sprites):
    assert sprites.images.shape == (2000, 16, 16, 3) and sprites.images.dtype == np.uint8
    assert sprites.labels.shape == (2000, 5) and sprites.labels.dtype == np.float32
    np.testing.assert_array_equal(sprites.labels.sum(1), 1)
    np.testing.assert_array_equal(np.bincount(sprites.class_ids, minlength=5), [400] * 5)
    image, context = sprites[7]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert -1 <= image.min() and image.max() <= 1
    assert torch.equal(context, torch.eye(5)[7 % 5])
    assert torch.equal(ProceduralSprites(5, null_context=True)[2][1], torch.zeros(5))
    images, contexts = sprites.tensors()
    assert images.shape == (2000, 3, 16, 16) and torch.equal(images[7], image)
    assert len(sprites.captions) == len(sprites.kinds) == len(sprites.main_colors) == 2000


def test_sprites_are_deterministic_and_image_k_does_not_depend_on_n(sprites):
    again = ProceduralSprites(2000, seed=3)
    assert again.images.tobytes() == sprites.images.tobytes() and again.captions == sprites.captions
    prefix = ProceduralSprites(50, seed=3)
    np.testing.assert_array_equal(prefix.images, sprites.images[:50])
    assert prefix.captions == sprites.captions[:50]
    other = ProceduralSprites(2000, seed=4)
    assert (other.images != sprites.images).any(axis=(1, 2, 3)).mean() > 0.9


def test_sprites_are_varied(sprites):
    distinct = len({im.tobytes() for im in sprites.images})
    assert distinct > 1600  # of 2000 (the course itself has 1788 distinct sprites in all)
    for c in range(5):  # every class has several kinds and colours
        idx = np.flatnonzero(sprites.class_ids == c)
        assert len({sprites.main_colors[i] for i in idx}) >= 3
        assert len({sprites.captions[i] for i in idx}) >= 10 or CLASS_NAMES[c] == "non-hero"


def test_size_32_is_the_16_sprites_upscaled():
    small, big = ProceduralSprites(20, seed=1), ProceduralSprites(20, seed=1, size=32)
    assert big.images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(big.images[:, ::2, ::2], small.images)
    np.testing.assert_array_equal(big.images[:, 1::2, 1::2], small.images)
    assert sprite_structure_checks(big.images, big.labels)["all"] == 1.0
    for bad in (8, 20, 15.0, 0):
        with pytest.raises(ValueError):
            ProceduralSprites(4, size=bad)
    with pytest.raises(ValueError):
        ProceduralSprites(-1)


def test_90k_sprites_generate_in_one_go():
    """The course's data-set size (its speed, ~0.5 s here, is for benchmarks to report, not tests to time)."""
    big = ProceduralSprites(90_000, seed=0)
    assert big.images.shape == (90_000, 16, 16, 3) and big.labels.shape == (90_000, 5)
    assert (big.labels.sum(0) == 18_000).all()


def test_structure_checks_pass_sprites_and_fail_noise(sprites):
    checks = sprite_structure_checks(sprites.images, sprites.labels)
    assert min(checks.values()) >= 0.99, checks
    noise = np.random.default_rng(0).integers(0, 256, (500, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(5)[np.arange(500) % 5]
    noisy = sprite_structure_checks(noise, labels)
    assert max(noisy.values()) <= 0.01, noisy
    # a slightly perturbed sprite fails exactly, passes with a tolerance; class ids work as labels
    jitter = np.clip(sprites.images[:100].astype(int) + 3, 0, 255).astype(np.uint8)
    assert sprite_structure_checks(jitter, sprites.class_ids[:100])["palette"] == 0.0
    assert sprite_structure_checks(jitter, sprites.class_ids[:100], tolerance=4)["palette"] == 1.0


def test_structure_checks_with_a_pixel_fraction_forgive_a_few_wrong_pixels(sprites):
    images, ids = sprites.images[:100].copy(), sprites.class_ids[:100]
    images[:, 5:7, 3:6] = (3, 200, 77)          # 6 off-palette, asymmetric pixels of 256 (2.3%) in every sprite
    exact = sprite_structure_checks(images, ids)
    assert exact["palette"] == 0.0 and exact["all"] == 0.0
    assert sprite_structure_checks(images, ids, min_fraction=0.95) == dict(
        palette=1.0, uniform_border=1.0, symmetric=1.0, all=1.0)
    # noise still fails with the forgiving settings used for model samples
    noise = np.random.default_rng(1).integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
    assert sprite_structure_checks(noise, ids, tolerance=24, min_fraction=0.8)["all"] == 0.0
    with pytest.raises(ValueError, match="min_fraction"):
        sprite_structure_checks(images, ids, min_fraction=0.0)


def test_front_facing_sprites_are_exactly_symmetric_and_side_facing_are_not(sprites):
    mirrored = (sprites.images == sprites.images[:, :, ::-1]).all(axis=(1, 2, 3))
    for name in ("hero", "non-hero", "spell"):
        assert mirrored[sprites.class_ids == CLASS_NAMES.index(name)].all(), name
    assert not mirrored[sprites.class_ids == CLASS_NAMES.index("side-facing")].any()
    drawings = [*art.HERO_BODIES.values(), *art.HERO_HEADGEAR.values(), art.HERO_CAPE, *art.HERO_HELD.values(),
                *art.MONSTERS.values()]
    for drawing in drawings:
        assert all(row == row[::-1] for row in drawing), drawing


def test_sprites_keep_a_uniform_background_border(sprites):
    x = sprites.images
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (N, 64, 3)
    assert (border == border[:, :1]).all()
    backgrounds = {tuple(c) for c in art.BACKGROUNDS}
    assert {tuple(c) for c in border[:, 0]} <= backgrounds
    assert ((x != border[:, :1, None]).any(-1).mean(axis=(1, 2)) > 0.15).all()  # a sprite is drawn


def test_captions_are_true_of_their_images(sprites):
    vocabulary = set(VOCABULARY)
    assert VOCABULARY == sorted(vocabulary)
    food_kinds, monster_kinds = set(art.FOODS), set(art.MONSTERS)
    for k, caption in enumerate(sprites.captions):
        words = caption.split()
        assert set(words) <= vocabulary, caption
        label = CLASS_NAMES[sprites.class_ids[k]]
        if label == "side-facing":
            assert "side-facing" in words and ("left" in words) != ("right" in words), caption
        elif label == "hero":
            assert "hero" in words and "side-facing" not in words, caption
        elif label == "spell":
            assert words[-1] == "spell", caption
        elif label == "food":
            assert words[1] in food_kinds, caption
        else:
            assert words[1] in monster_kinds, caption
        main = words[0]  # the caption's first word is the main colour, and that colour is painted
        assert main == sprites.main_colors[k]
        assert (sprites.images[k] == art.COLORS[main][1]).all(-1).sum() >= 2, caption
        if "cape" in words:  # "... a blue cape": the second colour is painted too
            second = words[words.index("cape") - 1]
            assert second != main and (sprites.images[k] == art.COLORS[second][1]).all(-1).any(), caption


def test_side_facing_sprites_look_the_way_their_caption_says(sprites):
    eye = np.array(art.FIXED["k"], np.uint8)
    for k in np.flatnonzero(sprites.class_ids == CLASS_NAMES.index("side-facing")):
        image = sprites.images[k]
        cols = np.arange(16)[None, :].repeat(16, 0)
        eye_col = cols[(image == eye).all(-1)].mean()
        body_col = cols[(image != image[0, 0]).any(-1)].mean()
        facing = "right" if eye_col > body_col else "left"  # the eye is on the front of the head
        assert f"facing {facing}" in sprites.captions[k], sprites.captions[k]


# ----------------------------------------------------------------------------- course files
def _write_course_files(tmp_path, n=10, images=None, labels=None):
    s = ProceduralSprites(n, seed=2)
    images = s.images if images is None else images
    labels = s.labels.astype(np.float64) if labels is None else labels
    sp, lp = tmp_path / "sprites_1788_16x16.npy", tmp_path / "sprite_labels_nc_1788_16x16.npy"
    np.save(sp, images)
    np.save(lp, labels)
    return s, sp, lp


def test_sprites_dataset_loads_the_course_format(tmp_path):
    s, sp, lp = _write_course_files(tmp_path)
    d = SpritesDataset(sp, lp)
    np.testing.assert_array_equal(d.images, s.images)
    assert d.labels.dtype == np.float32 and d.labels.shape == (10, 5)
    image, context = d[3]
    assert image.shape == (3, 16, 16) and torch.equal(context, torch.from_numpy(s.labels[3]))
    assert torch.equal(SpritesDataset(sp, lp, null_context=True)[3][1], torch.zeros(5))
    assert isinstance(load_sprites(tmp_path), SpritesDataset)


def test_save_course_files_round_trips(tmp_path):
    s = ProceduralSprites(15, seed=9)
    s.save_course_files(tmp_path)
    d = load_sprites(tmp_path)
    np.testing.assert_array_equal(d.images, s.images)
    np.testing.assert_array_equal(d.labels, s.labels)


def test_load_sprites_falls_back_to_procedural(tmp_path):
    with pytest.warns(UserWarning, match="ProceduralSprites"):
        d = load_sprites(tmp_path, n=25)
    assert isinstance(d, ProceduralSprites) and len(d) == 25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(load_sprites(None, n=5), ProceduralSprites)


BAD_FILES = {
    "missing sprites": ("sprites", FileNotFoundError, lambda sp, lp: sp.unlink()),
    "missing labels": ("labels", FileNotFoundError, lambda sp, lp: lp.unlink()),
    "truncated sprites": ("sprites", ValueError, lambda sp, lp: sp.write_bytes(sp.read_bytes()[:300])),
    "truncated labels": ("labels", ValueError, lambda sp, lp: lp.write_bytes(lp.read_bytes()[:100])),
    "not npy": ("sprites", ValueError, lambda sp, lp: sp.write_bytes(b"hello, not an array")),
    "pickled objects": ("sprites", ValueError,
                        lambda sp, lp: np.save(sp, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)),
    "fewer labels": ("labels", ValueError, lambda sp, lp: np.save(lp, np.eye(5)[np.arange(9) % 5])),
    "wrong image shape": ("sprites", ValueError, lambda sp, lp: np.save(sp, np.zeros((10, 16, 16), np.uint8))),
    "rgba images": ("sprites", ValueError, lambda sp, lp: np.save(sp, np.zeros((10, 16, 16, 4), np.uint8))),
    "float images": ("sprites", ValueError, lambda sp, lp: np.save(sp, np.zeros((10, 16, 16, 3), np.float32))),
    "labels not one-hot": ("labels", ValueError, lambda sp, lp: np.save(lp, np.full((10, 5), 0.2))),
    "labels wrong width": ("labels", ValueError, lambda sp, lp: np.save(lp, np.eye(4)[np.arange(10) % 4])),
    "string labels": ("labels", ValueError, lambda sp, lp: np.save(lp, np.full((10, 5), "x"))),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_course_files_raise_naming_the_file(tmp_path, case):
    which, error, damage = BAD_FILES[case]
    _, sp, lp = _write_course_files(tmp_path)
    damage(sp, lp)
    with pytest.raises(error) as info:
        SpritesDataset(sp, lp)
    assert str(sp if which == "sprites" else lp) in str(info.value)


# ----------------------------------------------------------------------------- image folders
def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_reads_converts_crops_and_flips(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)  # cropped away
    wide[:, 10:15] = (0, 0, 255)  # left half of the centre square
    wide[:, 15:20] = (0, 255, 0)  # right half of the centre square
    _png(tmp_path / "a_wide.png", wide)
    _png(tmp_path / "sub" / "b_grey.png", np.full((12, 12), 200, np.uint8))
    rgba = np.zeros((9, 9, 4), np.uint8)  # fully transparent: white
    _png(tmp_path / "sub" / "deeper" / "c_alpha.PNG", rgba)
    (tmp_path / "notes.txt").write_text("not an image")

    d = ImageFolder(tmp_path, size=10, random_flip=False)
    assert len(d) == 3 and [p.split("/")[-1] for p in d.paths] == ["a_wide.png", "b_grey.png", "c_alpha.PNG"]
    x = d[0]
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert torch.equal(x[:, :, 0], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, 10))  # blue at left
    assert torch.equal(x[:, :, -1], torch.tensor([-1.0, 1.0, -1.0])[:, None].expand(3, 10))  # green at right
    assert torch.allclose(d[1], torch.full((3, 10, 10), 200 / 127.5 - 1))
    assert torch.equal(d[2], torch.ones(3, 10, 10))

    flipping = ImageFolder(tmp_path, size=10, generator=torch.Generator().manual_seed(0))
    seen = {bool(torch.equal(flipping[0], x.flip(-1))) for _ in range(20)}
    assert seen == {True, False}  # flipped sometimes, not always
    assert len(ImageFolder(tmp_path, size=4, extensions=(".PNG",))) == 3  # extensions are case-blind


# ----------------------------------------------------------------------------- digits
def test_procedural_digits_format_and_look():
    d = ProceduralDigits(500, seed=1)
    assert d.images.shape == (500, 28, 28, 1) and d.images.dtype == np.uint8
    np.testing.assert_array_equal(d.labels, np.arange(500) % 10)
    image, label = d[13]
    assert image.shape == (1, 28, 28) and -1 <= image.min() and image.max() <= 1
    assert label.dtype == torch.int64 and label.item() == 3
    ink = d.images[..., 0] / 255.0
    assert 0.06 < ink.mean() < 0.25  # MNIST: 0.13
    edge = np.concatenate([ink[:, :2], ink[:, -2:], ink[:, :, :2].transpose(0, 2, 1)], axis=1)
    assert (edge.max(axis=(1, 2)) > 0.5).mean() < 0.03  # digits stay in the middle (MNIST: a 20x20 box)
    assert (ink.max(axis=(1, 2)) > 0.9).all()  # every image has solid strokes
    ys, xs = np.mgrid[0:28, 0:28] + 0.5
    mass = ink.sum(axis=(1, 2))
    cy, cx = (ink * ys).sum(axis=(1, 2)) / mass, (ink * xs).sum(axis=(1, 2)) / mass
    assert (np.abs(cy - 14) < 4).all() and (np.abs(cx - 14) < 4).all()
    # each class differs from the others on average (the glyphs are really different)
    means = np.stack([ink[d.labels == c].mean(0) for c in range(10)])
    distances = np.abs(means[:, None] - means[None]).mean(axis=(2, 3))
    assert distances[~np.eye(10, dtype=bool)].min() > 0.03


def test_procedural_digits_are_deterministic_and_prefix_stable():
    a, b = ProceduralDigits(60, seed=2), ProceduralDigits(60, seed=2)
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(ProceduralDigits(7, seed=2).images, a.images[:7])
    assert not np.array_equal(ProceduralDigits(60, seed=3).images, a.images)
    assert ProceduralDigits(4, size=32).images.shape == (4, 32, 32, 1)
    with pytest.raises(ValueError):
        ProceduralDigits(4, size=8)


def _idx(path, array, compress=False):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def test_load_mnist_reads_idx_files_or_says_what_to_use(tmp_path):
    with pytest.raises(FileNotFoundError, match="ProceduralDigits"):
        load_mnist(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    _idx(raw / "t10k-images-idx3-ubyte.gz", images, compress=True)
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(6))
    d = load_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(d.images[..., 0], images)
    assert d[5][1].item() == 5 and d[5][0].shape == (1, 28, 28)
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path, train=False)


def test_class_grid_layout(sprites):
    grid = class_grid(sprites.images, sprites.class_ids, per_class=10)
    assert grid.shape == (5 * 17 + 1, 10 * 17 + 1, 3)
    np.testing.assert_array_equal(grid[1:17, 1:17], sprites.images[0])
