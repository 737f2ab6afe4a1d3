"""Lesson: latent diffusion — compress the images first, then diffuse in the small latent space.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", in the form of
the score-SDE tutorial's latent model, on 28x28 digits:

  1. train an AutoEncoder (md.nn.AutoEncoder): 28x28x1 images <-> 10x10x4 latents, with an L1 +
     edge reconstruction loss (the offline stand-in for LPIPS); show reconstructions beside originals;
  2. encode the whole data set once; the deterministic encoder ends in a BatchNorm, so the latents
     are standardised per channel: the scale a N(0, sigma^2) diffusion prior expects;
  3. train a class-conditional LatentScoreUNet on the latents with the VE SDE (sigma = 25);
  4. sample latents with Euler–Maruyama and decode them to images, one row per class.

The diffusion model never sees a pixel: it works on 400 numbers per image instead of 784, and the
autoencoder's decoder does the last mile.

Run:  python examples/latent_diffusion.py --preset quick       (--preset smoke / full)
Writes to outputs/latent_diffusion/: reconstructions.png, samples.png, autoencoder_loss.png, loss.png,
          results.md
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, parse_args, print_table, wrote  # noqa: E402

from minidiff.data import ProceduralDigits  # noqa: E402
from minidiff.imaging import save_class_grid, save_loss_curve  # noqa: E402
from minidiff.nn import AutoEncoder, LatentScoreUNet, reconstruction_loss  # noqa: E402
from minidiff.sde import VESDE  # noqa: E402
from minidiff.sde_samplers import sde_sample  # noqa: E402
from minidiff.train import TrainConfig, Trainer  # noqa: E402


@dataclass
class Preset:
    n_train: int            # procedural digits
    ae_steps: int           # autoencoder optimiser steps
    channels: tuple         # LatentScoreUNet widths (the tutorial: 64, 128, 256)
    text_dim: int           # class-embedding width
    steps: int              # latent score model optimiser steps
    batch_size: int
    per_class: int          # samples per class row
    sde_steps: int          # Euler–Maruyama steps


PRESETS = {
    # the last width must be >= 64: GroupNorm(32 groups) at the 1x1 bottleneck needs 2+ channels per group
    "smoke": Preset(n_train=200, ae_steps=10, channels=(16, 32, 64), text_dim=32, steps=6, batch_size=20,
                    per_class=2, sde_steps=8),
    "quick": Preset(n_train=8000, ae_steps=800, channels=(32, 64, 128), text_dim=128, steps=1500, batch_size=64,
                    per_class=8, sde_steps=250),
    "full": Preset(n_train=60000, ae_steps=10000, channels=(64, 128, 256), text_dim=256, steps=30000,
                   batch_size=128, per_class=10, sde_steps=500),
}


def train_autoencoder(ae: AutoEncoder, images: torch.Tensor, p: Preset, seed: int, device) -> list:
    """A plain loop: random batch, reconstruction_loss(decode(encode(x)), x), Adam step. Returns losses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-3)
    ae.train()
    losses = []
    for _ in range(p.ae_steps):
        x = images[torch.randint(len(images), (p.batch_size,), generator=generator)].to(device)
        loss = reconstruction_loss(ae(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def encode_all(ae: AutoEncoder, images: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    """[N, 1, 28, 28] -> latents [N, 4, 10, 10], on the CPU (BatchNorm in eval mode: fixed statistics)."""
    ae.eval()
    return torch.cat([ae.encode(images[k:k + batch].to(device)).cpu() for k in range(0, len(images), batch)])


def main(argv=None) -> dict:
    args = parse_args(__doc__, PRESETS, argv)
    p, device = PRESETS[args.preset], args.device
    images, labels = ProceduralDigits(p.n_train, seed=args.seed).tensors()     # [N, 1, 28, 28], [N]
    test_images, _ = ProceduralDigits(16, seed=args.seed + 1).tensors()        # held out

    # 1. The autoencoder, and its reconstructions of held-out digits.
    torch.manual_seed(args.seed)
    ae = AutoEncoder(in_channels=1, latent_channels=4).to(device)
    with Timer() as ae_time:
        ae_losses = train_autoencoder(ae, images, p, args.seed, device)
    path = os.path.join(args.out, "autoencoder_loss.png")
    save_loss_curve(range(1, len(ae_losses) + 1), ae_losses, path, title="autoencoder loss")
    wrote(path)
    ae.eval()
    with torch.no_grad():
        reconstructions = ae.decode(ae.encode(test_images.to(device))).cpu()
    recon_error = (reconstructions - test_images).abs().mean().item()
    path = os.path.join(args.out, "reconstructions.png")
    save_class_grid(torch.stack([test_images, reconstructions]), ["original", "reconstruction"], path, scale=2)
    wrote(path)

    # 2. Encode the data once: the diffusion model trains on these.
    latents = encode_all(ae, images, device)                                     # [N, 4, 10, 10]
    print(f"latents {tuple(latents.shape[1:])}: mean {latents.mean():.3f}, std {latents.std():.3f}")

    # 3. The latent score model, class-conditional through cross-attention, trained by DSM.
    ve = VESDE(sigma=25.0)
    model = LatentScoreUNet(in_channels=4, channels=p.channels, num_classes=10, text_dim=p.text_dim, sde=ve)
    config = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=1e-3, objective="dsm", ema_decay=0.999,
                         log_every=max(1, p.steps // 50), out_dir=args.out, device=str(device), seed=args.seed,
                         progress=args.preset != "smoke")
    trainer = Trainer(model, TensorDataset(latents, labels), config, sde=ve,
                      model_kwargs={"in_channels": 4, "channels": list(p.channels), "num_classes": 10,
                                    "text_dim": p.text_dim})
    with Timer() as train_time:
        trainer.fit()
    wrote(os.path.join(args.out, "loss.png"))

    # 4. Sample latents per class, decode them to images.
    classes = torch.arange(10).repeat_interleave(p.per_class).to(device)
    shape = (len(classes), *latents.shape[1:])
    with Timer() as sample_time:
        z, info = sde_sample(trainer.ema.model, ve, shape, steps=p.sde_steps, context=classes,
                             generator=torch.Generator().manual_seed(args.seed), progress=False, return_info=True)
        with torch.no_grad():
            x = ae.decode(z.to(device)).cpu()                                    # [N, 1, 28, 28] in [-1, 1]
    path = os.path.join(args.out, "samples.png")
    save_class_grid(x.reshape(10, p.per_class, 1, 28, 28), [str(k) for k in range(10)], path, scale=2)
    wrote(path)

    table = print_table([
        ["autoencoder", f"{p.ae_steps} steps", round(ae_time.seconds, 1), f"L1 reconstruction error {recon_error:.4f}"],
        ["latent score model", f"{p.steps} steps", round(train_time.seconds, 1), f"latent std {latents.std():.3f}"],
        ["sampling + decoding", f"NFE {info['nfe']}", round(sample_time.seconds, 2),
         f"sampled latent std {z.std():.3f}"],
    ], ["stage", "work", "seconds", "result"])
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write(f"# latent_diffusion, preset {args.preset}\n\n```\n{table}\n```\n")
    wrote(path)
    return {"recon_error": recon_error, "nfe": info["nfe"]}


if __name__ == "__main__":
    main()
