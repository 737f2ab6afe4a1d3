"""Sample quality against network calls: how few steps does each sampler need on a sprites model?

For ONE trained model this draws the same class-balanced set of samples (same seeds, same x_T) with
every sampler at several step counts and measures each set with minidiff.metrics: Fréchet distance
to real sprites and the class accuracy of the samples, among others. It writes

    <out>/quality_vs_steps.md     a markdown table
    <out>/quality_vs_steps.json   every number, plus the run's settings
    <out>/quality_vs_steps.png    Fréchet distance and class accuracy against network calls (NFE)

and says whether each target holds:
    ddim-25 and dpmpp_2m-20 within 10% of ddpm's Fréchet distance, dpmpp_2m-10 within 25% (on the
    trailing grid; see GRIDS); class accuracy of guided samples (w = --guidance-scale, 2 by default)
    >= 95% (ddpm and ddim-25).

    python benchmarks/quality_vs_steps.py --checkpoint runs/sprites/checkpoint.pt --n 500
    python benchmarks/quality_vs_steps.py --train-quick --preset long   # trains the published model first
                                                                        # (43 min on 2 cores; report ~30 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import minidiff as md  # noqa: E402
from minidiff import checkpoint as ckpt  # noqa: E402
from minidiff.imaging import GREY, PALETTE, Series, line_plot, tile  # noqa: E402
from minidiff.metrics import evaluate, feature_extractor, infer_dataset  # noqa: E402

DEFAULT_SPACING = "trailing"    # the grid of runs that name none (see GRIDS below)
DEFAULT_RUNS = ("ddpm,ddim:10,ddim:25,ddim:50,ddim:100,dpmpp_2m:5,dpmpp_2m:10,dpmpp_2m:20,"
                "ddim:25:leading,dpmpp_2m:10:leading,dpmpp_2m:20:leading,dpmpp_2m:10:karras,dpmpp_2m:20:karras,"
                "euler:10:karras,euler:25:karras,euler:50:karras,heun:5:karras,heun:10:karras,heun:25:karras")
GRIDS = ("Grids: trailing starts at the last step, t = T, where x_T ~ N(0, I) was drawn, and spaces the rest "
         "evenly (the course's own DDIM loop, i = T, T - T/n, ...; Lin et al. 2023, Table 2); leading (the DDIM "
         "paper's and minidiff's default) starts T/n - 1 steps lower, so a few-step sampler starts from noise "
         "that is slightly too strong for its first step; karras is dense at low noise (Karras et al. 2022, "
         "Eq. 5). The targets read the trailing runs; the leading rows show what the other grid costs.")
# (name, sampler, steps, allowed Fréchet distance as a multiple of ddpm's)
FD_TARGETS = (("ddim-25", "ddim", 25, "trailing", 1.10), ("dpmpp_2m-20", "dpmpp_2m", 20, "trailing", 1.10),
              ("dpmpp_2m-10", "dpmpp_2m", 10, "trailing", 1.25))
ACCURACY_TARGET = 0.95
ACCURACY_RUNS = (("ddpm", None, None), ("ddim", 25, "trailing"))    # (sampler, steps or None = every step, grid)
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Run:
    sampler: str
    steps: Optional[int]          # None: every step of the schedule (ddpm)
    spacing: str

    @property
    def name(self) -> str:
        return self.sampler if self.steps is None else f"{self.sampler}-{self.steps}"


def parse_runs(spec: str, spacing: str = DEFAULT_SPACING) -> List[Run]:
    """"ddpm,ddim:25,heun:10:karras" -> runs; sampler[:steps[:spacing]], spacing defaults to `spacing`."""
    runs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if parts[0] not in md.SAMPLERS or len(parts) > 3:
            raise ValueError(f"bad run {item!r}: expected sampler[:steps[:spacing]] "
                             f"with sampler in {tuple(md.SAMPLERS)}")
        steps = int(parts[1]) if len(parts) > 1 and parts[1] else None
        runs.append(Run(parts[0], steps, parts[2] if len(parts) > 2 else spacing))
    return runs


# ---------------------------------------------------------------------------------- measuring
def run_benchmark(model, schedule, runs: List[Run], n: int, guidance_scale: Optional[float], seed: int,
                  classifier, prediction_type: str = "epsilon", batch_size: int = 250,
                  progress: bool = True) -> List[dict]:
    """One ``minidiff.metrics.evaluate`` result per run, each with its "name"; same seed for all."""
    results = []
    for run in runs:
        start = time.perf_counter()
        result = evaluate(model, schedule, n=n, sampler=run.sampler, steps=run.steps, guidance_scale=guidance_scale,
                          classifier=classifier, seed=seed, batch_size=batch_size, spacing=run.spacing,
                          prediction_type=prediction_type, progress=False)
        result["name"] = run.name
        results.append(result)
        if progress:
            print(f"  {run.name:<16} NFE {result['nfe']:>6.0f}  FD {result['fd']:8.3f}  "
                  f"class acc {_fmt(result['class_accuracy'])}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return results


def check_targets(results: List[dict]) -> List[dict]:
    """[{"target", "value", "limit", "ok"}]; ok is None where a run the target needs was not made."""
    def find(sampler, steps, spacing):
        name = Run(sampler, steps, "").name                         # "ddpm" (every step) or "ddim-25"
        return next((r for r in results if r["name"] == name and spacing in (None, r.get("spacing"))), None)

    checks = []
    ddpm = find("ddpm", None, None)                                 # every step: all grids are the same
    for name, sampler, steps, spacing, ratio in FD_TARGETS:
        run = find(sampler, steps, spacing)
        name = f"{name} {spacing}"
        if ddpm is None or run is None:
            checks.append({"target": f"FD({name}) <= {ratio:.2f} x FD(ddpm)", "value": None, "limit": None, "ok": None})
            continue
        limit = ratio * ddpm["fd"]
        checks.append({"target": f"FD({name}) <= {ratio:.2f} x FD(ddpm)", "value": run["fd"], "limit": limit,
                       "ok": run["fd"] <= limit})
    for sampler, steps, spacing in ACCURACY_RUNS:
        run = find(sampler, steps, spacing)
        label = sampler if steps is None else f"{sampler}-{steps} {spacing}"
        value = run["class_accuracy"] if run is not None else None
        guidance = run["guidance_scale"] if run is not None else None
        checks.append({"target": f"class accuracy({label}, w={guidance}) >= {ACCURACY_TARGET:.2f}",
                       "value": value, "limit": ACCURACY_TARGET,
                       "ok": None if value is None else value >= ACCURACY_TARGET})
    return checks


# ---------------------------------------------------------------------------------- writing
def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results: List[dict], checks: List[dict], settings: dict) -> str:
    ddpm_fd = next((r["fd"] for r in results if r["sampler"] == "ddpm"), None)
    lines = [f"# Sample quality vs network calls ({settings['checkpoint'] or 'model'})", "",
             f"n = {settings['n']} samples per run (class-balanced), guidance w = {settings['guidance_scale']}, "
             f"seed {settings['seed']}, device {settings['device']}. Features: the sprites feature classifier "
             f"(held-out accuracy {_fmt(settings['classifier_accuracy'], 4)}). Fréchet distance of a second real "
             f"set of the same size (the floor): {_fmt(results[0].get('fd_real') if results else None)}.", "",
             GRIDS, "",
             "| run | spacing | NFE | Fréchet distance | / ddpm | class accuracy | precision | recall | diversity "
             "| structure (all) | images/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = r["fd"] / ddpm_fd if ddpm_fd else None
        structure = r.get("structure_all")
        grid = "every step" if r["steps"] == settings.get("T") else r["spacing"]   # at every step all grids agree
        lines.append(f"| {r['name']} | {grid} | {r['nfe']:.0f} | {_fmt(r['fd'])} | {_fmt(ratio, 2)} | "
                     f"{_fmt(r['class_accuracy'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | "
                     f"{_fmt(r['diversity'])} | {_fmt(structure)} | {_fmt(r['images_per_second'], 1)} |")
    lines += ["", "| target | value | limit | holds |", "|---|---:|---:|---|"]
    for c in checks:
        holds = {True: "yes", False: "**no**", None: "not run"}[c["ok"]]
        lines.append(f"| {c['target']} | {_fmt(c['value'])} | {_fmt(c['limit'])} | {holds} |")
    return "\n".join(lines) + "\n"


def plot(results: List[dict], path: str) -> str:
    """FD and class accuracy against NFE (log x), one line per sampler and grid."""
    by_sampler = {}
    for r in results:
        key = r["sampler"] if r["sampler"] == "ddpm" else f"{r['sampler']} ({r['spacing']})"
        by_sampler.setdefault(key, []).append(r)
    by_sampler = {key: sorted(rows, key=lambda r: r["nfe"]) for key, rows in by_sampler.items()}
    nfe = [r["nfe"] for r in results]
    ends = [min(nfe) / 1.2, max(nfe) * 1.2]
    fd = [Series([r["nfe"] for r in rows], [r["fd"] for r in rows], name, markers=True)
          for name, rows in by_sampler.items()]
    accuracy = [Series([r["nfe"] for r in rows], [r["class_accuracy"] for r in rows], name, markers=True)
                for name, rows in by_sampler.items() if rows[0]["class_accuracy"] is not None]
    if results and results[0].get("fd_real") is not None:
        fd.append(Series(ends, [results[0]["fd_real"]] * 2, "real vs real", GREY, dashed=True, width=1))
    ddpm = next((r for r in results if r["name"] == "ddpm"), None)
    if ddpm is not None:                                            # the reference the FD targets are relative to
        fd.append(Series(ends, [ddpm["fd"]] * 2, "ddpm (every step)", PALETTE[0], dashed=True, width=1))
    accuracy.append(Series(ends, [ACCURACY_TARGET] * 2, "target", GREY, dashed=True, width=1))
    panels = [line_plot(series, xlabel="network calls per image (NFE)", ylabel=ylabel, log_x=True, size=(560, 420),
                        legend="outside")
              for series, ylabel in ((fd, "Fréchet distance (lower is better)"), (accuracy, "class accuracy"))]
    tile(panels, path=path)
    return path


def write_reports(results: List[dict], checks: List[dict], settings: dict, out_dir: str) -> dict:
    """Write the .md, .json and .png files; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"quality_vs_steps.{kind}") for kind in ("md", "json", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown_table(results, checks, settings))
    with open(paths["json"], "w") as f:
        json.dump({"settings": settings, "results": results, "targets": checks}, f, indent=2)
    plot(results, paths["png"])
    return paths


# ---------------------------------------------------------------------------------- a model to measure
def train_quick(out_dir: str, preset: str, device: str) -> str:
    """Train a sprites model with a preset of minidiff.presets (resuming if out_dir holds one); its checkpoint."""
    from minidiff.presets import build_run, resolve
    from minidiff.train import Trainer
    run = resolve(preset)
    run["train"] = {**run["train"], "device": device, "seed": 0}
    built = build_run(run, out_dir=out_dir)
    trainer = Trainer(built.model, built.dataset, built.config, schedule=built.schedule).fit(resume=True)
    return trainer.checkpoint_path()


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a minidiff checkpoint of a sprites model (ContextUnet)")
    p.add_argument("--train-quick", action="store_true", help="no checkpoint: train a sprites model first")
    p.add_argument("--preset", default="quick", help="the minidiff.presets run --train-quick trains (default quick)")
    p.add_argument("--n", type=int, default=500, help="samples per run (class-balanced)")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance w for every run")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated sampler[:steps[:spacing]]")
    p.add_argument("--spacing", default=DEFAULT_SPACING, help="grid of runs that name none (default trailing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the .md/.json/.png")
    p.add_argument("--cache-dir", default=None,
                   help="feature classifier cache (default: $MINIDIFF_CACHE, else ~/.cache/minidiff)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    runs = parse_runs(args.runs, args.spacing)
    path = args.checkpoint
    if path is None:
        if not args.train_quick:
            raise SystemExit("pass --checkpoint PATH, or --train-quick to train a sprites model first")
        path = train_quick(os.path.join(args.out, f"{args.preset}_sprites_model"), args.preset, device)

    checkpoint = ckpt.load_checkpoint(path)
    model = ckpt.model_from_checkpoint(checkpoint, ema=True, device=device, path=path)
    schedule = ckpt.schedule_or_sde_from_checkpoint(checkpoint)
    if not isinstance(schedule, md.NoiseSchedule):
        raise SystemExit(f"{path} does not hold a discrete-time model with a NoiseSchedule")
    prediction_type = (checkpoint.get("train_config") or {}).get("prediction_type", "epsilon")
    dataset = infer_dataset(model)
    classifier = feature_extractor(dataset, device=device, cache_dir=args.cache_dir)

    print(f"quality vs steps: {path} ({dataset}, T={schedule.T}), n={args.n}, w={args.guidance_scale}, {device}")
    results = run_benchmark(model, schedule, runs, args.n, args.guidance_scale, args.seed, classifier,
                            prediction_type, args.batch_size)
    checks = check_targets(results)
    settings = {"checkpoint": path, "checkpoint_step": int(checkpoint.get("step", 0)), "n": args.n,
                "guidance_scale": args.guidance_scale, "seed": args.seed, "device": device,
                "torch": torch.__version__, "python": platform.python_version(), "T": schedule.T,
                "classifier_accuracy": classifier.info.get("heldout_accuracy")}
    paths = write_reports(results, checks, settings, args.out)
    print(markdown_table(results, checks, settings))
    print("wrote " + ", ".join(paths.values()))
    return 0 if all(c["ok"] is not False for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
