"""Lesson: score-based generative modelling with an SDE, the score-SDE tutorial on 28x28 digits.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations".
The forward process is the tutorial's variance-exploding SDE dx = sigma^t dw with sigma = 25
(md.VESDE(25)): no drift, noise that grows until the digits are gone under std ~ 7. A UNet learns the
score grad_x log p_t(x) by denoising score matching (losses.dsm_loss, through the Trainer), and the
reverse-time SDE turns prior noise back into digits. Three ways to run it backwards, side by side:

  Euler–Maruyama        one score evaluation per step of the reverse SDE (Eq. 6)
  predictor–corrector   a Langevin corrector step before each predictor step: 2 per step (Algorithm 1)
  probability-flow ODE  the deterministic ODE with the same marginals (Eq. 13), adaptive RK45

The ODE also gives exact likelihoods: bits/dim of held-out digits (md.log_likelihood).

Run:  python examples/score_sde_digits.py --preset quick        (--preset smoke / full)
Writes to outputs/score_sde_digits/: samplers.png, ode_trajectory.gif, loss.png, results.md
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
from minidiff.imaging import save_class_grid, save_trajectory_gif  # noqa: E402
from minidiff.likelihood import log_likelihood  # noqa: E402
from minidiff.nn import ScoreUNet  # noqa: E402
from minidiff.sde import VESDE  # noqa: E402
from minidiff.sde_samplers import sde_sample  # noqa: E402
from minidiff.train import TrainConfig, Trainer  # noqa: E402


@dataclass
class Preset:
    channels: tuple         # ScoreUNet widths (the tutorial: 32, 64, 128, 256)
    n_train: int            # procedural digits to train on
    steps: int              # optimiser steps
    batch_size: int
    n_samples: int          # samples per sampler
    sde_steps: int          # Euler–Maruyama steps; PC takes sde_steps // 2 predictor steps (same NFE)
    ode_tol: float          # RK45 rtol = atol for sampling and the likelihood
    n_test: int             # held-out digits for bits/dim
    lr: float = 1e-3


PRESETS = {
    "smoke": Preset(channels=(8, 16, 32, 32), n_train=256, steps=6, batch_size=32, n_samples=4, sde_steps=10,
                    ode_tol=1e-2, n_test=2),
    "quick": Preset(channels=(16, 32, 64, 128), n_train=8000, steps=1500, batch_size=64, n_samples=16,
                    sde_steps=300, ode_tol=1e-4, n_test=16),
    "full": Preset(channels=(32, 64, 128, 256), n_train=60000, steps=30000, batch_size=128, n_samples=16,
                   sde_steps=1000, ode_tol=1e-5, n_test=256),
}


def main(argv=None) -> dict:
    args = parse_args(__doc__, PRESETS, argv)
    p, device = PRESETS[args.preset], args.device

    # 1. The SDE, the data and the score model. The UNet divides its output by std(t) (sde=ve).
    ve = VESDE(sigma=25.0)
    images, _ = ProceduralDigits(p.n_train, seed=args.seed).tensors()           # [N, 1, 28, 28] in [-1, 1]
    test_images, _ = ProceduralDigits(p.n_test, seed=args.seed + 1).tensors()   # held out: another seed
    model = ScoreUNet(in_channels=1, channels=p.channels, sde=ve)

    # 2. Denoising score matching (Song et al. Eq. 7), with EMA weights and a loss curve, by the Trainer.
    config = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, objective="dsm", ema_decay=0.999,
                         log_every=max(1, p.steps // 50), out_dir=args.out, device=str(device),
                         seed=args.seed, progress=args.preset != "smoke")
    trainer = Trainer(model, TensorDataset(images), config, sde=ve,
                      model_kwargs={"in_channels": 1, "channels": list(p.channels)})
    with Timer() as train_time:
        trainer.fit()
    wrote(os.path.join(args.out, "loss.png"))
    score_model = trainer.ema.model                                              # sample with the EMA weights

    # 3. Three samplers from the same prior noise, with their number of score evaluations (NFE).
    shape = (p.n_samples, 1, 28, 28)
    x_T = ve.prior_sample(shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    runs = {
        "Euler-Maruyama": dict(method="euler_maruyama", steps=p.sde_steps),
        "predictor-corrector": dict(method="pc", steps=p.sde_steps // 2, snr=0.16),
        "probability-flow ODE": dict(method="ode", rtol=p.ode_tol, atol=p.ode_tol),
    }
    rows, grids, trajectory = [], [], None
    for name, options in runs.items():
        with Timer() as timer:
            x, info = sde_sample(score_model, ve, shape, x_T=x_T, generator=torch.Generator().manual_seed(1),
                                 progress=False, return_trajectory=name.endswith("ODE"), return_info=True,
                                 **options)
        if name.endswith("ODE"):
            trajectory = info["x"]
        grids.append(x.clamp(-1, 1).cpu())
        rows.append([name, info["nfe"], round(timer.seconds, 2)])
    labels = [f"{name} (NFE {row[1]})" for name, row in zip(runs, rows)]
    path = os.path.join(args.out, "samplers.png")
    save_class_grid(torch.stack(grids), labels, path, scale=2)
    wrote(path)
    path = os.path.join(args.out, "ode_trajectory.gif")
    frames = [frame[:8].clamp(-1, 1) for frame in trajectory]                   # x(t) from t = 1 down to eps
    save_trajectory_gif(frames, path, nrow=8, scale=2, max_frames=30)           # (kept under 500 KB)
    wrote(path)

    # 4. Likelihood: bits/dim of held-out digits through the probability-flow ODE (dequantised 8-bit data).
    with Timer() as bpd_time:
        bpd, info = log_likelihood(score_model, ve, test_images.to(device), dequantize=True, rtol=p.ode_tol,
                                   atol=p.ode_tol, generator=torch.Generator().manual_seed(2), return_info=True)
    print(f"trained {p.steps} steps in {train_time.seconds:.1f} s")
    table = print_table(rows + [[f"bits/dim of {p.n_test} test digits: {bpd.mean().item():.3f}", info["nfe"],
                                 round(bpd_time.seconds, 2)]], ["sampler", "NFE", "seconds"])
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write(f"# score_sde_digits, preset {args.preset}\n\nVE SDE sigma = 25, ScoreUNet channels {p.channels}, "
                f"{p.steps} DSM steps of {p.batch_size}.\n\n```\n{table}\n```\n")
    wrote(path)
    return {"rows": rows, "bpd": bpd.mean().item()}


if __name__ == "__main__":
    main()
