"""Lesson: conditioning a diffusion model on a class through cross-attention (a SpatialTransformer).

The tutorial's UNet_Tranformer (md ConditionalScoreUNet): the score UNet of score_sde_digits.py plus,
at its two lowest resolutions, a SpatialTransformer in which every pixel cross-attends to the
condition (Rombach et al. 2022, Sec. 3.3). Here the condition is a digit class: nn.Embedding turns
the id into one token, the keys and values of the cross-attention. One extra id, `model.null_id`,
means "no class"; the Trainer swaps 10% of the labels for it, so the same network is also the
unconditional model that classifier-free guidance needs (Ho & Salimans 2022).

After training with the VE SDE (sigma = 25) we draw one row per class, with and without guidance,
check the rows against the data (a nearest-class-mean classifier), and draw the cosine similarity of
the learned class embeddings: which digits the network considers alike.

Run:  python examples/conditional_transformer.py --preset quick       (--preset smoke / full)
Writes to outputs/conditional_transformer/: classes.png, classes_guided.png, embedding_similarity.png,
          loss.png, results.md
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, heatmap, parse_args, print_table, wrote  # noqa: E402

from minidiff.data import ProceduralDigits  # noqa: E402
from minidiff.imaging import save_class_grid  # noqa: E402
from minidiff.nn import ConditionalScoreUNet  # noqa: E402
from minidiff.sde import VESDE  # noqa: E402
from minidiff.sde_samplers import sde_sample  # noqa: E402
from minidiff.train import TrainConfig, Trainer  # noqa: E402


@dataclass
class Preset:
    channels: tuple         # UNet widths (the tutorial: 32, 64, 128, 256)
    text_dim: int           # width of the class embedding = the cross-attention's context width
    n_train: int            # procedural digits
    steps: int              # optimiser steps
    batch_size: int
    per_class: int          # samples per class row
    sde_steps: int          # Euler–Maruyama steps
    guidance_scale: float = 3.0
    lr: float = 1e-3


PRESETS = {
    "smoke": Preset(channels=(8, 16, 32, 32), text_dim=32, n_train=200, steps=6, batch_size=20, per_class=2,
                    sde_steps=8),
    "quick": Preset(channels=(16, 32, 64, 128), text_dim=128, n_train=8000, steps=1500, batch_size=64,
                    per_class=8, sde_steps=250),
    "full": Preset(channels=(32, 64, 128, 256), text_dim=256, n_train=60000, steps=30000, batch_size=128,
                   per_class=10, sde_steps=500),
}


def nearest_mean_accuracy(samples: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                          image_labels: torch.Tensor) -> float:
    """Fraction of samples whose nearest class-mean image (cosine similarity) is their own class."""
    means = torch.stack([images[image_labels == k].mean(0) for k in range(10)]).flatten(1)   # [10, 784]
    similarity = F.normalize(samples.flatten(1), dim=1) @ F.normalize(means, dim=1).T       # [N, 10]
    return (similarity.argmax(1) == labels).float().mean().item()


def main(argv=None) -> dict:
    args = parse_args(__doc__, PRESETS, argv)
    p, device = PRESETS[args.preset], args.device
    ve = VESDE(sigma=25.0)
    images, labels = ProceduralDigits(p.n_train, seed=args.seed).tensors()     # [N, 1, 28, 28], [N] int64
    model = ConditionalScoreUNet(in_channels=1, channels=p.channels, num_classes=10, text_dim=p.text_dim, sde=ve)

    config = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, objective="dsm", ema_decay=0.999,
                         context_dropout=0.1, log_every=max(1, p.steps // 50), out_dir=args.out,
                         device=str(device), seed=args.seed, progress=args.preset != "smoke")
    trainer = Trainer(model, TensorDataset(images, labels), config, sde=ve,
                      model_kwargs={"in_channels": 1, "channels": list(p.channels), "num_classes": 10,
                                    "text_dim": p.text_dim})
    with Timer() as train_time:
        trainer.fit()
    wrote(os.path.join(args.out, "loss.png"))
    ema = trainer.ema.model

    # One row per class: context = class ids [10 * per_class]; then the same with guidance.
    classes = torch.arange(10).repeat_interleave(p.per_class).to(device)
    shape = (len(classes), 1, 28, 28)
    x_T = ve.prior_sample(shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    rows = []
    for name, w in (("classes", None), ("classes_guided", p.guidance_scale)):
        with Timer() as timer:
            x, info = sde_sample(ema, ve, shape, steps=p.sde_steps, context=classes, guidance_scale=w, x_T=x_T,
                                 generator=torch.Generator().manual_seed(1), progress=False, return_info=True)
        x = x.clamp(-1, 1).cpu()
        path = os.path.join(args.out, f"{name}.png")
        save_class_grid(x.reshape(10, p.per_class, 1, 28, 28), [str(k) for k in range(10)], path, scale=2)
        wrote(path)
        accuracy = nearest_mean_accuracy(x, classes.cpu(), images, labels)
        rows.append([f"guidance w = {w}" if w else "no guidance", info["nfe"], round(timer.seconds, 2),
                     round(accuracy, 3)])

    # The learned class embeddings (rows 0..9, and the null id 10): cosine similarity.
    embeddings = ema.context_tokens.label_embed.weight.detach().cpu()              # [11, text_dim]
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(embeddings, dim=1).T       # [11, 11]
    path = os.path.join(args.out, "embedding_similarity.png")
    names = [str(k) for k in range(10)] + ["null"]
    heatmap(cosine, names, "cosine similarity of class embeddings", path, cell=32, vmin=-1, vmax=1)
    wrote(path)

    print(f"trained {p.steps} steps in {train_time.seconds:.1f} s")
    table = print_table(rows, ["samples", "NFE", "seconds", "nearest-class-mean agreement"])
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write(f"# conditional_transformer, preset {args.preset}\n\n```\n{table}\n```\n")
    wrote(path)
    return {"rows": rows}


if __name__ == "__main__":
    main()
