"""Sample quality per CPU minute: which training recipe gets the most out of a few minutes?

Every variant starts from BASELINE, the quick preset (minidiff/presets.py) as it was before it took this
benchmark's winners, and changes ONE thing; --combine runs several variants' changes together (the quick preset
today is --combine v_prediction,min_snr,lr_2e-3). Each trains for the
largest budget (--budgets, minutes of wall clock at a fixed torch thread count); at every budget on the way its
EMA weights are measured with minidiff.metrics (guided samples, w = 2, the same n and seeds for all):
DDIM-25 and DPM-Solver++-20 on the trailing grid at every budget, DDPM over all T steps at the last. So the
smaller budgets are the same run read early, with its learning rate not yet decayed: a lower bound for a run
planned for that budget. The step count of a budget comes from the variant's own measured speed (a calibration
of --calibrate steps after a warm-up), so a faster recipe (bf16 where native, channels_last) trains more steps.

Also measured: the Trainer's own overhead, Trainer.train(n) against a bare hand-written loop over the same
model, optimiser, data, loss, clipping and EMA (target >= 0.97x the bare loop's images/s).

    python benchmarks/quality_per_minute.py                                  # every variant, 2/4/6 minutes
    python benchmarks/quality_per_minute.py --variants base,min_snr --budgets 1,2 --n 100
    python benchmarks/quality_per_minute.py --only-overhead

Writes results/quality_per_minute.{md,json,png}. Needs a quiet machine: the budgets are wall-clock minutes.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import minidiff as md  # noqa: E402
from benchmarks.common import RESULTS_DIR, Table, log, machine_info, write_results  # noqa: E402
from minidiff.imaging import Series, line_plot, tile  # noqa: E402
from minidiff.metrics import evaluate, feature_extractor  # noqa: E402
from minidiff.presets import PRESETS, build_run  # noqa: E402
from minidiff.train import EMA, shard_generator  # noqa: E402

# The recipe the variants were measured against: the quick preset as it was before it took the winners
# (eps-prediction, unweighted loss, lr 1e-3). Today's quick preset is --combine v_prediction,min_snr,lr_2e-3.
BASELINE: dict = {"train": {"prediction_type": "epsilon", "loss_weighting": "none", "lr": 1e-3}}
# One change each from BASELINE: {section: values}; "model" values go into the model's kwargs,
# a "schedule" replaces the preset's schedule, "train" values update its TrainConfig.
VARIANTS: Dict[str, dict] = {
    "base": {},
    "bf16_channels_last": {"train": {"mixed_precision": "auto", "channels_last": True}},
    "min_snr": {"train": {"loss_weighting": "min_snr"}},
    "v_prediction": {"train": {"prediction_type": "v_prediction"}},
    "lr_2e-3": {"train": {"lr": 2e-3}},
    "warmup_500": {"train": {"warmup_steps": 500}},
    "batch_128": {"train": {"batch_size": 128}},
    "ema_0.999": {"train": {"ema_decay": 0.999}},
    "ema_no_warmup": {"train": {"ema_warmup": False}},
    "n_feat_64": {"model": {"n_feat": 64}},
    "cosine": {"schedule": {"kind": "cosine", "T": 500}},
}
SAMPLERS = (("ddim-25", "ddim", 25), ("dpmpp_2m-20", "dpmpp_2m", 20))
GUIDANCE = 2.0


def run_description(variant: dict, combine: dict = None) -> dict:
    """BASELINE with the variant's changes (and `combine`'s, for a combination of winners)."""
    run = copy.deepcopy(PRESETS["quick"])
    for changes in (BASELINE, variant, combine or {}):
        for section, values in changes.items():
            if section == "model":
                run["model"]["kwargs"].update(values)
            elif section == "schedule":
                run["schedule"] = dict(values)
            else:
                run[section].update(values)
    return run


def steps_per_second(run: dict, steps: int, repeats: int = 3) -> float:
    """The variant's training speed: the median of `repeats` timings of `steps` steps after 3 warm-up steps, on a
    throwaway copy. (One timing of 20 steps varied by 4.1-6.0 steps/s between variants of equal cost.)"""
    built = build_run(copy.deepcopy(run))
    config = md.TrainConfig.from_dict({**run["train"], "steps": 10**9, "progress": False, "device": "cpu"})
    trainer = md.Trainer(built.model, built.dataset, config, schedule=built.schedule)
    trainer.train(3)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train(steps)
        rates.append(steps / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def train_and_measure(name: str, run: dict, budgets: List[float], rate: float, n: int, classifier,
                      seed: int, ddpm: bool = True) -> List[dict]:
    """Train for max(budgets) minutes' worth of steps; measure the EMA weights at each budget's step
    (DDPM over all T steps too at the last budget, if `ddpm`)."""
    total = max(1, int(max(budgets) * 60 * rate))
    built = build_run(copy.deepcopy(run))
    config = md.TrainConfig.from_dict({**run["train"], "steps": total, "progress": False, "device": "cpu"})
    trainer = md.Trainer(built.model, built.dataset, config, schedule=built.schedule)
    rows, start = [], time.perf_counter()
    for minutes in sorted(budgets):
        target = max(1, int(minutes * 60 * rate))
        trainer.train(target - trainer.step)
        row = {"variant": name, "minutes": minutes, "steps": trainer.step,
               "train_minutes": (time.perf_counter() - start) / 60}
        runs = list(SAMPLERS) + ([("ddpm", "ddpm", None)] if ddpm and minutes == max(budgets) else [])
        for label, sampler, steps in runs:
            result = evaluate(trainer.ema.model, built.schedule, n=n, sampler=sampler, steps=steps,
                              spacing="trailing", guidance_scale=GUIDANCE, classifier=classifier, seed=seed,
                              prediction_type=config.prediction_type)
            row[f"{label}_fd"] = result["fd"]
            row[f"{label}_acc"] = result["class_accuracy"]
            row[f"{label}_structure"] = result.get("structure_all")
            row["fd_real"] = result.get("fd_real")
        log(f"  {name} {minutes} min ({trainer.step} steps): " + ", ".join(
            f"{k} {v:.3g}" for k, v in row.items() if k.endswith("_fd") and v is not None))
        rows.append(row)
    return rows


def trainer_overhead(steps: int = 60, repeats: int = 3) -> dict:
    """Trainer.train(steps) against a bare loop doing the same work; images/s of each and their ratio."""
    run = run_description({})
    built = build_run(run)
    config = md.TrainConfig.from_dict({**run["train"], "steps": 10**9, "progress": False, "device": "cpu"})
    trainer = md.Trainer(copy.deepcopy(built.model), built.dataset, config, schedule=built.schedule)
    model = copy.deepcopy(built.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.adam_betas)
    ema = EMA(model)
    loader = torch.utils.data.DataLoader(built.dataset, batch_size=config.batch_size, shuffle=True, drop_last=True)

    def bare(n):
        done = 0
        while done < n:
            for x, context in loader:
                generator = shard_generator(config.seed, done, 0)
                keep = (torch.rand(x.shape[0], generator=generator) >= config.context_dropout).float()
                if context.ndim == 1:                                  # class ids -> one-hot, as the Trainer does
                    context = torch.nn.functional.one_hot(context.long(), model.n_cfeat)
                context = context.float() * keep[:, None]              # context dropout: the null context is 0
                loss = md.diffusion_loss(model, x, built.schedule, "epsilon", context, generator=generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                ema.update(model, config.ema_decay)
                done += 1
                if done == n:
                    return

    bare(3)
    trainer.train(3)
    times = {"trainer": [], "bare": []}
    for _ in range(repeats):                                   # interleaved, so drifts in machine load cancel
        for name, fn in (("bare", lambda: bare(steps)), ("trainer", lambda: trainer.train(steps))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    images = steps * config.batch_size
    best = {name: images / min(values) for name, values in times.items()}
    return {"steps": steps, "repeats": repeats, "trainer_images_per_s": best["trainer"],
            "bare_images_per_s": best["bare"], "ratio": best["trainer"] / best["bare"], "target": 0.97}


def plot(rows: List[dict], path: str) -> str:
    panels = []
    for label, _, _ in SAMPLERS:
        series = []
        for name in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == name]
            series.append(Series([r["minutes"] for r in mine], [r[f"{label}_fd"] for r in mine], name, markers=True))
        floor = next((r["fd_real"] for r in rows if r.get("fd_real")), None)
        notes = [f"real vs real: {floor:.2f}"] if floor else []
        panels.append(line_plot(series, title=f"{label} (trailing), w = {GUIDANCE}", xlabel="training minutes",
                                ylabel="Fréchet distance", log_y=True, legend="outside", notes=notes))
    tile(panels, columns=1, path=path)
    return path


def fail(message: str) -> None:
    """A user error: one line on stderr, exit status 2 (as argparse does), no traceback."""
    print(f"quality_per_minute: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--combine", default="", help="also run 'base' with these variants' changes all together")
    parser.add_argument("--ddpm", default="all",
                        help="variants also measured with DDPM over all T steps at the last budget: 'all', 'none' "
                             "or comma-separated names ('combined' for the --combine run); DDPM-500 costs about 20x "
                             "the two fast samplers together")
    parser.add_argument("--budgets", default="2,4,6", help="minutes of training, comma-separated")
    parser.add_argument("--n", type=int, default=250, help="samples per measurement (default 250)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--calibrate", type=int, default=30,
                        help="timed steps for each variant's speed (three timings, the median is used)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-overhead", action="store_true", help="measure only the Trainer's overhead")
    parser.add_argument("--overhead-steps", type=int, default=60, help="steps per timed overhead repeat")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        budgets = []
    if not budgets or not all(0 < b < float("inf") for b in budgets):
        fail(f"--budgets must be positive minutes, comma-separated (like 2,4), got {args.budgets!r}")
    for option, value, least in (("--n", args.n, 2), ("--threads", args.threads, 1), ("--calibrate", args.calibrate, 1),
                                 ("--overhead-steps", args.overhead_steps, 1)):
        if value < least:
            fail(f"{option} must be at least {least}, got {value}")
    torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    for name in names + [v for v in args.combine.split(",") if v]:
        if name not in VARIANTS:
            fail(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    ddpm_names = [] if args.ddpm in ("all", "none") else [v for v in args.ddpm.split(",") if v]
    for name in ddpm_names:
        if name not in VARIANTS and name != "combined":
            fail(f"--ddpm: unknown variant {name!r}; give 'all', 'none' or names from {', '.join(VARIANTS)} "
                 f"(or 'combined')")

    overhead = trainer_overhead(args.overhead_steps)
    log(f"Trainer overhead: {overhead['ratio']:.3f}x the bare loop's images/s (target >= {overhead['target']})")
    rows = []
    if not args.only_overhead:
        classifier = feature_extractor("sprites")
        jobs = [(name, run_description(VARIANTS[name])) for name in names]
        if args.combine:
            combined = {}
            for name in args.combine.split(","):
                for section, values in VARIANTS[name].items():
                    combined.setdefault(section, {}).update(values)
            jobs.append(("combined:" + args.combine, run_description({}, combined)))
        for name, run in jobs:
            rate = steps_per_second(run, args.calibrate)
            log(f"{name}: {rate:.2f} steps/s")
            wants_ddpm = args.ddpm == "all" or name.split(":")[0] in ddpm_names
            rows += train_and_measure(name, run, budgets, rate, args.n, classifier, args.seed, ddpm=wants_ddpm)
        plot(rows, os.path.join(args.out, "quality_per_minute.png"))

    columns = [("variant", "variant"), ("minutes", "minutes"), ("steps", "steps")]
    for label, _, _ in SAMPLERS + (("ddpm", None, None),):
        columns += [(f"{label}_fd", f"{label} FD"), (f"{label}_acc", f"{label} class acc")]
    columns += [("fd_real", "real vs real FD")]
    tables = [Table("Quality against training minutes", columns, rows,
                    notes=[f"n = {args.n} guided samples (w = {GUIDANCE}) per cell; DDPM only at the last budget "
                           f"(variants: {args.ddpm})"]),
              Table("Trainer overhead", [("trainer_images_per_s", "Trainer images/s"),
                                         ("bare_images_per_s", "bare loop images/s"), ("ratio", "ratio"),
                                         ("target", "target")], [overhead])]
    md_path, _ = write_results("quality_per_minute", "Sample quality per training minute", tables,
                               {"budgets": budgets, "n": args.n, "threads": args.threads, "seed": args.seed},
                               machine=machine_info(), out_dir=args.out)
    log(f"wrote {md_path}")


if __name__ == "__main__":
    main()
