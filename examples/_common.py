"""What every example shares: the command line, the device, the output folder, printing results.

    args = parse_args(__doc__, PRESETS, argv)     # --preset, --out, --device, --seed
    preset = PRESETS[args.preset]                  # the example's own settings for that preset
    wrote(save_image_grid(x, out_path(args, "samples.png")))

Only plumbing lives here; every lesson is in the example itself. Plots are drawn with Pillow
(`plot_panels`), so no example needs matplotlib.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def parse_args(description: Optional[str], presets: Mapping, argv: Optional[Sequence[str]] = None,
               name: Optional[str] = None, add_arguments=None) -> argparse.Namespace:
    """The examples' common options, parsed from argv (None: sys.argv[1:]).

    --preset   one of `presets` (every example has "smoke", "quick" and a full one); default "quick"
    --out      output folder, created; default outputs/<name>/ (name: the calling script's file name)
    --device   "auto" (CUDA when present) | "cpu" | "cuda" | "cuda:1" ...; becomes a torch.device
    --seed     seeds torch's global generator and every explicit generator the example makes
    add_arguments(parser), if given, adds the example's own options.
    """
    if name is None:
        caller = sys._getframe(1).f_globals.get("__file__", "example")
        name = os.path.splitext(os.path.basename(caller))[0]
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] if description else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(presets), default="quick",
                        help="smoke: < 60 s on a 2-core CPU; quick: a few minutes; full: the real run")
    parser.add_argument("--out", default=os.path.join("outputs", name), help="output folder (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    print(f"{name}: preset {args.preset!r} on {args.device}, writing to {args.out}/")
    return args


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if torch sees a GPU, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def out_path(args: argparse.Namespace, filename: str) -> str:
    """args.out / filename, creating sub-folders as needed."""
    path = os.path.join(args.out, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def wrote(path: str) -> str:
    """Print 'wrote: PATH' (the line the tests and the reader look for) and return the path."""
    print(f"wrote: {path}")
    return path


def print_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """Print rows as an aligned plain-text table; returns the text (examples also save it)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Timer:
    """with Timer() as t: ...; t.seconds  (waits for queued CUDA work, so GPU timings are honest)."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


# ----------------------------------------------------------------------------------- Pillow plots
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (120, 120, 120)]


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                   # Pillow < 10.1
        return ImageFont.load_default()


def plot_panels(panels: Sequence[dict], path: str, panel_size: int = 300, columns: Optional[int] = None) -> str:
    """Draw side-by-side 2-D plots with Pillow and save them as one PNG.

    Each panel is a dict:
      title   str
      xlim, ylim  (lo, hi); default: the data's range
      points  [(xy [N, 2], colour), ...]        scatter, 2-px dots
      lines   [(xy [N, 2], colour), ...]        polylines (paths, curves)
      arrows  [(xy [N, 2], dxy [N, 2], colour)] arrows from xy to xy + dxy
      xlabel, ylabel, legend [(text, colour)], log_y (bool)
    """
    columns = columns or len(panels)
    rows = math.ceil(len(panels) / columns)
    canvas = Image.new("RGB", (columns * panel_size, rows * panel_size), "white")
    for k, panel in enumerate(panels):
        image = panel_image(panel, panel_size)
        canvas.paste(image, ((k % columns) * panel_size, (k // columns) * panel_size))
    canvas.save(path)
    return path


def panel_image(panel: dict, size: int = 300) -> Image.Image:
    """One panel of `plot_panels` as a PIL image (for GIF frames)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    small = font(11)
    left, right, top, bottom = 44, 10, 24, 30
    log_y = panel.get("log_y", False)

    def ys(xy):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2).copy()
        if log_y:
            xy[:, 1] = np.log10(np.clip(xy[:, 1], 1e-30, None))
        return xy

    everything = [ys(xy) for xy, _ in panel.get("points", []) + panel.get("lines", [])]
    everything += [ys(xy) for xy, _, _ in panel.get("arrows", [])]
    data = np.concatenate(everything) if everything else np.zeros((1, 2))
    data = data[np.isfinite(data).all(1)]
    xlim = panel.get("xlim") or (data[:, 0].min(), data[:, 0].max())
    ylim = panel.get("ylim")
    if ylim and log_y:
        ylim = (math.log10(ylim[0]), math.log10(ylim[1]))
    ylim = ylim or (data[:, 1].min(), data[:, 1].max())
    if xlim[1] - xlim[0] < 1e-12:
        xlim = (xlim[0] - 1, xlim[1] + 1)
    if ylim[1] - ylim[0] < 1e-12:
        ylim = (ylim[0] - 1, ylim[1] + 1)

    def px(xy):                                         # data coordinates -> pixel coordinates
        u = left + (xy[:, 0] - xlim[0]) / (xlim[1] - xlim[0]) * (size - left - right)
        v = size - bottom - (xy[:, 1] - ylim[0]) / (ylim[1] - ylim[0]) * (size - top - bottom)
        return np.stack([u, v], 1)

    draw.rectangle([left, top, size - right, size - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):                        # tick labels at the ends and the middle
        x = xlim[0] + frac * (xlim[1] - xlim[0])
        y = ylim[0] + frac * (ylim[1] - ylim[0])
        u = left + frac * (size - left - right)
        v = size - bottom - frac * (size - top - bottom)
        draw.text((u - 10, size - bottom + 3), f"{x:.3g}", fill="black", font=small)
        draw.text((2, v - 6), f"{10 ** y:.2g}" if log_y else f"{y:.3g}", fill="black", font=small)
    for xy, colour in panel.get("lines", []):
        p = px(ys(xy))
        p = p[np.isfinite(p).all(1)]
        if len(p) > 1:
            draw.line([tuple(q) for q in p], fill=colour, width=2)
    for xy, colour in panel.get("points", []):
        for u, v in px(ys(xy)):
            if np.isfinite(u) and np.isfinite(v) and left <= u <= size - right and top <= v <= size - bottom:
                draw.ellipse([u - 1.5, v - 1.5, u + 1.5, v + 1.5], fill=colour)
    for xy, dxy, colour in panel.get("arrows", []):
        xy, dxy = np.asarray(xy, np.float64), np.asarray(dxy, np.float64)
        start, end = px(xy), px(xy + dxy)
        for (u0, v0), (u1, v1) in zip(start, end):
            draw.line([(u0, v0), (u1, v1)], fill=colour, width=1)
            draw.ellipse([u1 - 1, v1 - 1, u1 + 1, v1 + 1], fill=colour)     # the arrow's head
    draw.text((left, 5), panel.get("title", ""), fill="black", font=font(12))
    if panel.get("xlabel"):
        draw.text((size // 2 - 20, size - 14), panel["xlabel"], fill="black", font=small)
    for k, (text, colour) in enumerate(panel.get("legend", [])):
        draw.rectangle([left + 6, top + 6 + 14 * k, left + 14, top + 14 + 14 * k], fill=colour)
        draw.text((left + 18, top + 4 + 14 * k), text, fill="black", font=small)
    return image


def heatmap(matrix, labels: Sequence[str], title: str, path: Optional[str] = None, cell: int = 24,
            vmin: Optional[float] = None, vmax: Optional[float] = None) -> Image.Image:
    """A labelled heat map of a square or rectangular matrix (blue = low, red = high), values printed."""
    m = np.asarray(torch.as_tensor(matrix).detach().cpu().double())
    vmin = m.min() if vmin is None else vmin
    vmax = m.max() if vmax is None else vmax
    small = font(10)
    margin = 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(s), font=small)) for s in labels)
    rows, cols = m.shape
    image = Image.new("RGB", (margin + cols * cell + 4, 20 + rows * cell + 4), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 3), title, fill="black", font=font(12))
    for r in range(rows):
        if r < len(labels):
            draw.text((4, 20 + r * cell + cell // 2 - 6), str(labels[r]), fill="black", font=small)
        for c in range(cols):
            f = 0.5 if vmax == vmin else float(np.clip((m[r, c] - vmin) / (vmax - vmin), 0, 1))
            colour = (int(255 * f), int(80 + 60 * (1 - abs(2 * f - 1))), int(255 * (1 - f)))
            box = [margin + c * cell, 20 + r * cell, margin + (c + 1) * cell - 1, 20 + (r + 1) * cell - 1]
            draw.rectangle(box, fill=colour)
            if cell >= 22:
                draw.text((box[0] + 2, box[1] + cell // 2 - 6), f"{m[r, c]:.1f}"[:4], fill="white", font=small)
    if path is not None:
        image.save(path)
    return image


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str], path: Optional[str] = None,
                 gap: int = 8) -> Image.Image:
    """Paste PIL images in one row with a title above each; saved as PNG when a path is given."""
    height = max(im.height for im in images) + 20
    width = sum(im.width for im in images) + gap * (len(images) + 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for im, title in zip(images, titles):
        canvas.paste(im, (x, 20))
        draw.text((x, 3), title, fill="black", font=font(12))
        x += im.width + gap
    if path is not None:
        canvas.save(path)
    return canvas


def stack(images: Sequence[Image.Image], path: Optional[str] = None) -> Image.Image:
    """Paste PIL images one below the other; saved as PNG when a path is given."""
    canvas = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    if path is not None:
        canvas.save(path)
    return canvas
