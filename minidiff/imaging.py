"""Pictures of what a diffusion model does: image grids, denoising GIFs, line plots. Pillow only.

Images come in as minidiff tensors, float NCHW in [-1, 1] (values outside are clipped), with 1 or 3
channels. Small images (16x16 sprites) are enlarged by an integer `scale` with nearest-neighbour
resampling so pixels stay crisp. Every ``save_*`` function creates the parent folder and returns the
PIL image it wrote.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFont
from torch import Tensor

from .file_io import atomic_write

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
    """make_grid as a PIL image, enlarged `scale` times with nearest-neighbour resampling.

    Its size is checked before anything is drawn (minidiff.limits: each side at most 65,535 pixels)."""
    from .limits import check_grid
    shape = torch.as_tensor(images).shape
    if len(shape) == 4:
        check_grid(shape[0], shape[2], shape[3], nrow, scale)
    image = Image.fromarray(make_grid(images, nrow, padding))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def save_picture(image: Image.Image, path: PathLike, **options) -> None:
    """image.save(path, **options) atomically (file_io.atomic_write): a full disk or a crash never leaves a
    truncated picture, and a failed write raises OSError naming `path` ("no space left on ...")."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"cannot tell the picture format of {path!r} from its extension (use .png, .gif, ...)")
    atomic_write(path, lambda f: image.save(f, format=image_format, **options))


# ---------------------------------------------------------------------------------- files
def save_image_grid(images: Tensor, path: PathLike, nrow: Optional[int] = None, scale: int = 4,
                    padding: int = 1) -> Image.Image:
    """Write [N, C, H, W] images in [-1, 1] as one PNG grid."""
    image = grid_image(images, nrow, scale, padding)
    save_picture(image, path)
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
    save_picture(images[0], path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False)
    return images[0]


def _font(size: int = 12):
    """DejaVu Sans where the system has it (it draws accents), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
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
    save_picture(canvas, path)
    return canvas


# ---------------------------------------------------------------------------------- line plots
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207)]
GREY = (120, 120, 120)
Colour = Tuple[int, int, int]


@dataclass
class Series:
    """One curve or point cloud of a `line_plot`. A NaN or inf in x or y breaks the line there."""

    x: Sequence[float]
    y: Sequence[float]
    label: Optional[str] = None          # legend text (None: not in the legend)
    colour: Optional[Colour] = None      # RGB; None takes the next PALETTE colour
    line: bool = True                    # join consecutive points
    dashed: bool = False
    markers: bool = False                # a dot on every point
    width: int = 2                       # line width in pixels
    radius: float = 3.0                  # dot radius in pixels


def line_plot(series: Sequence[Series], path: Optional[PathLike] = None, *, title: str = "", xlabel: str = "",
              ylabel: str = "", log_x: bool = False, log_y: bool = False, xlim=None, ylim=None,
              size: Tuple[int, int] = (640, 400), font_size: int = 12, legend: str = "best",
              notes: Sequence[str] = ()) -> Image.Image:
    """Draw series on one pair of axes with Pillow (no matplotlib needed); write a PNG when `path` is given.

    size is the plot's (width, height) in pixels; legend is "best" (the corner hiding the fewest points),
    "upper right" | "upper left" | "lower left" | "lower right" (inside the axes) or "outside" (a column
    to the right, where the `notes` lines also go).
    xlim / ylim fix an axis' range (data units); by default it spans the data. Points outside are clipped.
    """
    font, small = _font(font_size), _font(font_size - 1)
    colours = iter(PALETTE * (len(series) // len(PALETTE) + 1))
    series = [replace(s, colour=s.colour or next(colours)) for s in series]
    to_axis = [_axis_values(s.x, log_x) for s in series], [_axis_values(s.y, log_y) for s in series]
    for s, xs, ys in zip(series, *to_axis):
        if len(xs) != len(ys):
            raise ValueError(f"series {s.label or ''!r}: x and y must have the same length, "
                             f"got {len(xs)} and {len(ys)}")
    x_lo, x_hi = _axis_range(to_axis[0], xlim, log_x)
    y_lo, y_hi = _axis_range(to_axis[1], ylim, log_y)
    x_ticks, y_ticks = _ticks(x_lo, x_hi, log_x), _ticks(y_lo, y_hi, log_y)

    labels = [s for s in series if s.label]
    legend_width = 0
    if legend == "outside" and (labels or notes):
        legend_width = 60 + max(_text_width(text, font) for text in [s.label for s in labels] + list(notes))
    width, height = size[0] + legend_width, size[1]
    left = 14 + (font_size + 6 if ylabel else 0) + max(_text_width(_tick_label(v, log_y), small) for v in y_ticks)
    right, top, bottom = 16, 14 + (font_size + 10 if title else 0), 2 * font_size + (font_size + 12 if xlabel else 8)
    box = (left, top, size[0] - right, height - bottom)                   # the axes, in pixels
    px = lambda u, lo, hi, a, b: a + (u - lo) / (hi - lo) * (b - a)      # axis value -> pixel  # noqa: E731

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for v in x_ticks:                                                     # gridlines and tick labels
        u = px(v, x_lo, x_hi, box[0], box[2])
        draw.line([(u, box[1]), (u, box[3])], fill=(230, 230, 230))
        draw.text((u, box[3] + 4), _tick_label(v, log_x), fill="black", font=small, anchor="mt")
    for v in y_ticks:
        u = px(v, y_lo, y_hi, box[3], box[1])
        draw.line([(box[0], u), (box[2], u)], fill=(230, 230, 230))
        draw.text((box[0] - 5, u), _tick_label(v, log_y), fill="black", font=small, anchor="rm")

    layer = Image.new("RGBA", (width, height), (255, 255, 255, 0))      # the data, clipped to the axes
    data = ImageDraw.Draw(layer)
    pixels = [[(px(a, x_lo, x_hi, box[0], box[2]), px(b, y_lo, y_hi, box[3], box[1])) for a, b in zip(xs, ys)]
              for xs, ys in zip(*to_axis)]
    for s, points in zip(series, pixels):
        if s.line:
            _polyline(data, points, s.colour, s.width, s.dashed)
        if s.markers:
            for u, v in points:
                if math.isfinite(u) and math.isfinite(v):
                    data.ellipse([u - s.radius, v - s.radius, u + s.radius, v + s.radius], fill=s.colour)
    clip = Image.new("L", (width, height), 0)
    ImageDraw.Draw(clip).rectangle(box, fill=255)
    image.paste(layer, (0, 0), ImageChops.multiply(layer.getchannel("A"), clip))
    draw.rectangle(box, outline="black")
    if not any((np.isfinite(xs) & np.isfinite(ys)).any() for xs, ys in zip(*to_axis)):
        draw.text((box[0] + 10, box[1] + 10), "no finite values", fill=GREY, font=font)

    if title:
        draw.text(((box[0] + box[2]) / 2, 8), title, fill="black", font=font, anchor="mt")
    if xlabel:
        draw.text(((box[0] + box[2]) / 2, height - 6), xlabel, fill="black", font=font, anchor="mb")
    if ylabel:                                                            # drawn sideways
        label = Image.new("RGB", (_text_width(ylabel, font) + 4, font_size + 6), "white")
        ImageDraw.Draw(label).text((2, 2), ylabel, fill="black", font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (4, int((box[1] + box[3] - label.height) / 2)))
    along = [(u0 + (u1 - u0) * f, v0 + (v1 - v0) * f) for s, ps in zip(series, pixels) if s.line     # lines too
             for (u0, v0), (u1, v1) in zip(ps, ps[1:]) for f in np.linspace(0, 1, 12)]
    _legend(draw, labels, notes, legend, box, size[0], font, font_size, [p for ps in pixels for p in ps] + along)
    if path is not None:
        save_picture(image, path)
    return image


def _axis_values(values, log: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
    return values


def _axis_range(values: List[np.ndarray], limits, log: bool) -> Tuple[float, float]:
    """An axis' range in axis units (log10 for log axes): `limits` if given, else the data's, padded 4%."""
    if limits is not None:
        lo, hi = (math.log10(v) for v in limits) if log else limits
        return float(lo), float(hi)
    finite = np.concatenate([v[np.isfinite(v)] for v in values] + [np.zeros(0)])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        return lo - 1, hi + 1
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, log: bool) -> List[float]:
    """Tick positions in axis units: 1-2-5 steps on a linear axis; 1, 2, 5 x 10^k on a log axis."""
    if log:
        decades = range(math.floor(lo), math.ceil(hi) + 1)
        for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
            ticks = [d + math.log10(m) for d in decades for m in mantissas if lo <= d + math.log10(m) <= hi]
            if len(ticks) >= 3:
                return ticks
        return _ticks(lo, hi, log=False)
    step = 10 ** math.floor(math.log10((hi - lo) / 5))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 6)
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def _tick_label(value: float, log: bool) -> str:
    value = 10 ** value if log else value
    return f"{value:.4g}" if abs(value) > 1e-12 else "0"


def _text_width(text: str, font) -> int:
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font))


def _polyline(draw: ImageDraw.ImageDraw, points: Sequence[Tuple[float, float]], colour: Colour, width: int,
              dashed: bool) -> None:
    """Join consecutive finite points; a non-finite point breaks the line; dashed draws 9 of every 15 pixels."""
    travelled = 0.0                                                     # along the line, so dashes run on
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            continue
        length = math.hypot(x1 - x0, y1 - y0)
        if not dashed or length == 0:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
            continue
        a = 0.0
        while a < length:
            phase = (travelled + a) % 15
            b = min(length, a + (9 - phase if phase < 9 else 15 - phase))
            if phase < 9:
                draw.line([(x0 + (x1 - x0) * a / length, y0 + (y1 - y0) * a / length),
                           (x0 + (x1 - x0) * b / length, y0 + (y1 - y0) * b / length)], fill=colour, width=width)
            a = b
        travelled += length


def _legend(draw, labelled: Sequence[Series], notes: Sequence[str], where: str, box, plot_width: int, font,
            font_size: int, points: Sequence[Tuple[float, float]]) -> None:
    """A sample of each labelled series' line and marker with its label, then the notes (outside only)."""
    corners = ("upper right", "upper left", "lower left", "lower right")
    if where not in corners + ("best", "outside"):
        raise ValueError(f"legend must be one of {corners + ('best', 'outside')}, got {where!r}")
    if not labelled and not (notes and where == "outside"):
        return
    line_height = font_size + 8
    text_width = max([_text_width(s.label, font) for s in labelled] + [0])
    w, h = 42 + text_width, 8 + line_height * len(labelled)
    at = {c: (box[2] - w - 6 if c.endswith("right") else box[0] + 6, box[1] + 6 if c.startswith("upper")
              else box[3] - h - 6) for c in corners}
    if where == "best":                                                 # the corner hiding the fewest points
        where = min(corners, key=lambda c: sum(at[c][0] <= u <= at[c][0] + w and at[c][1] <= v <= at[c][1] + h
                                               for u, v in points))
    if where == "outside":
        x, y = plot_width + 4, box[1]
    else:
        x, y = at[where]
        draw.rectangle([x, y, x + w, y + h], fill="white", outline=(200, 200, 200))
    for k, s in enumerate(labelled):
        v = y + 4 + line_height * k + line_height / 2
        if s.line:
            _polyline(draw, [(x + 6, v), (x + 32, v)], s.colour, s.width, s.dashed)
        if s.markers:
            draw.ellipse([x + 19 - s.radius, v - s.radius, x + 19 + s.radius, v + s.radius], fill=s.colour)
        draw.text((x + 38, v), s.label, fill="black", font=font, anchor="lm")
    if where == "outside":
        for k, note in enumerate(notes):
            draw.text((x + 6, y + h + 12 + line_height * k), note, fill=(70, 70, 70), font=font)


def tile(images: Sequence[Image.Image], columns: Optional[int] = None, path: Optional[PathLike] = None,
         gap: int = 0) -> Image.Image:
    """Paste PIL images into a grid, `columns` per row (default: one row), `gap` px apart; PNG when `path`."""
    columns = columns or len(images)
    rows = math.ceil(len(images) / columns)
    widths = [max(im.width for im in images[c::columns]) for c in range(columns)]
    heights = [max(im.height for im in images[r * columns:(r + 1) * columns]) for r in range(rows)]
    canvas = Image.new("RGB", (sum(widths) + gap * (columns - 1), sum(heights) + gap * (rows - 1)), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        canvas.paste(im, (sum(widths[:c]) + gap * c, sum(heights[:r]) + gap * r))
    if path is not None:
        save_picture(canvas, path)
    return canvas


def save_loss_curve(steps: Sequence[float], losses: Sequence[float], path: PathLike, title: str = "training loss",
                    size=(640, 400), log_y: bool = True) -> Image.Image:
    """Loss against step (log y-axis by default), as a `line_plot`."""
    return line_plot([Series(steps, losses)], path, title=title, xlabel="step", ylabel="loss", log_y=log_y,
                     size=size)
