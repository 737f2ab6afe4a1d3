"""The sprites course in one script: train a ContextUnet DDPM on 16x16 sprites, then sample it every way.

The four lessons of DeepLearning.AI's "How Diffusion Models Work", built on minidiff:
  1. sampling   - DDPM over all T steps, and the same loop WITHOUT the re-injected noise (it collapses)
  2. training   - the ContextUnet learns to predict the noise eps added to x0 (Ho et al. 2020, Algorithm 1)
  3. control    - one row per class, mixed contexts (hero + food ...), classifier-free guidance scales
  4. speed-up   - DDIM in 25 steps and DPM-Solver++ in 20, timed against DDPM

    python examples/sprites_ddpm.py                      # quick preset on CPU (~6 min), course preset on CUDA
    python examples/sprites_ddpm.py --preset smoke       # seconds: checks everything runs
    python examples/sprites_ddpm.py --preset long        # ~45 min on 2 CPU cores: the course model, DDIM-25 ~ DDPM-500
    python examples/sprites_ddpm.py --data sprites_1788_16x16.npy --labels sprite_labels_nc_1788_16x16.npy
    python examples/sprites_ddpm.py --data my_pixel_art/            # a folder of images: unconditional

Without --data it trains on minidiff's embedded procedural sprites (the course's .npy files cannot be
downloaded here); they have the same shape, the same five classes and the same format. A folder of your
own images (any size; centre-cropped and resized to 16x16) has no labels, so the context lessons are skipped.
Everything is written under --out (default outputs/sprites_ddpm/).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import minidiff as md
from minidiff import imaging
from minidiff.checkpoint import load_pipeline
from minidiff.data import CLASS_NAMES
from minidiff.presets import PRESETS, build_run, resolve
from minidiff.train import Trainer

SAMPLER_RUNS = [                 # (label, sampler, steps or None for every step, extra options)
    ("ddpm", "ddpm", None, {}),
    ("ddim-25", "ddim", 25, {"spacing": "trailing"}),   # the course's DDIM grid: it starts at t = T
    ("dpmpp_2m-20", "dpmpp_2m", 20, {"spacing": "karras"}),
]
MIXES = {                        # contexts that mix classes: the course's "hero + food" and friends
    "hero + food": [1, 0, 1, 0, 0],
    "hero + spell": [1, 0, 0, 1, 0],
    "non-hero + side": [0, 1, 0, 0, 1],
    "food + spell": [0, 0, 1, 1, 0],
}
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="training preset (default: course on CUDA, quick on CPU)")
    parser.add_argument("--data", help="the course's sprites_1788_16x16.npy (N,16,16,3 uint8), or a folder of images")
    parser.add_argument("--labels", help="the course's sprite_labels_nc_1788_16x16.npy (N,5 one-hot)")
    parser.add_argument("--out", default="outputs/sprites_ddpm", help="output folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    parser.add_argument("--checkpoint", help="skip training and sample from this checkpoint")
    parser.add_argument("--n", type=int, default=None, help="samples per class in the grids")
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=None,
                        help="compute minidiff.metrics quality numbers (default: on, except for smoke)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_is_folder = args.data is not None and os.path.isdir(args.data)
    if not data_is_folder and (args.data is None) != (args.labels is None):
        parser.error("--data FILE.npy and --labels go together (the course's two .npy files); "
                     "--data alone must be a folder of images")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def one_hot(classes, k=5) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(classes), k).float()


# ------------------------------------------------------------------------------------------- lesson 2: training
def train(args, device, out) -> tuple:
    """Train with the preset's settings; returns (EMA model, schedule)."""
    run = resolve(args.preset)
    if args.data and os.path.isdir(args.data):
        run["data"] = {"kind": "image_folder", "root": args.data, "size": 16}
        print(f"data: your images from {args.data} (resized to 16x16, no labels: unconditional)")
    elif args.data:
        run["data"] = {"kind": "sprite_files", "sprites_path": args.data, "labels_path": args.labels}
        print(f"data: the course's sprites from {args.data}")
    else:
        print(f"data: minidiff's embedded procedural sprites ({run['data'].get('n')} images; "
              "pass --data/--labels to use the course's .npy files)")
    run["train"] = {**run["train"], "device": str(device), "seed": args.seed}
    built = build_run(run, out_dir=out)
    print(f"training: preset {run['preset']!r} - {run.get('description', '')}")
    trainer = Trainer(built.model, built.dataset, built.config, schedule=built.schedule).fit()
    print(f"wrote: {os.path.join(out, 'checkpoint.pt')} (+ loss.csv, loss.png, sample grids)")
    return trainer.ema.model, built.schedule


# ------------------------------------------------------------------------------------------- lessons 1, 3, 4
def sample_grids(model, schedule, device, out, n_per_class: int, seed: int, conditional: bool = True) -> list:
    """Every picture of the course, from one model; returns the timing table rows.

    Rows are the five classes; an unconditional model (trained on a folder of images) gets plain rows."""
    shape = (5 * n_per_class, 3, 16, 16)
    classes = one_hot(torch.arange(5).repeat_interleave(n_per_class)).to(device) if conditional else None
    row_names = CLASS_NAMES if conditional else [f"row {k + 1}" for k in range(5)]
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    sample = lambda **kw: md.sample(model, schedule, shape, x_T=x_T, context=classes,
                                    generator=torch.Generator(device).manual_seed(seed + 1), **kw)
    per_class = lambda images: images.reshape(5, n_per_class, 3, 16, 16).cpu()

    # Lesson 1: DDPM with and without the extra noise, from the same x_T.
    with_noise, trajectory = sample(sampler="ddpm", return_trajectory=True)
    without_noise = sample(sampler="ddpm", add_noise=False)
    imaging.save_class_grid(torch.stack([with_noise[::n_per_class].cpu(), without_noise[::n_per_class].cpu()]),
                            ["DDPM", "no extra noise"], os.path.join(out, "ddpm_vs_no_noise.png"))
    imaging.save_trajectory_gif([frame[:: max(1, n_per_class // 2)] for frame in trajectory["x"]],
                                os.path.join(out, "ddpm_trajectory.gif"), nrow=10, scale=3, max_frames=30)
    imaging.save_class_grid(per_class(with_noise), row_names, os.path.join(out, "ddpm_per_class.png"))

    # Lesson 4: faster samplers, timed; lesson 3: one row per class for each.
    timings = []
    for label, name, steps, options in SAMPLER_RUNS:
        start = time.perf_counter()
        images, info = sample(sampler=name, steps=steps, return_trajectory=True, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        timings.append({"sampler": label, "nfe": info["nfe"], "seconds": round(seconds, 3),
                        "images_per_s": round(shape[0] / seconds, 1)})
        imaging.save_class_grid(per_class(images), row_names, os.path.join(out, f"{label}_per_class.png"))
    if not conditional:
        return timings

    # Lesson 3: mixed contexts and classifier-free guidance (w = 0 unconditional, 1 conditional, > 1 guided).
    mixes = torch.tensor(list(MIXES.values()), dtype=torch.float32).repeat_interleave(n_per_class, 0).to(device)
    mixed = md.sample(model, schedule, (len(MIXES) * n_per_class, 3, 16, 16), sampler="ddim", steps=25,
                      spacing="trailing", context=mixes, generator=torch.Generator().manual_seed(seed + 2),
                      progress=False)
    imaging.save_class_grid(mixed.reshape(len(MIXES), n_per_class, 3, 16, 16).cpu(), list(MIXES),
                            os.path.join(out, "mixed_contexts.png"))
    rows = [sample(sampler="ddim", steps=25, spacing="trailing", guidance_scale=w)[::n_per_class].cpu()
            for w in GUIDANCE_SCALES]
    imaging.save_class_grid(torch.stack(rows), [f"w = {w:g}" for w in GUIDANCE_SCALES],
                            os.path.join(out, "guidance_scales.png"))
    return timings


def write_timings(timings, out, device, batch) -> str:
    lines = [f"Sampling {batch} sprites on {device} (torch {torch.__version__})", "",
             "| sampler | network calls | seconds | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |" for r in timings]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "timings.md"), "w") as f:
        f.write(text)
    return text


def quality(model, schedule, device, out, seed, n: int) -> dict:
    """Offline quality numbers (minidiff.metrics) of guided (w = 2) samples: Frechet distance in a sprite
    classifier's features (fd; fd_real is two real sets' distance, the floor), class accuracy,
    precision/recall, structure checks. The classifier trains once (~30 s on a CPU) and is cached."""
    from minidiff import metrics
    numbers = {}
    for label, name, steps, options in SAMPLER_RUNS[1:]:
        numbers[label] = metrics.evaluate(model, schedule, n=n, sampler=name, steps=steps, guidance_scale=2.0,
                                          seed=seed, device=device, **options)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(numbers, f, indent=2, default=float)
    return numbers


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    args.preset = args.preset or ("course" if device.type == "cuda" else "quick")
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)

    if args.checkpoint:
        model, schedule = load_pipeline(args.checkpoint, device=device)
        print(f"model: loaded {args.checkpoint}")
    else:
        model, schedule = train(args, device, out)
    model.to(device).eval()

    n_per_class = args.n or (2 if args.preset == "smoke" else 8)
    conditional = not (args.data and os.path.isdir(args.data))
    timings = sample_grids(model, schedule, device, out, n_per_class, args.seed, conditional)
    print(write_timings(timings, out, device, 5 * n_per_class))

    if conditional and (args.metrics if args.metrics is not None else args.preset != "smoke"):
        n_eval = 500 if device.type == "cuda" else 250
        for label, numbers in quality(model, schedule, device, out, args.seed, n_eval).items():
            print(f"quality {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()
                                                   if isinstance(v, (int, float))))
    for name in sorted(os.listdir(out)):
        if name.endswith((".png", ".gif", ".md", ".json", ".csv", ".pt")):
            print(f"wrote: {os.path.join(out, name)}")


if __name__ == "__main__":
    main()
