"""Flow matching against the eps objective on the sprites, with a UNet and with a Diffusion Transformer.

Flow matching (Lipman et al. 2023; Liu et al. 2022; SD3, Esser et al. 2024) trains a network to predict the
velocity v = eps - x0 along the straight path x_t = (1 - t) x0 + t eps (minidiff/flow.py) and samples by
integrating dx/dt = v from noise (t = 1) to data (t = 0). This lesson trains the same network on the same
embedded sprites for the same number of steps twice, once with the eps objective (Ho et al. 2020; sampled
with DDIM on the course's schedule) and once with flow matching (logit-normal t, SD3 Sec. 3.1; sampled with
Euler / Heun / midpoint), and measures both against network calls: Fréchet distance in the sprite features
and class accuracy of guided samples (w = 2), with the same sample count and seeds as
benchmarks/quality_vs_steps.py (n = 500 class-balanced, x_T from seed 0). Then the same two runs with a DiT
(minidiff/nn/dit.py) of about the ContextUnet's parameter count in its place.

"Straightness" is |x_0 - x_1| / (sum of the step lengths) of the sampler's own path: 1 for a straight line.

Run:
    python examples/flow_matching.py --preset smoke     # seconds: runs end to end (the numbers mean nothing)
    python examples/flow_matching.py --preset quick     # the README's table (about 10 minutes on 2 cores)
    python examples/flow_matching.py --preset full      # course-sized networks, longer training

Writes: classes_<net>_<objective>.png (per-class grids), trajectories.gif (flow-Euler above DDIM, 10 calls,
the same x_T), flow_matching.md (the table), flow_matching.json (every number).
"""

from __future__ import annotations

import json
import os
import time

import torch
from _common import Timer, parse_args, wrote

import minidiff as md
from minidiff.data import CLASS_NAMES, ProceduralSprites
from minidiff.imaging import save_class_grid, save_trajectory_gif

GUIDANCE = 2.0                                    # as benchmarks/quality_vs_steps.py
SPACING = "trailing"                              # DDIM's grid for few steps (quality_vs_steps' default)
# (objective, sampler, steps): the eps model through DDIM, the flow model through its ODE samplers
RUNS = (("eps", "ddim", 10), ("eps", "ddim", 25), ("flow", "euler", 10), ("flow", "euler", 25),
        ("flow", "heun", 5), ("flow", "midpoint", 5))

PRESETS = {
    "smoke": {"n_feat": 8, "data": 64, "train": {"steps": 3, "batch_size": 8, "lr": 1e-3}, "eval_n": 0,
              "per_class": 2},
    "quick": {"n_feat": 32, "data": 4000, "train": {"steps": 500, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50},
              "eval_n": 500, "per_class": 6},
    "full": {"n_feat": 64, "data": 89400, "train": {"steps": 8000, "batch_size": 100, "lr": 1e-3,
                                                    "warmup_steps": 200},
             "eval_n": 500, "per_class": 8},
}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def networks(preset):
    """{"unet": (class name, kwargs), "dit": (...)}: the course's ContextUnet, and a DiT of about its size."""
    unet = ("ContextUnet", {"in_channels": 3, "n_feat": preset["n_feat"], "n_cfeat": len(CLASS_NAMES), "height": 16})
    target = count(md.nn.ContextUnet(**unet[1]))
    sizes = [{"image_size": 16, "in_channels": 3, "patch_size": 2, "dim": dim, "depth": 4, "heads": 4,
              "num_classes": len(CLASS_NAMES)} for dim in range(16, 513, 16)]
    dit = min(sizes, key=lambda kw: abs(count(md.nn.DiT(**kw)) - target))
    return {"unet": unet, "dit": ("DiT", dit)}


def train(name, kwargs, objective, data, schedule, args, preset):
    """One training run through the one Trainer; returns the EMA model."""
    from minidiff.checkpoint import build_model
    torch.manual_seed(args.seed)
    model = build_model(name, **kwargs)
    config = md.TrainConfig(**preset["train"], decay="linear", ema_decay=0.995, seed=args.seed,
                            objective="flow" if objective == "flow" else "diffusion", device=str(args.device),
                            out_dir=os.path.join(args.out, f"{name}_{objective}"), progress=False)
    process = {"sde": md.RectifiedFlow()} if objective == "flow" else {"schedule": schedule}
    with Timer() as timer:
        trainer = md.Trainer(model, data, config, **process).fit()
    print(f"{name} {objective}: {count(model):,} parameters, {trainer.step} steps in {timer.seconds:.0f} s")
    return trainer.ema.model.eval(), timer.seconds


def draw(model, objective, sampler, steps, class_ids, x_T, schedule, device, trajectory=False):
    """Guided samples for `class_ids` from x_T (the same x_T for every model); (x, its path) with trajectory."""
    from minidiff.metrics.evaluation import class_contexts
    context = class_contexts(model, class_ids).to(device)
    if objective == "flow":
        out = md.flow_sample(model, None, x_T.shape, sampler=sampler, steps=steps, context=context,
                             guidance_scale=GUIDANCE, x_T=x_T.to(device), return_trajectory=trajectory)
    else:
        out = md.sample(model, schedule, x_T.shape, sampler=sampler, steps=steps, spacing=SPACING, context=context,
                        guidance_scale=GUIDANCE, x_T=x_T.to(device), return_trajectory=trajectory, progress=False)
    x, path = out if trajectory else (out, None)
    return (x.float().clamp(-1, 1).cpu(), path["x"]) if trajectory else x.float().clamp(-1, 1).cpu()


def straightness(path) -> float:
    """|x_end - x_start| / sum |x_k+1 - x_k| per image, averaged: 1 for a straight path."""
    chord = (path[-1] - path[0]).flatten(1).norm(dim=1)
    length = sum((b - a).flatten(1).norm(dim=1) for a, b in zip(path[:-1], path[1:]))
    return (chord / length).mean().item()


def measure(model, objective, sampler, steps, n, seed, schedule, device, classifier, real):
    """Fréchet distance, class accuracy, ... of n class-balanced guided samples (metrics.measure), + NFE."""
    from minidiff.metrics.evaluation import measure as measure_samples
    class_ids = torch.arange(n) % len(CLASS_NAMES)                           # as metrics.evaluate
    x_T = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    x = torch.cat([draw(model, objective, sampler, steps, class_ids[b:b + 250], x_T[b:b + 250], schedule, device)
                   for b in range(0, n, 250)])
    seconds = time.perf_counter() - start
    results = measure_samples(x, class_ids, real, classifier, "sprites")
    nfe = steps * (2 if sampler in ("heun", "midpoint") else 1)
    return {"nfe": nfe, "seconds": seconds, **{k: results[k] for k in ("fd", "class_accuracy", "precision", "recall")}}


def main(argv=None):
    args = parse_args(__doc__, PRESETS, argv)
    preset, device = PRESETS[args.preset], args.device
    data = ProceduralSprites(preset["data"], seed=0)
    schedule = md.NoiseSchedule.course()                                    # T = 500, the eps runs' table
    nets = networks(preset)
    classifier = real = None
    if preset["eval_n"]:
        from minidiff.metrics import feature_extractor
        from minidiff.metrics.evaluation import REFERENCE_SEED, procedural_data
        classifier = feature_extractor("sprites", device=device)
        real = procedural_data("sprites", preset["eval_n"], REFERENCE_SEED, 16)[0]

    k, m = len(CLASS_NAMES), preset["per_class"]
    grid_ids = torch.arange(k).repeat_interleave(m)                          # class-major rows
    grid_x_T = torch.randn((k * m, 3, 16, 16), generator=torch.Generator().manual_seed(args.seed))
    results, gif_paths = {"preset": args.preset, "guidance": GUIDANCE, "runs": []}, {}
    for net, (name, kwargs) in nets.items():
        for objective in ("eps", "flow"):
            model, seconds = train(name, kwargs, objective, data, schedule, args, preset)
            sampler, steps = ("euler", 10) if objective == "flow" else ("ddim", 10)
            x, path = draw(model, objective, sampler, steps, grid_ids, grid_x_T, schedule, device, trajectory=True)
            save_class_grid(x.view(k, m, 3, 16, 16), list(CLASS_NAMES),
                            os.path.join(args.out, f"classes_{net}_{objective}.png"), scale=3)
            if net == "unet":
                gif_paths[objective] = path
            straight = straightness(path)
            for run_objective, run_sampler, run_steps in RUNS:
                if run_objective != objective:
                    continue
                row = {"net": net, "params": count(model), "objective": objective, "sampler": run_sampler,
                       "steps": run_steps, "train_seconds": seconds, "straightness_10": straight}
                if preset["eval_n"]:
                    row.update(measure(model, objective, run_sampler, run_steps, preset["eval_n"], args.seed,
                                       schedule, device, classifier, real))
                results["runs"].append(row)

    # The GIF: flow-Euler's path (top rows) and DDIM's (bottom rows) from the same x_T, 10 calls each.
    frames = [torch.cat([f[: 2 * m], e[: 2 * m]]) for f, e in zip(gif_paths["flow"], gif_paths["eps"])]
    save_trajectory_gif(frames, os.path.join(args.out, "trajectories.gif"), nrow=2 * m, scale=3)

    lines = ["| network | params | objective | sampler | network calls | Fréchet distance | class accuracy | "
             "straightness (10 calls) |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in results["runs"]:
        nfe = r.get("nfe", r["steps"] * (2 if r["sampler"] in ("heun", "midpoint") else 1))
        fd = f"{r['fd']:.2f}" if "fd" in r else "-"
        acc = f"{r['class_accuracy']:.3f}" if "class_accuracy" in r else "-"
        lines.append(f"| {r['net']} | {r['params']:,} | {r['objective']} | {r['sampler']} | {nfe} | {fd} | {acc} | "
                     f"{r['straightness_10']:.3f} |")
    train_s = {f"{r['net']} {r['objective']}": r["train_seconds"] for r in results["runs"]}
    lines.append(f"\nSame data ({preset['data']} sprites), {preset['train']['steps']} steps of batch "
                 f"{preset['train']['batch_size']} for every run; guidance w = {GUIDANCE}; "
                 f"n = {preset['eval_n']} samples per row (x_T seed {args.seed}); DDIM on the {SPACING} grid of "
                 f"NoiseSchedule.course(). Training seconds: "
                 + ", ".join(f"{key} {value:.0f}" for key, value in train_s.items()) + f" ({device}).")
    with open(os.path.join(args.out, "flow_matching.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "flow_matching.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    print("\n".join(lines))
    for name in sorted(os.listdir(args.out)):
        if name.endswith((".png", ".gif", ".md", ".json")):
            wrote(os.path.join(args.out, name))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - start:.0f} s")
