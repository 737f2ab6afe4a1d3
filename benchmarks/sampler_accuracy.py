"""Sampler accuracy with the exact score: what "first order" and "second order" mean, with no training.

For 1-D Gaussian and Gaussian-mixture data every noisy marginal p_t is a Gaussian mixture in closed
form, and so is its score (and the eps a perfect network would predict). Driving a sampler with that
exact model leaves only the sampler's own error: the error of the sampled distribution against the
target, measured at several step counts, falls like NFE^(-order). This script fits that order
(the log-log slope) for every sampler and writes

    <out>/sampler_accuracy.md     tables: errors of mean, std, mixture weight and W1 per step count; fitted orders
    <out>/sampler_accuracy.json   every number, plus the settings
    <out>/sampler_accuracy.png    W1 against NFE on log-log axes, with reference slopes -1 and -2

    python benchmarks/sampler_accuracy.py            # about 20 s on 2 CPU cores
    python benchmarks/sampler_accuracy.py --quick    # fewer points and samples (the tests run this)

How the error is measured (all in float64):
  * the start is fair: x_T holds the exact quantiles of p at the sampler's first noise level (not N(0, 1),
    which is only close to it), so a sampler that integrated exactly would return the target exactly;
  * W1, the 1-D Wasserstein distance, is mean_k |x_(k) - F^-1((k + 1/2) / n)|: sorted samples against
    the target's quantiles, which bisection on the mixture's CDF gives to 1e-12;
  * deterministic samplers map the quantile grid monotonically, so their numbers have no Monte-Carlo
    noise at all. Stochastic samplers (ddpm, ddim eta=1, the SDE samplers) do: their W1 cannot fall below
    the W1 of n exact draws (the "noise floor", measured and drawn), and their order is fitted only on
    points at least 3x above that floor, and called meaningful only when 3 or more such points exist.
  * the discrete samplers' target is the data; the SDE samplers stop at t = t_min = 1e-3, so theirs is p_t_min.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import minidiff as md  # noqa: E402
from minidiff.imaging import GREY, Series, line_plot, tile  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NOISE_FLOOR_FACTOR = 3.0      # a stochastic sampler's point enters the fit only if W1 > 3 x the noise floor


# ==================================================================== exact data: a 1-D Gaussian mixture
@dataclass(frozen=True)
class Mixture1D:
    """p(x) = sum_k w_k N(m_k, s_k^2) in 1-D. One component is a plain Gaussian."""

    weights: Sequence[float]
    means: Sequence[float]
    stds: Sequence[float]

    def tensors(self):
        return (torch.tensor(self.weights, dtype=torch.float64), torch.tensor(self.means, dtype=torch.float64),
                torch.tensor(self.stds, dtype=torch.float64))

    def noisy(self, c: float, sigma: float) -> "Mixture1D":
        """The law of c x0 + sigma z, x0 ~ self, z ~ N(0, 1): every component scales and widens."""
        return Mixture1D(self.weights, tuple(c * m for m in self.means),
                         tuple(math.sqrt(c**2 * s**2 + sigma**2) for s in self.stds))

    @property
    def mean(self) -> float:
        return sum(w * m for w, m in zip(self.weights, self.means))

    @property
    def std(self) -> float:
        second = sum(w * (s**2 + m**2) for w, m, s in zip(self.weights, self.means, self.stds))
        return math.sqrt(second - self.mean**2)

    def cdf(self, x: Tensor) -> Tensor:
        w, m, s = self.tensors()
        return (w * torch.special.ndtr((x.unsqueeze(-1) - m) / s)).sum(-1)

    def quantile(self, u: Tensor, iterations: int = 60) -> Tensor:
        """F^-1(u) by bisection on the CDF (monotone, so bisection cannot fail); 60 halvings reach 1e-15."""
        lo = torch.full_like(u, min(m - 12 * s for m, s in zip(self.means, self.stds)))
        hi = torch.full_like(u, max(m + 12 * s for m, s in zip(self.means, self.stds)))
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def quantile_grid(self, n: int) -> Tensor:
        """[n] float64: F^-1((k + 1/2) / n), k = 0..n-1, the n-point sample closest to this law in W1."""
        return _quantile_grid(self, n)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """[n] iid draws: pick component k with probability w_k, then m_k + s_k z."""
        w, m, s = self.tensors()
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        return m[k] + s[k] * torch.randn(n, generator=generator, dtype=torch.float64)

    def oracle(self) -> md.exact.GaussianMixture:
        """The same law in md.exact, which gives the exact eps / score of every noisy version of it."""
        return md.exact.GaussianMixture(list(self.means), list(self.stds), list(self.weights))


@functools.lru_cache(maxsize=64)
def _quantile_grid(law: Mixture1D, n: int) -> Tensor:
    """Mixture1D.quantile_grid, cached: the same few laws recur across runs (bisection is the slow part)."""
    return law.quantile((torch.arange(n, dtype=torch.float64) + 0.5) / n)


GAUSSIAN = Mixture1D(weights=(1.0,), means=(0.5,), stds=(0.5,))
MIXTURE = Mixture1D(weights=(0.3, 0.7), means=(-1.0, 1.0), stds=(0.3, 0.4))
DATASETS = {"gaussian": GAUSSIAN, "mixture": MIXTURE}


def kernel(sde: md.SDE, t: float):
    """(c, sigma) with p_0t(x | x0) = N(c x0, sigma^2)."""
    mean, std = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
    return float(mean), float(std)


# ==================================================================== the samplers under test
@dataclass(frozen=True)
class Run:
    """One sampler configuration; `method` is md.sample's sampler, or "sde:<method>" for md.sde_sample."""

    label: str
    method: str
    spacing: Optional[str] = None        # the discrete grid (md.sample only)
    eta: float = 0.0
    stochastic: bool = False
    min_steps: int = 1                   # fewer steps than this diverge (PC's Langevin step needs beta(t) dt < 1)


RUNS = (
    Run("ddim", "ddim", "linspace"),
    Run("euler", "euler", "karras"),
    Run("heun", "heun", "karras"),
    Run("dpmpp_2m", "dpmpp_2m", "karras"),
    Run("ddpm", "ddpm", "linspace", stochastic=True),
    Run("ddim eta=1", "ddim", "linspace", eta=1.0, stochastic=True),
    Run("sde euler_maruyama", "sde:euler_maruyama", stochastic=True),
    Run("sde pc", "sde:pc", stochastic=True, min_steps=20),
)
STEPS = {False: (5, 10, 20, 40, 80), True: (5, 10, 20, 40, 80, 160)}            # deterministic, stochastic
QUICK_STEPS = {False: (10, 20, 40, 80), True: (5, 10, 20, 40)}
FIT_POINTS = 3                         # the order is fitted on the finest 3 usable step counts (the asymptotic range)


def draw(run: Run, data: Mixture1D, steps: int, n: int, seed: int, schedule: md.NoiseSchedule, sde: md.SDE):
    """(samples [n], NFE, target Mixture1D) for one run at one step count, started from exact quantiles."""
    generator = torch.Generator().manual_seed(seed)
    if run.method.startswith("sde:"):
        model = md.exact.ExactScore(data.oracle(), sde)                        # counts its calls in .nfe
        x_T = data.noisy(*kernel(sde, 1.0)).quantile_grid(n)[:, None].clone()  # p at t = 1, exactly
        x = md.sde_sample(model, sde, (n, 1), method=run.method[4:], steps=steps, x_T=x_T, generator=generator,
                          progress=False)
        target = data.noisy(*kernel(sde, 1e-3))                               # sde_sample stops at t = t_min = 1e-3
    else:
        model = md.exact.ExactModel(data.oracle(), schedule)                   # E[eps | x_i]; counts .nfe
        alpha_bar = float(schedule.alpha_bar_at(float(schedule.timesteps(steps, run.spacing)[0])))
        x_T = data.noisy(math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)).quantile_grid(n)[:, None].clone()
        x = md.sample(model, schedule, (n, 1), sampler=run.method, steps=steps, eta=run.eta, spacing=run.spacing,
                      x_T=x_T, generator=generator, progress=False)
        target = data
    return x[:, 0], model.nfe, target


def errors(x: Tensor, target: Mixture1D, split: Optional[float]) -> dict:
    """Errors of the sample x [n] against the target law; `*_se` are the Monte-Carlo standard errors of iid samples."""
    n = x.numel()
    centred = x - x.mean()
    std = float(centred.square().mean().sqrt())
    fourth = float(centred.pow(4).mean())
    row = {"mean_err": float(x.mean()) - target.mean, "mean_se": std / math.sqrt(n),
           "std_err": std - target.std, "std_se": math.sqrt(max(fourth - std**4, 0.0) / n) / (2 * std),
           "w1": float((x.sort().values - target.quantile_grid(n)).abs().mean()),
           "weight_err": None, "weight_se": None}
    if split is not None:                                                     # mass left of the valley between modes
        p = float(target.cdf(torch.tensor(split, dtype=torch.float64)))
        row["weight_err"] = float((x < split).double().mean()) - p
        row["weight_se"] = math.sqrt(p * (1 - p) / n)
    return row


def noise_floor(target: Mixture1D, n: int, seed: int, repeats: int = 4) -> float:
    """Mean W1 of n iid exact draws against the exact quantiles: the least W1 a stochastic sampler can show."""
    generator = torch.Generator().manual_seed(seed)
    exact = target.quantile_grid(n)
    w1 = [float((target.sample(n, generator).sort().values - exact).abs().mean()) for _ in range(repeats)]
    return sum(w1) / repeats


def fit_order(rows: List[dict], floor: float) -> dict:
    """Least-squares slope of log W1 against log NFE over the finest FIT_POINTS usable rows; order = -slope.

    A row is usable when its W1 is NOISE_FLOOR_FACTOR times above `floor` (0 for deterministic samplers).
    """
    used = [r for r in rows if r["w1"] > NOISE_FLOOR_FACTOR * floor][-FIT_POINTS:]
    fit = {"order": None, "nfe_range": None, "points": len(used), "meaningful": len(used) >= FIT_POINTS}
    if len(used) >= 2:
        lx = torch.tensor([math.log(r["nfe"]) for r in used], dtype=torch.float64)
        ly = torch.tensor([math.log(r["w1"]) for r in used], dtype=torch.float64)
        slope = float(((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).square().sum())
        fit.update(order=-slope, nfe_range=[used[0]["nfe"], used[-1]["nfe"]])
    return fit


def run_benchmark(quick: bool, n: int, n_stochastic: int, seed: int = 0) -> dict:
    schedule = md.NoiseSchedule.linear(T=1000)
    sde = md.VPSDE.from_schedule(schedule)                                    # beta(t) from 0.1 to 20: the same process
    results = {}
    for name, data in DATASETS.items():
        split = None if len(data.means) == 1 else 0.5 * (data.means[0] + data.means[1])
        floors = {"discrete": noise_floor(data, n_stochastic, seed + 1),
                  "sde": noise_floor(data.noisy(*kernel(sde, 1e-3)), n_stochastic, seed + 1)}
        runs = []
        for run in RUNS:
            floor = floors["sde"] if run.method.startswith("sde:") else floors["discrete"]
            rows = []
            for steps in [s for s in (QUICK_STEPS if quick else STEPS)[run.stochastic] if s >= run.min_steps]:
                x, nfe, target = draw(run, data, steps, n_stochastic if run.stochastic else n, seed, schedule, sde)
                row = {"steps": steps, "nfe": nfe, **errors(x, target, split)}
                if not run.stochastic:                                        # no Monte-Carlo noise: no standard errors
                    row.update(mean_se=None, std_se=None, weight_se=None)
                rows.append(row)
            fit = fit_order(rows, floor if run.stochastic else 0.0)
            runs.append({"label": run.label, "method": run.method, "spacing": run.spacing, "eta": run.eta,
                         "stochastic": run.stochastic, "noise_floor": floor if run.stochastic else None,
                         "fit": fit, "rows": rows})
        results[name] = {"data": {"weights": list(data.weights), "means": list(data.means), "stds": list(data.stds)},
                         "noise_floor": floors, "runs": runs}
    return results


# ==================================================================== reports
def _num(value, se=None) -> str:
    """3 significant figures; None as a dash; '± se' when a Monte-Carlo standard error is given."""
    if value is None:
        return "-"
    text = f"{value:+.3g}" if isinstance(value, float) else str(value)
    return text if se is None else f"{text} ± {se:.1g}"


def _order(fit: dict) -> str:
    if fit["order"] is None:
        return f"- (only {fit['points']} point{'s' * (fit['points'] != 1)} above the noise floor)"
    text = f"{fit['order']:.2f} (NFE {fit['nfe_range'][0]}-{fit['nfe_range'][1]})"
    return text if fit["meaningful"] else text + ", too few points: not meaningful"


def markdown(results: dict, settings: dict) -> str:
    lines = ["# Sampler accuracy with the exact score", "",
             f"`{settings['command']}`: {settings['seconds']:.1f} s, torch {settings['torch']}, float64, "
             f"linear schedule T = 1000 (and the matching VP SDE), n = {settings['n']} samples per deterministic run, "
             f"{settings['n_stochastic']} per stochastic run, seed {settings['seed']}.", "",
             "Every sampler is driven by the exact eps (or score) of the data, so all of the error below is the "
             "sampler's. x_T holds the exact quantiles of p at the first noise level. W1 is the 1-D Wasserstein "
             "distance to the target (the data; p at t = 1e-3 for the SDE samplers). The order is -slope of log W1 "
             f"against log NFE over the finest {FIT_POINTS} step counts whose W1 is over {NOISE_FLOOR_FACTOR:g}x "
             "the noise floor (the W1 of n exact draws; 0 for deterministic samplers, whose numbers carry no "
             "Monte-Carlo noise). ± is one standard error of iid sampling; weight error is the error of the mass "
             "left of the valley between the two modes.", "",
             "## Fitted order of accuracy", "",
             "| sampler | grid | kind | " + " | ".join(f"order on {name}" for name in results) + " |",
             "|---|---|---|" + "---|" * len(results)]
    first = next(iter(results.values()))
    for k, run in enumerate(first["runs"]):
        grid = run["spacing"] or "uniform t in [1e-3, 1]"
        kind = "stochastic" if run["stochastic"] else "deterministic"
        lines.append(f"| {run['label']} | {grid} | {kind} | "
                     + " | ".join(_order(d["runs"][k]["fit"]) for d in results.values()) + " |")
    lines += ["", "Expected: 1 for ddim, euler and the ancestral/SDE samplers (weak order 1), 2 for heun and "
              "dpmpp_2m. The stochastic fits sit close to the noise floor and mostly at coarse step counts, "
              "before the asymptotic regime: read them as rough."]
    for name, d in results.items():
        data = d["data"]
        law = " + ".join(f"{w:g} N({m:g}, {s:g}^2)" for w, m, s in zip(data["weights"], data["means"], data["stds"]))
        lines += ["", f"## {name}: {law}", "",
                  f"Noise floor of W1: {d['noise_floor']['discrete']:.2g} (data), "
                  f"{d['noise_floor']['sde']:.2g} (p at t = 1e-3).", "",
                  "| sampler | grid | steps | NFE | mean error | std error | W1 | weight error |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in d["runs"]:
            for r in run["rows"]:
                lines.append(f"| {run['label']} | {run['spacing'] or '-'} | {r['steps']} | {r['nfe']} | "
                             f"{_num(r['mean_err'], r['mean_se'])} | {_num(r['std_err'], r['std_se'])} | "
                             f"{r['w1']:.3g} | {_num(r['weight_err'], r['weight_se'])} |")
    return "\n".join(lines) + "\n"


NOTES = ("solid: deterministic, no Monte-Carlo noise;", "dashed: stochastic.", "Orders are -slope over the",
         f"finest {FIT_POINTS} points above {NOISE_FLOOR_FACTOR:g}x the", "noise floor (? = too few points).")


def plot(results: dict, path: str) -> str:
    """W1 against NFE on log-log axes, one panel per data set, one line per sampler (dashed: stochastic)."""
    rows = [r for d in results.values() for run in d["runs"] for r in run["rows"]]
    nfe_range, w1_range = (4, max(r["nfe"] for r in rows) * 1.25), (min(r["w1"] for r in rows) / 2, 2.0)
    panels = []
    for name, d in results.items():
        series = [Series([r["nfe"] for r in run["rows"]], [r["w1"] for r in run["rows"]], markers=True, width=3,
                         label=f"{run['label']}: order {_order_number(run['fit'])}", dashed=run["stochastic"])
                  for run in d["runs"]]
        floor = d["noise_floor"]["discrete"]                              # stochastic samplers cannot go below
        series.append(Series(nfe_range, [floor, floor], "noise floor (stochastic)", GREY, dashed=True, width=1))
        for slope in (-1, -2):                                            # reference slopes from (6, 0.6)
            series.append(Series([6, nfe_range[1]], [0.6, 0.6 * (nfe_range[1] / 6) ** slope], f"slope {slope}",
                                 (160, 160, 160) if slope == -1 else (90, 90, 90), width=1))
        panels.append(line_plot(series, title=f"{name} data", xlabel="network calls (NFE)", ylabel="W1 error",
                                log_x=True, log_y=True, xlim=nfe_range, ylim=w1_range, size=(620, 520),
                                font_size=15, legend="outside", notes=NOTES if name == list(results)[-1] else ()))
    tile(panels, path=path)
    return path


def _order_number(fit: dict) -> str:
    return "-" if fit["order"] is None else f"{fit['order']:.2f}" + ("" if fit["meaningful"] else "?")


def write_reports(results: dict, settings: dict, out_dir: str) -> dict:
    """Write the .md, .json and .png files; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"sampler_accuracy.{kind}") for kind in ("md", "json", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown(results, settings))
    with open(paths["json"], "w") as f:
        json.dump({"settings": settings, "results": results}, f, indent=1)
    plot(results, paths["png"])
    return paths


# ==================================================================== main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer step counts and samples (a few seconds; the tests)")
    p.add_argument("--n", type=int, default=None, help="samples per deterministic run (default 4096; quick 2048)")
    p.add_argument("--n-stochastic", type=int, default=None,
                   help="samples per stochastic run (default 32768; quick 8192): sets the noise floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the .md/.json/.png")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    n = args.n or (2048 if args.quick else 4096)
    n_stochastic = args.n_stochastic or (8192 if args.quick else 32768)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # 1-D tensors of a few thousand numbers: more threads only add overhead
    start = time.perf_counter()
    try:
        results = run_benchmark(args.quick, n, n_stochastic, args.seed)
    finally:
        torch.set_num_threads(threads)
    command = " ".join(["python benchmarks/sampler_accuracy.py"] + (sys.argv[1:] if argv is None else list(argv)))
    settings = {"command": command, "quick": args.quick, "n": n, "n_stochastic": n_stochastic, "seed": args.seed,
                "seconds": time.perf_counter() - start, "torch": torch.__version__,
                "python": platform.python_version(), "T": 1000, "schedule": "linear", "sde": "VPSDE(0.1, 20)",
                "sde_t_min": 1e-3, "noise_floor_factor": NOISE_FLOOR_FACTOR, "fit_points": FIT_POINTS}
    paths = write_reports(results, settings, args.out)
    for name, d in results.items():
        print(f"{name}: " + ", ".join(f"{run['label']} {_order(run['fit'])}" for run in d["runs"]))
    print(f"{settings['seconds']:.1f} s; wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
