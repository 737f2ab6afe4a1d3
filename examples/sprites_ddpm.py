"""The sprites course in one page: train a ContextUnet DDPM on 16x16 sprites, then sample it every way.

DeepLearning.AI's "How Diffusion Models Work", built on minidiff, every part made here, top to bottom:
  the data -> the network (ContextUnet) -> the noise schedule -> training (TrainConfig + Trainer, Ho et al.
  2020 Algorithm 1) -> the course's sampling loop written by hand over md.Stepper, with and without the
  extra noise -> DDIM and DPM-Solver++ through md.sample -> contexts, mixed contexts, guidance -> numbers.

    python examples/sprites_ddpm.py                      # quick preset on CPU (6-13 min), course preset on CUDA
    python examples/sprites_ddpm.py --preset smoke       # seconds: checks everything runs
    python examples/sprites_ddpm.py --preset long        # ~45 min on 2 CPU cores: the course model, DDIM-25 ~ DDPM-500
    python examples/sprites_ddpm.py --data sprites_1788_16x16.npy --labels sprite_labels_nc_1788_16x16.npy
    python examples/sprites_ddpm.py --data my_pixel_art/            # a folder of images: unconditional

--preset smoke|quick|course|long picks the sizes from minidiff.presets.PRESETS, the table `minidiff train
--preset` reads too, so the command line and this page train the same run. Without --data it trains on the
embedded procedural sprites (the course's .npy files cannot be downloaded here): same shape, same five classes.
A folder of your own images (any size; centre-cropped and resized to 16x16) is sampled without contexts,
so the context lessons are skipped. Everything is written under --out (default outputs/sprites_ddpm/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, pick_device, wrote  # noqa: E402

import minidiff as md  # noqa: E402
from minidiff import imaging  # noqa: E402
from minidiff.checkpoint import load_pipeline  # noqa: E402
from minidiff.data import CLASS_NAMES  # noqa: E402
from minidiff.nn import ContextUnet  # noqa: E402
from minidiff.presets import PRESETS  # noqa: E402

FAST_SAMPLERS = [                # (label, sampler, steps, spacing): lesson 4's speed-ups through md.sample
    ("ddim-25", "ddim", 25, "trailing"),          # the course's DDIM grid: it starts at t = T
    ("dpmpp_2m-20", "dpmpp_2m", 20, "karras"),
]
MIXES = {                        # contexts that mix classes: the course's "hero + food" and friends
    "hero + food": [1, 0, 1, 0, 0], "hero + spell": [1, 0, 0, 1, 0],
    "non-hero + side": [0, 1, 0, 0, 1], "food + spell": [0, 0, 1, 1, 0],
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
    if not (args.data and os.path.isdir(args.data)) and (args.data is None) != (args.labels is None):
        parser.error("--data FILE.npy and --labels go together (the course's two .npy files); "
                     "--data alone must be a folder of images")
    return args


# ------------------------------------------------------------------------------ the data, the network, training
def load_data(args, preset: dict):
    """Items (image [3, 16, 16] in [-1, 1], one-hot context [5]) - or images alone for a folder of your own."""
    if args.data and os.path.isdir(args.data):
        print(f"data: your images from {args.data} (resized to 16x16; class subfolders, if any, are contexts)")
        return md.data.ImageFolder(args.data, size=16)
    if args.data:
        print(f"data: the course's sprites from {args.data}")
        return md.data.SpritesDataset(args.data, args.labels)
    data = preset["data"]
    if data["kind"] == "sprites":  # course, long: the course's files if they are in data/sprites/, else procedural
        print(f"data: the course's sprites from {data['root']} if there, else {data['n']} procedural sprites")
        return md.data.load_sprites(data["root"], n=data["n"], seed=data["seed"])
    print(f"data: {data['n']} of minidiff's embedded procedural sprites (the course's files: --data/--labels)")
    return md.data.ProceduralSprites(data["n"], seed=data["seed"])


def train(args, device, out):
    """Build the network and the schedule, train; returns (the EMA network, schedule)."""
    preset = PRESETS[args.preset]
    dataset = load_data(args, preset)

    # The course's network: a small UNet whose up-path is scaled and shifted by the time and the context.
    # n_feat = 64 in the course (and long), 32 in quick, 16 in smoke; n_cfeat = 5 classes; 16x16 images.
    classes = getattr(dataset, "classes", None)                  # a labelled folder of your own: its classes
    sizes = dict(in_channels=3, n_feat=preset["model"]["kwargs"]["n_feat"], n_cfeat=len(classes or CLASS_NAMES),
                 height=16)
    torch.manual_seed(args.seed)
    model = ContextUnet(**sizes)

    # The course's schedule: T = 500 steps, beta from 1e-4 to 0.02 (smoke: a linear one with T = 100).
    s = preset["schedule"]
    make = md.NoiseSchedule.course if s["kind"] == "course" else md.NoiseSchedule.linear
    schedule = make(T=s["T"], beta_start=s["beta_start"], beta_end=s["beta_end"])

    # Training: x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps, loss |eps - model(x_i, (i + 1) / T, c)|^2.
    # The course: batch 100, lr 1e-3 decayed linearly to 0, 32 epochs; EMA weights are the ones sampled.
    # The quick preset trains faster per CPU minute: the network predicts v = sqrt(alpha_bar_i) eps -
    # sqrt(1 - alpha_bar_i) x0 instead of eps, and the loss is Min-SNR weighted (config.prediction_type,
    # config.loss_weighting). The trained model carries model.prediction_type; every sampler reads it.
    config = md.TrainConfig(**{**preset["train"], "out_dir": out, "device": str(device), "seed": args.seed})
    print(f"training: preset {args.preset!r} - {preset['description']}")
    trainer = md.Trainer(model, dataset, config, schedule=schedule, model_kwargs=sizes)  # sizes: saved with it
    trainer.fit()                                    # writes checkpoint.pt, loss.csv, loss.png, sample grids
    return trainer.ema.model, schedule


# ------------------------------------------------------------------------------ lesson 1: sampling, by hand
@torch.no_grad()
def course_sampling_loop(model, schedule, x_T, context, seed: int, add_noise: bool = True):
    """The course's loop, one step at a time:  for i in range(T, 0, -1): eps = nn_model(x, t, c);
    x = denoise_add_noise(x, i, eps, z). Every step is x_{i-1} = mean(x_i, eps) + sqrt(beta_i) z (Ho et al.,
    Algorithm 2). add_noise=False drops the z: the course's "sampling without the extra noise", which collapses.
    A v-prediction network (the quick preset) outputs v; the Stepper, given the model, turns it into eps first:
    eps = sqrt(1 - alpha_bar_i) x_i + sqrt(alpha_bar_i) v. Returns (x_0, [x_T, ..., x_0])."""
    stepper = md.Stepper(schedule, sampler="ddpm", add_noise=add_noise, model=model)  # T-1, ..., 1, 0
    generator = torch.Generator(x_T.device).manual_seed(seed)
    x = x_T * stepper.init_noise_sigma
    frames = [x]
    for i in stepper.timesteps:
        output = model(x, stepper.model_time(i, x), context)                  # eps (course) or v; time (i + 1) / T
        x = stepper.step(output, i, x, generator=generator)
        frames.append(x)
    return x, frames


def sample_grids(model, schedule, device, out, n_per_class: int, seed: int, conditional: bool = True) -> list:
    """Every picture of the course, from one model; returns the timing table rows."""
    shape = (5 * n_per_class, 3, 16, 16)
    classes = torch.arange(5).repeat_interleave(n_per_class)
    context = torch.nn.functional.one_hot(classes, 5).float().to(device) if conditional else None
    row_names = CLASS_NAMES if conditional else [f"row {k + 1}" for k in range(5)]
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    per_class = lambda images: images.reshape(5, n_per_class, 3, 16, 16).cpu()
    timings = []

    with Timer() as timer:
        ddpm, frames = course_sampling_loop(model, schedule, x_T, context, seed + 1)
    timings.append({"sampler": "ddpm", "nfe": len(frames) - 1, "seconds": timer.seconds})
    no_noise, _ = course_sampling_loop(model, schedule, x_T, context, seed + 1, add_noise=False)
    imaging.save_class_grid(torch.stack([ddpm[::n_per_class].cpu(), no_noise[::n_per_class].cpu()]),
                            ["DDPM", "no extra noise"], os.path.join(out, "ddpm_vs_no_noise.png"))
    imaging.save_trajectory_gif([frame[:: max(1, n_per_class // 2)] for frame in frames],
                                os.path.join(out, "ddpm_trajectory.gif"), nrow=10, scale=3, max_frames=30)
    imaging.save_class_grid(per_class(ddpm), row_names, os.path.join(out, "ddpm_per_class.png"))

    # Lesson 4: the same network, far fewer steps. DDIM (Song et al. 2021) is deterministic; DPM-Solver++(2M)
    # (Lu et al. 2022) is second order. md.sample runs the loop above for any sampler.
    for label, sampler, steps, spacing in FAST_SAMPLERS:
        with Timer() as timer:
            images, info = md.sample(model, schedule, shape, sampler=sampler, steps=steps, spacing=spacing, x_T=x_T,
                                     context=context, return_trajectory=True, progress=False)
        timings.append({"sampler": label, "nfe": info["nfe"], "seconds": timer.seconds})
        imaging.save_class_grid(per_class(images), row_names, os.path.join(out, f"{label}_per_class.png"))
    if not conditional:
        return timings

    # Lesson 3: control. A context vector may mix classes; classifier-free guidance (Ho & Salimans 2022)
    # mixes the conditional and unconditional predictions: w = 0 unconditional, 1 conditional, > 1 pushed further.
    mixes = torch.tensor(list(MIXES.values()), dtype=torch.float32).repeat_interleave(n_per_class, 0).to(device)
    mixed = md.sample(model, schedule, (len(MIXES) * n_per_class, 3, 16, 16), sampler="ddim", steps=25,
                      spacing="trailing", context=mixes, generator=torch.Generator().manual_seed(seed + 2),
                      progress=False)
    imaging.save_class_grid(mixed.reshape(len(MIXES), n_per_class, 3, 16, 16).cpu(), list(MIXES),
                            os.path.join(out, "mixed_contexts.png"))
    rows = [md.sample(model, schedule, shape, sampler="ddim", steps=25, spacing="trailing", x_T=x_T, context=context,
                      guidance_scale=w, progress=False)[::n_per_class].cpu() for w in GUIDANCE_SCALES]
    imaging.save_class_grid(torch.stack(rows), [f"w = {w:g}" for w in GUIDANCE_SCALES],
                            os.path.join(out, "guidance_scales.png"))
    return timings


# ------------------------------------------------------------------------------ the numbers
def write_timings(timings, out, device, batch) -> str:
    lines = [f"Sampling {batch} sprites on {device} (torch {torch.__version__})", "",
             "| sampler | network calls | seconds | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['seconds']:.2f} | {batch / r['seconds']:.1f} |" for r in timings]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "timings.md"), "w") as f:
        f.write(text)
    return text


def quality(model, schedule, device, out, seed, n: int) -> dict:
    """Offline quality numbers (minidiff.metrics) of guided (w = 2) samples: Frechet distance in a sprite
    classifier's features (fd; fd_real is two real sets' distance, the floor), class accuracy,
    precision/recall, structure checks. The classifier trains once (~30 s on a CPU) and is cached."""
    from minidiff import metrics
    numbers = {label: metrics.evaluate(model, schedule, n=n, sampler=sampler, steps=steps, spacing=spacing,
                                       guidance_scale=2.0, seed=seed, device=device)
               for label, sampler, steps, spacing in FAST_SAMPLERS}
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
            wrote(os.path.join(out, name))


if __name__ == "__main__":
    main()
