"""Lesson: diffusion on 2-D points, where the exact answer is known and everything can be drawn.

The data is a mixture of 8 small Gaussians on a circle. For such data every noisy marginal
q(x_i) = sum_k w_k N(sqrt(alpha_bar) m_k, (alpha_bar s^2 + 1 - alpha_bar) I) is known in closed form,
so the *exact* noise prediction E[eps | x_i] (equivalently the exact score
grad log q(x_i) = -eps / sqrt(1 - alpha_bar)) can be written down: md.exact.ExactModel is that
network, the one a perfect training run would give. We then

  1. train a small MLP with the DDPM loss (md.diffusion_loss, Ho et al. 2020, Algorithm 1),
  2. compare its score with the exact one, as arrows and as a relative error per noise level,
  3. sample both with DDPM, DDIM and DPM-Solver++(2M) and draw the samples and their paths.

Run:  python examples/toy_2d.py --preset quick        (seconds; --preset smoke / full)
Writes to outputs/toy_2d/: score_field.png, samples.png, paths.png, denoising.gif, results.md
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PALETTE, Timer, panel_image, parse_args, plot_panels, print_table, wrote  # noqa: E402

import minidiff as md  # noqa: E402
from minidiff.nn import SinusoidalEmbedding  # noqa: E402


@dataclass
class Preset:
    train_steps: int        # optimiser steps of the MLP
    hidden: int             # MLP width
    batch_size: int         # data points per step
    n_samples: int          # points drawn per sampler
    T: int = 200            # diffusion steps (cosine schedule)


PRESETS = {
    "smoke": Preset(train_steps=150, hidden=64, batch_size=256, n_samples=256),
    "quick": Preset(train_steps=8000, hidden=128, batch_size=512, n_samples=1000),
    "full": Preset(train_steps=20000, hidden=256, batch_size=1024, n_samples=4000),
}


# ------------------------------------------------------------------------------------------ the data
def draw(data: md.exact.GaussianMixture, n: int, generator: torch.Generator) -> Tensor:
    """n points of the data as float32 [n, 2]. The data is md.exact.GaussianMixture.ring(): 8 Gaussians
    N(m_k, 0.08^2 I) with equal weights and centres on the unit circle; md.exact knows its noisy marginals."""
    return data.sample(n, generator).float()


# ------------------------------------------------------------------------------------------ the model
class ToyEpsMLP(nn.Module):
    """eps_theta(x, t) for 2-D points: [x, sinusoidal(t)] -> 3 hidden SiLU layers -> eps [N, 2]."""

    def __init__(self, hidden: int = 128, time_dim: int = 32):
        super().__init__()
        self.time_embed = SinusoidalEmbedding(time_dim)
        self.net = nn.Sequential(
            nn.Linear(2 + time_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        return self.net(torch.cat([x, self.time_embed(t)], dim=1))              # [N, 2 + time_dim] -> [N, 2]


def train(model: nn.Module, data: md.exact.GaussianMixture, schedule: md.NoiseSchedule, p: Preset,
          generator: torch.Generator, device) -> list:
    """The whole of DDPM training: draw a batch, md.diffusion_loss, Adam step. Returns the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, p.train_steps)
    losses = []
    for _ in range(p.train_steps):
        x0 = draw(data, p.batch_size, generator).to(device)
        loss = md.diffusion_loss(model, x0, schedule, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_decay.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------------------------ the lesson
def main(argv=None) -> dict:
    args = parse_args(__doc__, PRESETS, argv)
    p, device = PRESETS[args.preset], args.device
    if device.type == "cpu":
        torch.set_num_threads(1)            # a tiny MLP: extra CPU threads cost more than they save
    generator = torch.Generator().manual_seed(args.seed)
    data = md.exact.GaussianMixture.ring(k=8, radius=1.0, std=0.08)
    schedule = md.NoiseSchedule.cosine(T=p.T)
    exact = md.exact.ExactModel(data, schedule)                  # E[eps | x_i], the network a perfect fit would be
    model = ToyEpsMLP(p.hidden).to(device)

    with Timer() as timer:
        losses = train(model, data, schedule, p, generator, device)
    model.eval().cpu()
    final = sum(losses[-50:]) / len(losses[-50:])
    print(f"trained {p.train_steps} steps in {timer.seconds:.1f} s; final loss {final:.4f}")

    # 1. exact against learned score, at several noise levels
    score_rows = []
    for i in (p.T // 20, p.T // 4, p.T // 2, 3 * p.T // 4):
        a = float(schedule.alphas_cumprod[i])
        x0 = draw(data, 2000, generator)
        x_i = schedule.add_noise(x0, torch.randn(x0.shape, generator=generator), i)
        t = schedule.model_time(i).float().expand(len(x_i))
        with torch.no_grad():
            eps_exact, eps_model = exact(x_i, t), model(x_i, t)
        rel = ((eps_model - eps_exact).pow(2).sum(1).mean() / eps_exact.pow(2).sum(1).mean()).item()
        score_rows.append([i, round(math.sqrt((1 - a) / a), 3), rel])
    print_table(score_rows, ["step i", "sigma_i", "rel. score error |s_theta - s|^2 / |s|^2"])

    i = p.T // 8                                            # arrows at a low noise level, where the modes show
    a = float(schedule.alphas_cumprod[i])
    axis = torch.linspace(-1.6, 1.6, 15)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)     # [225, 2]
    t = schedule.model_time(i).float().expand(len(grid))
    with torch.no_grad():
        score_exact = -exact(grid, t) / math.sqrt(1 - a)
        score_model = -model(grid, t) / math.sqrt(1 - a)
    scale = 0.15 / score_exact.norm(dim=1).max()            # longest arrow: 0.15 units
    lim = {"xlim": (-1.7, 1.7), "ylim": (-1.7, 1.7)}
    centres = (data.means * math.sqrt(a)).float()
    path = plot_panels([
        {"title": f"exact score, step {i}", "arrows": [(grid, score_exact * scale, PALETTE[0])],
         "points": [(centres, PALETTE[1])], **lim},
        {"title": f"learned score, step {i}", "arrows": [(grid, score_model * scale, PALETTE[1])], **lim},
        {"title": "both (blue exact, red learned)", "arrows": [(grid, score_exact * scale, PALETTE[0]),
                                                                 (grid, score_model * scale, PALETTE[1])], **lim},
    ], os.path.join(args.out, "score_field.png"))
    wrote(path)

    # 2. samples from several samplers, with the exact model and the learned one
    x_T = torch.randn(p.n_samples, 2, generator=generator)
    runs = [("data", None, None, None), ("exact, ddpm", exact, "ddpm", None), ("learned, ddpm", model, "ddpm", None),
            ("learned, ddim 20", model, "ddim", 20), ("learned, dpmpp_2m 10", model, "dpmpp_2m", 10)]
    panels, sample_rows, trajectories = [], [], {}
    data_points = draw(data, p.n_samples, generator)
    for name, net, sampler, steps in runs:
        nfe, seconds = 0, 0.0
        if net is None:
            x = data_points
        else:
            with Timer() as timer:
                x, traj = md.sample(net, schedule, x_T.shape, sampler=sampler, steps=steps, x_T=x_T,
                                    generator=torch.Generator().manual_seed(args.seed), progress=False,
                                    return_trajectory=True)
            nfe, seconds, trajectories[name] = traj["nfe"], timer.seconds, traj["x"]
        dist, mode = data.nearest(x)
        covered = torch.bincount(mode[dist < 4 * data.stds[0]], minlength=len(data.means))
        sample_rows.append([name, nfe, round(seconds, 3), dist.mean().item(), f"{int((covered > 0).sum())}/8",
                            x.std(0).mean().item()])
        panels.append({"title": f"{name}" + (f" (NFE {nfe})" if nfe else ""), "points": [(x, PALETTE[len(panels) % 5])],
                       **lim})
    wrote(plot_panels(panels, os.path.join(args.out, "samples.png"), columns=len(panels)))
    table = print_table(sample_rows, ["samples", "NFE", "seconds", "mean dist. to nearest mode", "modes hit", "std"])

    # 3. paths: DDIM is an ODE (smooth deterministic paths), DDPM adds fresh noise at every step
    path_panels = []
    for name, n_paths in (("learned, ddim 20", 24), ("learned, ddpm", 6)):
        xs = torch.stack(trajectories[name])[:, :n_paths]                       # [steps + 1, n_paths, 2]
        lines = [(xs[:, k], PALETTE[k % 5]) for k in range(n_paths)]
        path_panels.append({"title": f"paths: {name}", "lines": lines, "points": [(xs[-1], (0, 0, 0))],
                            "xlim": (-3, 3), "ylim": (-3, 3)})
    wrote(plot_panels(path_panels, os.path.join(args.out, "paths.png")))

    # 4. a GIF of the point cloud being denoised (learned model, DDPM)
    xs = trajectories["learned, ddpm"]
    keep = sorted(set(torch.linspace(0, len(xs) - 1, 40).round().long().tolist()))
    frames = [panel_image({"title": f"DDPM, {k}/{len(xs) - 1} steps", "points": [(xs[k], PALETTE[0])],
                           "xlim": (-2.5, 2.5), "ylim": (-2.5, 2.5)}, 260) for k in keep]
    gif = os.path.join(args.out, "denoising.gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[80] * (len(frames) - 1) + [1500], loop=0)
    wrote(gif)

    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# toy_2d, preset {args.preset}\n\n```\n{table}\n```\n")
    wrote(os.path.join(args.out, "results.md"))
    return {"score_rows": score_rows, "sample_rows": sample_rows}


if __name__ == "__main__":
    main()
