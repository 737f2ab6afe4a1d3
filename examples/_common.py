"""What every example shares: the command line, the device, the output folder, printing results.

    args = parse_args(__doc__, PRESETS, argv)     # --preset, --out, --device, --seed
    preset = PRESETS[args.preset]                  # the example's own settings for that preset
    wrote(save_image_grid(x, out_path(args, "samples.png")))

Only plumbing lives here; every lesson is in the example itself. Plots are drawn with Pillow
(`plot_panels`, one `minidiff.imaging.line_plot` per panel), so no example needs matplotlib.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from minidiff import imaging
from minidiff.imaging import Series


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
PALETTE = imaging.PALETTE[:5] + [imaging.GREY]


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                   # Pillow < 10.1
        return ImageFont.load_default()


def plot_panels(panels: Sequence[dict], path: str, panel_size: int = 300, columns: Optional[int] = None) -> str:
    """Draw 2-D plots side by side (one `minidiff.imaging.line_plot` each) and save them as one PNG.

    Each panel is a dict:
      title   str
      xlim, ylim  (lo, hi); default: the data's range
      points  [(xy [N, 2], colour), ...]        scatter, small dots
      lines   [(xy [N, 2], colour), ...]        polylines (paths, curves)
      arrows  [(xy [N, 2], dxy [N, 2], colour)] arrows from xy to xy + dxy
      xlabel, legend [(text, colour)], log_y (bool)
    """
    imaging.tile([panel_image(panel, panel_size) for panel in panels], columns, path)
    return path


def panel_image(panel: dict, size: int = 300) -> Image.Image:
    """One panel of `plot_panels` as a PIL image (for GIF frames)."""
    series = [Series(*_columns(xy), colour=colour, line=False, markers=True, radius=1.5)
              for xy, colour in panel.get("points", [])]
    series += [Series(*_columns(xy), colour=colour) for xy, colour in panel.get("lines", [])]
    for xy, dxy, colour in panel.get("arrows", []):
        (x0, y0), (x1, y1) = _columns(xy), _columns(np.asarray(xy, np.float64) + np.asarray(dxy, np.float64))
        gap = np.full_like(x0, np.nan)                                  # a NaN between arrows breaks the line
        series.append(Series(np.stack([x0, x1, gap], 1).ravel(), np.stack([y0, y1, gap], 1).ravel(), colour=colour,
                             width=1))
        series.append(Series(x1, y1, colour=colour, line=False, markers=True, radius=1))   # the arrows' heads
    series += [Series([], [], text, colour) for text, colour in panel.get("legend", [])]
    return imaging.line_plot(series, title=panel.get("title", ""), xlabel=panel.get("xlabel", ""),
                             log_y=panel.get("log_y", False), xlim=panel.get("xlim"), ylim=panel.get("ylim"),
                             size=(size, size), font_size=11, legend="upper left")


def _columns(xy):
    """[N, 2] points (a tensor, an array or a list of pairs) -> (x [N], y [N]) float64 arrays."""
    xy = np.asarray(torch.as_tensor(xy).detach().cpu().double()).reshape(-1, 2)
    return xy[:, 0], xy[:, 1]


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
    return imaging.tile(images, columns=1, path=path)
