"""Diffusion from zero: the course's toy un-corrupter, then the same digits through a real DDPM.

The Hugging Face diffusion course, unit 1 ("Diffusion Models from Scratch"), in two acts:

  Act 1, the toy. Corrupt digits by mixing them with uniform noise, `x (1 - amount) + noise * amount`,
  train a tiny conv net (BasicUNet, 309,057 parameters) to predict the CLEAN image with MSE, then
  "sample" by starting from noise and repeatedly moving 1/(n - i) of the way towards its prediction.

  Act 2, DDPM. Same data, but Gaussian noise on a variance-preserving schedule, a UNet2D (GroupNorm
  ResNet blocks, self-attention) that is TOLD the timestep, trained to predict the noise
  (md.diffusion_loss), and sampled with a schedule-aware sampler (md.sample).

    python examples/unet_from_zero.py --preset quick        # a few minutes on a laptop CPU
    python examples/unet_from_zero.py --preset full         # the course's settings (use a GPU)

The data is minidiff's ProceduralDigits (28x28 MNIST-like digits, no download). Everything is built
from the package: minidiff/nn/basic_unet.py (BasicUNet, corrupt, naive_sample) and minidiff/nn/unet2d.py.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field

import torch

import minidiff as md
from minidiff.data import ProceduralDigits
from minidiff.imaging import save_image_grid, save_loss_curve
from minidiff.nn.basic_unet import BasicUNet, corrupt, naive_sample
from minidiff.nn.unet2d import UNet2D


@dataclass
class Preset:
    description: str
    n_images: int  # procedural digits to train on (MNIST has 60,000)
    basic_epochs: float  # passes over the data for the toy
    ddpm_epochs: float  # passes over the data for the DDPM
    unet: dict = field(default_factory=dict)  # UNet2D kwargs; {} = the course's config (1.7M parameters)
    batch_size: int = 128  # the course's
    lr: float = 1e-3  # the course's, Adam
    T: int = 1000  # DDPM steps (linear betas 1e-4 .. 0.02, Ho et al. 2020)
    ddim_steps: int = 50  # sampling steps for md.sample
    naive_steps: int = 40  # the course's final naive-sampler demo uses 40
    n_samples: int = 64  # images per sample grid


# A small UNet2D for the fast presets: 2 levels, 1 ResNet block per level, single-head attention at 14x14
# only (eight heads of width 8, the course's, cost 3x more on a CPU).
_SMALL_UNET = dict(block_out_channels=(16, 32), block_types=("plain", "attention"), layers_per_block=1,
                   norm_groups=8, attention_head_dim=None)

PRESETS = {
    "smoke": Preset("seconds: checks the lesson runs end to end (pictures are noise)", n_images=64,
                    basic_epochs=1, ddpm_epochs=1, unet=_SMALL_UNET, batch_size=16, T=100, ddim_steps=5,
                    naive_steps=5, n_samples=16),
    "quick": Preset("a few minutes on a CPU: digits you can recognise from the toy, digit-like strokes from DDPM",
                    n_images=4000, basic_epochs=3, ddpm_epochs=8, unet=_SMALL_UNET, batch_size=64),
    "full": Preset("the course's settings: 60,000 digits, batch 128, lr 1e-3, 3 epochs each, UNet2D (32, 64, 64)",
                   n_images=60000, basic_epochs=3, ddpm_epochs=3),
}


def batches(images: torch.Tensor, batch_size: int, epochs: float, generator: torch.Generator):
    """Yield shuffled batches [batch_size, C, H, W] for ceil(epochs * N / batch_size) steps."""
    steps = max(1, math.ceil(epochs * len(images) / batch_size))
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(images), generator=generator)])
        index, order = order[:batch_size], order[batch_size:]
        yield images[index]


def train(model, loss_fn, images, preset: Preset, epochs: float, device, generator, name: str):
    """Adam at the preset's lr; returns the per-step losses. loss_fn(model, x0_batch) -> scalar."""
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.lr)
    losses, start = [], time.time()
    total = max(1, math.ceil(epochs * len(images) / preset.batch_size))
    for step, x0 in enumerate(batches(images, preset.batch_size, epochs, generator)):
        loss = loss_fn(model, x0.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % max(1, total // 10) == 0 or step == total - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"  {name} step {step + 1:5d}/{total}  loss {recent:.4f}  ({time.time() - start:.0f} s)")
    return losses


def save_smoothed_loss_curve(losses, path: str, title: str, points: int = 200) -> None:
    """The loss curve with each point the mean of k consecutive steps (at most `points` points)."""
    k = max(1, len(losses) // points)
    means = [sum(losses[j:j + k]) / len(losses[j:j + k]) for j in range(0, len(losses), k)]
    save_loss_curve([j + 1 for j in range(0, len(losses), k)], means, path, title=f"{title} (mean of {k} steps)")


def to_minidiff_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] (the course's pixels) -> [-1, 1] (minidiff's, what the image writers expect)."""
    return x01 * 2 - 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    parser.add_argument("--out", default=os.path.join("outputs", "unet_from_zero"), help="folder for the PNGs")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)  # data order and every picture's noise
    out = args.out
    files = {}
    print(f"preset {args.preset}: {preset.description}; device {device}")

    # ------------------------------------------------------------------------------------ the data
    images, _ = ProceduralDigits(preset.n_images, seed=args.seed).tensors()  # [N, 1, 28, 28] in [-1, 1]
    # The toy lives in the course's [0, 1] range: BasicUNet ends with a SiLU (minimum -0.278), so it could
    # never output minidiff's black, -1. corrupt() is the same mix in either range (see basic_unet.py).
    images01 = (images + 1) / 2  # [N, 1, 28, 28] in [0, 1]
    show = images01[:8]
    amount = torch.linspace(0, 1, 8)  # left to right: clean ... pure noise
    corrupted = corrupt(show, amount, generator=generator, value_range=(0.0, 1.0))
    files["corrupted"] = os.path.join(out, "corrupted.png")
    save_image_grid(to_minidiff_range(torch.cat([show, corrupted])), files["corrupted"], nrow=8)

    # ------------------------------------------------------------ act 1: the toy, x0 from uniform mixing
    basic = BasicUNet(in_channels=1, out_channels=1).to(device)
    n_basic = sum(p.numel() for p in basic.parameters())
    print(f"\nAct 1: BasicUNet, {n_basic:,} parameters, predicts the clean image from a uniformly mixed one")

    def toy_loss(model, x0):  # the course's training loop body
        amount = torch.rand(x0.shape[0], device=x0.device)  # one corruption amount per image, U(0, 1)
        noisy = corrupt(x0, amount, value_range=(0.0, 1.0))
        return torch.nn.functional.mse_loss(model(noisy), x0)  # target: the clean image x0

    basic_losses = train(basic, toy_loss, images01, preset, preset.basic_epochs, device, generator, "BasicUNet")
    files["basic_unet_loss"] = os.path.join(out, "basic_unet_loss.png")
    save_smoothed_loss_curve(basic_losses, files["basic_unet_loss"], "BasicUNet: MSE to the clean image, [0, 1] pixels")

    basic.eval()
    with torch.no_grad():
        predicted = basic(corrupted.to(device)).cpu()  # rows: clean, corrupted (amount 0 -> 1), prediction
    files["basic_unet_predictions"] = os.path.join(out, "basic_unet_predictions.png")
    save_image_grid(to_minidiff_range(torch.cat([show, corrupted, predicted])), files["basic_unet_predictions"], nrow=8)

    # The naive sampler: 5 steps on 8 images, each step's input over its prediction (the course's figure) ...
    _, xs, preds = naive_sample(basic, (8, 1, 28, 28), n_steps=5, generator=generator, value_range=(0.0, 1.0))
    steps_grid = torch.cat([torch.cat([x, p]) for x, p in zip(xs, preds)])  # [5 * 2 * 8, 1, 28, 28]
    files["naive_sampler_steps"] = os.path.join(out, "naive_sampler_steps.png")
    save_image_grid(to_minidiff_range(steps_grid), files["naive_sampler_steps"], nrow=8)
    # ... and a grid of final samples with more steps.
    samples, _, _ = naive_sample(basic, (preset.n_samples, 1, 28, 28), n_steps=preset.naive_steps,
                                 generator=generator, value_range=(0.0, 1.0))
    files["naive_samples"] = os.path.join(out, "naive_samples.png")
    save_image_grid(to_minidiff_range(samples.cpu()), files["naive_samples"])

    # ---------------------------------------------------------- act 2: DDPM, eps from Gaussian noise
    schedule = md.NoiseSchedule.linear(T=preset.T)
    unet = UNet2D(in_channels=1, out_channels=1, **preset.unet).to(device)
    n_unet = sum(p.numel() for p in unet.parameters())
    print(f"\nAct 2: UNet2D {unet.block_out_channels}, {n_unet:,} parameters, predicts the Gaussian noise "
          f"(DDPM, T = {preset.T}); minidiff's [-1, 1] pixels")

    def ddpm_loss(model, x0):  # Ho et al. 2020, Algorithm 1: i ~ U{0..T-1}, eps ~ N(0, I), MSE on eps
        return md.diffusion_loss(model, x0, schedule, prediction_type="epsilon")

    ddpm_losses = train(unet, ddpm_loss, images, preset, preset.ddpm_epochs, device, generator, "UNet2D")
    files["ddpm_loss"] = os.path.join(out, "ddpm_loss.png")
    save_smoothed_loss_curve(ddpm_losses, files["ddpm_loss"], "UNet2D DDPM: MSE to the noise eps")
    # clip_x0: keep each step's x0 estimate inside [-1, 1], as diffusers' DDPMScheduler does by default
    # (clip_sample=True); an under-trained net otherwise drifts to saturated, all-white or all-black images.
    samples = md.sample(unet, schedule, (preset.n_samples, 1, 28, 28), sampler="ddim", steps=preset.ddim_steps,
                        clip_x0=True, generator=generator, progress=False)
    files["ddpm_samples"] = os.path.join(out, "ddpm_samples.png")
    save_image_grid(samples.cpu(), files["ddpm_samples"])

    # ------------------------------------------------------------------------------- what differs
    print(f"\nWrote to {os.path.abspath(out)}:")
    for name, path in files.items():
        print(f"  {os.path.basename(path):28s} {name.replace('_', ' ')}")
    print(f"""
The toy vs DDPM, as the course lists the differences:
  1. Corruption: the toy mixes with UNIFORM noise, x (1 - a) + u a, a ~ U(0, 1); DDPM adds GAUSSIAN
     noise on a variance-preserving schedule, x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps.
  2. Timestep conditioning: BasicUNet is never told how noisy its input is and must guess; UNet2D gets
     t = (i + 1) / T through a sinusoidal embedding added in every ResNet block.
  3. Target: the toy predicts the clean image x0; the DDPM net predicts the noise eps.
  4. Loss weighting: the toy weights every amount equally in x0 error; eps-MSE over uniform i is, in x0
     error, weighted by SNR_i = alpha_bar_i / (1 - alpha_bar_i): clean steps count far more than noisy ones.
  5. Sampler: the toy moves 1 / (n - i) of the way to its guess, no noise, no schedule; md.sample
     ("ddim" here, "ddpm" adds fresh noise each step) takes steps derived from the schedule's alpha_bar,
     clipping each x0 estimate to the pixel range.
  6. Network: BasicUNet has {n_basic:,} parameters, plain 5x5 convs and SiLU; UNet2D has {n_unet:,},
     GroupNorm ResNet blocks, self-attention, learnable down/up-sampling and concatenated skips.""")
    return files


if __name__ == "__main__":
    main()
