"""Sampling speed: md.sample with the sprites ContextUnet (n_feat=64, 16x16), CPU vs CUDA, six
execution modes, and the course's own sampling loop as the baseline md.sample must keep up with.

    python benchmarks/bench_sampling.py --quick                    # the CPU subset of `make bench`
    python benchmarks/bench_sampling.py --device cuda --batches 1,32,256,1024
    python benchmarks/bench_sampling.py --modes eager,compile --samplers ddim --budget 20

How a row is measured. A warm-up call of md.sample for one step (two calls where the mode compiles;
compilation and CUDA-graph capture happen there), the last of which estimates the time per step;
then `repeats` timed calls of md.sample, each stopped after the first N steps (a callback raises
after step N), N as large as the per-row time budget allows, up to every step.
ms/step = median call time / N; a full sample takes steps x ms/step, and
images/s = batch / (steps x ms/step). Where N < steps those two are extrapolated from N steps
(every step costs the same: one network call plus a few elementwise ops), and the table says so.
GFLOP/s counts the network's matmul and convolution FLOPs per step (torch.utils.flop_counter);
"% of peak" divides by the device's peak probed in the same run, in the mode's dtype: the faster of
a large matmul and a large 3x3 convolution (common.device_peaks).

The "Targets" table comes first in the report; each row says what was measured, the
limit, and whether it holds (or why it was not run). How each is measured:
  * sampler overhead: md.sample's per-step time with a do-nothing network (returns its input: the
    sampler's own elementwise work, the time tensor, the callback) divided by md.sample's per-step
    time with the real ContextUnet, both at batch 32 (`sampler_overhead`); a second estimate,
    (md.sample step - bare network forward) / md.sample step, timed interleaved, is printed beside it;
  * fp32 vs the course: the "minidiff vs the course's loop" rows, with the per-repeat spread as noise;
  * fast mode: md.sample(fast) vs the course's fp32 loop, same network, x_T, steps, batch 32; sample
    quality: fast vs fp32 from the same x_T (DDIM, eta = 0: no other noise), max / mean |difference|
    and the Fréchet distance between them in the sprite classifier's features, against the distance
    between two fp32 runs from different x_T (the noise floor) (`fast_quality`);
  * CUDA rows: read off the md.sample table where a GPU ran, else "not run".
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

if __package__ in (None, ""):                       # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minidiff as md  # noqa: E402
from benchmarks import common, course_baseline  # noqa: E402
from benchmarks.modes import MODES, fast_bf16, mode_unavailable, wrap  # noqa: E402
from minidiff.nn import ContextUnet  # noqa: E402

SAMPLERS = {"ddpm": None, "ddim": 25, "dpmpp_2m": 20}     # steps (None: every step of the schedule)
T = 500                                                    # the course's timesteps
SCHEDULE = md.NoiseSchedule.course(T)                      # the course's table: alpha_bar = its ab_t[1:]
COLUMNS = [("device", "device"), ("mode", "mode"), ("sampler", "sampler"), ("batch", "batch"),
           ("steps", "steps"), ("steps_measured", "steps timed"), ("extrapolated", "extrapolated"),
           ("ms_per_step", "ms/step"),
           ("images_per_s", "images/s"), ("sample_s", "s per sample call"), ("gflops", "GFLOP/s"),
           ("peak_percent", "% of peak"), ("cuda_speedup", "CUDA speed-up")]
BASELINE_COLUMNS = [("device", "device"), ("model", "network"), ("mode", "minidiff mode"), ("batch", "batch"),
                    ("sampler", "sampler"), ("steps_measured", "steps timed"),
                    ("minidiff_ms_per_step", "minidiff ms/step"), ("course_ms_per_step", "course ms/step"),
                    ("overhead_us_per_step", "difference us/step"), ("ratio", "minidiff / course"),
                    ("ratio_noise", "± noise"), ("speedup", "speed-up vs course")]
OVERHEAD_COLUMNS = [("device", "device"), ("batch", "batch"), ("sampler", "sampler"),
                    ("step_ms", "md.sample ms/step"), ("forward_ms", "network forward ms"),
                    ("null_step_us", "do-nothing network us/step"), ("overhead_percent", "overhead %"),
                    ("stepper_null_step_us", "Stepper loop us/step"), ("stepper_overhead_percent", "Stepper %"),
                    ("overhead_percent_forward", "(step - forward) / step %")]
QUALITY_COLUMNS = [("device", "device"), ("model", "model"), ("n", "samples"), ("sampler", "sampler"),
                   ("fast_bf16", "fast runs bf16"), ("max_abs_diff", "max |fp32 - fast|"),
                   ("mean_abs_diff", "mean |fp32 - fast|"), ("fd_fp32_vs_fast", "FD(fp32, fast)"),
                   ("fd_fp32_vs_fp32_other_seed", "FD(fp32, fp32 other x_T)"),
                   ("class_accuracy_fp32", "class acc. fp32"), ("class_accuracy_fast", "class acc. fast"),
                   ("holds", "within noise")]
TARGET_COLUMNS = [("target", "target"), ("measured", "measured"), ("limit", "limit"), ("holds", "holds"),
                  ("how", "how measured")]
REFERENCE_GFLOP = 0.301                                    # the course's ContextUnet, GFLOP/image/forward
QUICK_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "outputs", "sprites_quick", "checkpoint.pt")


class StopSampling(Exception):
    """Raised by the step callback to end md.sample after the steps being timed."""


def run_minidiff(model, schedule, sampler: str, x_T, max_steps: Optional[int] = None) -> None:
    """md.sample as a user calls it, stopped after max_steps steps (None: the whole run)."""
    def stop(info):
        if max_steps is not None and info["step"] + 1 >= max_steps:
            raise StopSampling
    spacing = "trailing" if sampler == "ddim" else "leading"   # ddim: the course's grid (course_baseline.py)
    try:
        md.sample(model, schedule, x_T.shape, sampler=sampler, steps=SAMPLERS[sampler] or schedule.T,
                  x_T=x_T, spacing=spacing, progress=False, callback=stop)
    except StopSampling:
        pass


def run_course(model, tables, sampler: str, x_T, max_steps: Optional[int] = None) -> None:
    """The course's loop for "ddpm" or "ddim" (25 steps) on the same x_T."""
    b = x_T.shape[0]
    if sampler == "ddpm":
        course_baseline.course_sample_ddpm(model, b, T, tables, device=x_T.device, x_T=x_T, max_steps=max_steps)
    else:
        course_baseline.course_sample_ddim(model, b, T, tables, n=SAMPLERS["ddim"], device=x_T.device, x_T=x_T,
                                           max_steps=max_steps)


def steps_within(budget_s: float, step_s: float, total: int, repeats: int) -> tuple[int, int]:
    """(steps per timed call, repeats) so that repeats x steps x step_s fits budget_s: at least one step
    and one repeat, at most `total` steps."""
    steps = max(1, min(total, int(budget_s / max(repeats * step_s, 1e-9))))
    if steps == 1:
        repeats = max(1, min(repeats, int(budget_s / max(step_s, 1e-9))))
    return steps, repeats


def bench_row(model, schedule, sampler: str, x_T, budget_s: float, repeats: int, warmup: int = 1) -> dict:
    """Time md.sample for one (network, sampler, batch) row; see the module docstring. The last of
    `warmup` one-step calls estimates the time per step (use 2 where the first call compiles)."""
    device, total = x_T.device, SAMPLERS[sampler] or schedule.T
    for _ in range(warmup):
        step_s = common.time_call(lambda: run_minidiff(model, schedule, sampler, x_T, 1), device)
    n, repeats = steps_within(budget_s, step_s, total, repeats)
    timing = common.measure(lambda: run_minidiff(model, schedule, sampler, x_T, n), device, warmup=0,
                            repeats=repeats)
    ms_per_step = timing.median / n * 1e3
    return {"sampler": sampler, "batch": x_T.shape[0], "steps": total, "steps_measured": n,
            "extrapolated": n < total, "repeats": repeats, "ms_per_step": ms_per_step,
            "images_per_s": x_T.shape[0] / (total * ms_per_step / 1e3), "sample_s": total * ms_per_step / 1e3,
            "times_s": timing.times}


def compare_with_course(network, sampler: str, x_T, budget_s: float, repeats: int, minidiff_model=None,
                        mode: str = "eager") -> dict:
    """md.sample vs the course's loop: same network, x_T and steps, repeats interleaved. The course always
    runs `network` in eager fp32; md.sample runs `minidiff_model` (default: `network` itself), e.g. the
    network wrapped for the "fast" mode. ratio = minidiff / course; speedup = course / minidiff;
    ratio_noise = half the spread of the per-repeat ratios (each repeat pairs one call of each loop)."""
    device, total = x_T.device, SAMPLERS[sampler] or T
    ours = network if minidiff_model is None else minidiff_model
    tables = course_baseline.course_tables(T, device=device)
    warm = common.time_call(lambda: run_course(network, tables, sampler, x_T, 2), device) / 2
    n, repeats = steps_within(budget_s / 2, warm, total, repeats)
    timings = common.interleaved({"minidiff": lambda: run_minidiff(ours, SCHEDULE, sampler, x_T, n),
                                  "course": lambda: run_course(network, tables, sampler, x_T, n)},
                                 device, warmup=1 if n * warm < 1.0 else 0, repeats=repeats)
    md_ms, course_ms = timings["minidiff"].median / n * 1e3, timings["course"].median / n * 1e3
    per_repeat = [a / b for a, b in zip(timings["minidiff"].times, timings["course"].times)]
    name = f"ContextUnet n_feat={network.n_feat}" if isinstance(network, ContextUnet) else "none (returns its input)"
    row = {"device": device.type, "model": name, "mode": mode, "batch": x_T.shape[0], "sampler": f"{sampler}-{total}",
           "steps_measured": n, "repeats": repeats, "minidiff_ms_per_step": md_ms, "course_ms_per_step": course_ms,
           "overhead_us_per_step": (md_ms - course_ms) * 1e3, "ratio": md_ms / course_ms,
           "ratio_noise": (max(per_repeat) - min(per_repeat)) / 2, "speedup": course_ms / md_ms,
           "repeat_ratios": per_repeat,
           "minidiff_times_s": timings["minidiff"].times, "course_times_s": timings["course"].times}
    common.log(f"[baseline] {row['device']} {name} {mode} {row['sampler']} batch {row['batch']}: minidiff/course = "
               f"{row['ratio']:.3f} ± {row['ratio_noise']:.3f} over {n} steps")
    return row


def sampler_overhead(network, sampler: str, x_T, budget_s: float, repeats: int) -> dict:
    """How much of an md.sample step is NOT the network, at x_T's batch (eager fp32).

    overhead_percent (the target's number) = md.sample's per-step time with `null_network` (every step
    of the run, so the sampler's own work: the time tensor, the x0/eps conversion, the update, the
    callback) / md.sample's per-step time with `network`. overhead_percent_forward = (md.sample step -
    bare network forward on the same x) / md.sample step, the two timed interleaved: a direct but
    noisier estimate (a difference of two nearly equal times; it can come out negative)."""
    device, total = x_T.device, SAMPLERS[sampler] or T
    t = torch.full((x_T.shape[0],), 0.5, device=device)
    null = common.measure(lambda: run_minidiff(null_network, SCHEDULE, sampler, x_T), device, warmup=1,
                          repeats=max(repeats, 5))
    null_step_s = null.median / total
    null_stepper = common.measure(lambda: run_stepper(null_network, SCHEDULE, sampler, x_T), device, warmup=1,
                                  repeats=max(repeats, 5))
    null_stepper_step_s = null_stepper.median / total
    warm = common.time_call(lambda: run_minidiff(network, SCHEDULE, sampler, x_T, 1), device)
    n, repeats = steps_within(budget_s / 2, warm, total, repeats)

    def forwards():
        with torch.no_grad():
            for _ in range(n):
                network(x_T, t)
    timings = common.interleaved({"step": lambda: run_minidiff(network, SCHEDULE, sampler, x_T, n),
                                  "forward": forwards}, device, warmup=0, repeats=repeats)
    step_s, forward_s = timings["step"].median / n, timings["forward"].median / n
    row = {"device": device.type, "batch": x_T.shape[0], "sampler": f"{sampler}-{total}", "steps_measured": n,
           "repeats": repeats, "step_ms": step_s * 1e3, "forward_ms": forward_s * 1e3,
           "null_step_us": null_step_s * 1e6, "overhead_percent": 100 * null_step_s / step_s,
           "overhead_percent_forward": 100 * (step_s - forward_s) / step_s,
           "stepper_null_step_us": null_stepper_step_s * 1e6,
           "stepper_overhead_percent": 100 * null_stepper_step_s / step_s,
           "step_times_s": timings["step"].times, "forward_times_s": timings["forward"].times,
           "null_times_s": null.times}
    common.log(f"[overhead] {row['device']} {row['sampler']} batch {row['batch']}: do-nothing network "
               f"{row['null_step_us']:.1f} us/step = {row['overhead_percent']:.2f}% of a {row['step_ms']:.2f} ms step; "
               f"(step - forward) / step = {row['overhead_percent_forward']:.2f}%; md.Stepper loop "
               f"{row['stepper_null_step_us']:.1f} us/step = {row['stepper_overhead_percent']:.2f}%")
    return row


def fast_quality(device, network=None, checkpoint: Optional[str] = QUICK_CHECKPOINT, n: int = 256, steps: int = 25,
                 features=None, seed: int = 0) -> dict:
    """Does the fast mode change the samples? DDIM-`steps` (eta = 0: x_T is the only randomness), n samples.

    The model: the checkpoint if the file exists (EMA weights and its own schedule), else `network`
    (random weights) on the course schedule. Samples: fp32 from x_T(seed), fast from the same x_T,
    fp32 from x_T(seed + 1); a conditional model gets the classes 0, 1, 2, ... in turn. Reports
    max / mean |fp32 - fast| of the final images (clamped to [-1, 1]) and the Fréchet distances
    FD(fp32, fast) vs FD(fp32, fp32 other x_T) in `features` (default: the sprite feature classifier,
    minidiff.metrics.feature_extractor("sprites"), cached in ~/.cache/minidiff after its first ~20 s).
    holds: FD(fp32, fast) <= the noise floor FD(fp32, fp32 other x_T)."""
    import time

    device = torch.device(device)
    start = time.perf_counter()
    if checkpoint and os.path.isfile(checkpoint):
        from minidiff.checkpoint import load_pipeline
        model, schedule = load_pipeline(checkpoint, device=device)
        source = f"{os.path.relpath(checkpoint)} ({type(model).__name__} n_feat={getattr(model, 'n_feat', '?')}, EMA)"
    else:
        model, schedule = network, SCHEDULE
        source = (f"random weights ({type(network).__name__} n_feat={getattr(network, 'n_feat', '?')}); "
                  f"no checkpoint at {checkpoint}" if checkpoint else "random weights")
    shape = (n, model.in_channels, model.height, model.height) if hasattr(model, "height") else (n, 3, 16, 16)
    class_ids = torch.arange(n) % getattr(model, "n_cfeat", 1)
    context = (torch.nn.functional.one_hot(class_ids, model.n_cfeat).float().to(device)
               if getattr(model, "n_cfeat", None) else None)
    x_a = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    x_b = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    fast_model = wrap(model, "fast", x_a, torch.full((n,), 0.5, device=device), context)

    def draw(m, x_T):
        out = md.sample(m, schedule, shape, sampler="ddim", steps=steps, x_T=x_T, context=context, progress=False)
        return out.float().clamp(-1, 1).cpu()
    fp32_a, fast_a, fp32_b = draw(model, x_a), draw(fast_model, x_a), draw(model, x_b)
    feature_name = "given features"
    classifier = None
    if features is None:
        import minidiff.metrics as mm
        classifier = mm.feature_extractor("sprites", device="cpu", progress=False)
        features, feature_name = classifier.features, "sprite feature classifier"
    from minidiff.metrics import frechet_distance
    f_a, f_fast, f_b = features(fp32_a), features(fast_a), features(fp32_b)
    diff = (fp32_a - fast_a).abs()
    row = {"device": device.type, "model": source, "n": n, "sampler": f"ddim-{steps}",
           "fast_bf16": fast_bf16(device)[0], "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "fd_fp32_vs_fast": frechet_distance(f_a, f_fast), "fd_fp32_vs_fp32_other_seed": frechet_distance(f_a, f_b),
           "features": feature_name}
    if classifier is not None and context is not None:
        from minidiff.metrics import class_accuracy
        row["class_accuracy_fp32"] = class_accuracy(classifier, fp32_a, class_ids)
        row["class_accuracy_fast"] = class_accuracy(classifier, fast_a, class_ids)
    row["holds"] = row["fd_fp32_vs_fast"] <= row["fd_fp32_vs_fp32_other_seed"]
    row["seconds"] = time.perf_counter() - start
    common.log(f"[quality] {row['device']} fast vs fp32, {n} samples {row['sampler']} of {source}: max |diff| "
               f"{row['max_abs_diff']:.3g}, mean {row['mean_abs_diff']:.3g}; "
               f"FD(fp32, fast) {row['fd_fp32_vs_fast']:.4g} "
               f"vs FD(fp32, fp32 other x_T) {row['fd_fp32_vs_fp32_other_seed']:.4g} ({row['seconds']:.1f} s)")
    return row


def run_stepper(model, schedule, sampler: str, x_T) -> None:
    """The same run as run_minidiff, written by hand over md.Stepper (the courses' loop style)."""
    spacing = "trailing" if sampler == "ddim" else "leading"
    stepper = md.Stepper(schedule, sampler, steps=SAMPLERS[sampler] or schedule.T, spacing=spacing)
    x = x_T * stepper.init_noise_sigma
    with torch.no_grad():
        for i in stepper.timesteps:
            x = stepper.step(model(x, stepper.model_time(i, x)), i, x)


def null_network(x, t, context=None):
    """A network that costs nothing (returns its input): what is left is the sampler's own per-step cost."""
    return x


def quick_skip(device: str, batch: int, mode: str, sampler: str) -> Optional[str]:
    """The --quick plan on the CPU: batches >= 256 take seconds per step there, so they get one
    sampler (ddim: every sampler's step is one network call) and batch 1024 only eager fp32."""
    if device != "cpu":
        return None
    if batch >= 256 and sampler != "ddim":
        return "--quick on CPU: batch >= 256 timed with ddim only"
    if batch >= 1024 and mode != "eager":
        return "--quick on CPU: batch 1024 timed in eager mode only"
    return None


def default_modes(device: str, quick: bool) -> List[str]:
    """Every mode; with --quick none that compiles (tens of seconds per shape): eager, bf16,
    channels_last and fast, plus CUDA graphs on a GPU (capturing is quick)."""
    if not quick:
        return list(MODES)
    return ["eager", "bf16", "channels_last", "fast"] + (["cuda_graphs"] if device == "cuda" else [])


def peak_for(peaks: dict, mode: str, device: str) -> tuple[str, float]:
    """The peak a mode is held to: bf16 for autocast rows; on CUDA with cuDNN's TF32 (the
    default for convolutions) TF32, else fp32."""
    if mode == "bf16" or (mode == "fast" and fast_bf16(device)[0]):
        return "bf16", peaks["bf16"]
    if device == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32", peaks["tf32"]
    return "fp32", peaks["fp32"]


def run(devices=("cpu", "cuda"), batches=(1, 32, 256, 1024), modes=None, samplers=tuple(SAMPLERS), n_feat: int = 64,
        budget_s: float = 10.0, repeats: int = 3, quick: bool = False, baseline: bool = True,
        baseline_batches=(1, 32), out_dir: Optional[str] = None, seed: int = 0, peak_n: Optional[int] = None,
        target_batch: int = 32, quality: bool = True, quality_n: int = 256, quality_steps: int = 25,
        quality_checkpoint: Optional[str] = QUICK_CHECKPOINT, quality_features=None) -> dict:
    """Run the benchmark on every device present; write results/bench_sampling.{md,json}; return
    {"rows", "baseline", "overhead", "quality", "targets", "notes", "md", "json"}.

    target_batch: the batch of the speed targets (sampler overhead, the fast mode vs the course).
    quality*: the fast-mode sample-quality check (fast_quality); quality_features replaces the sprite
    feature classifier (the tests)."""
    devices, notes = common.available_devices(devices)
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"samplers must be among {tuple(SAMPLERS)}, got {unknown}")
    rows, baseline_rows, overhead_rows, quality_rows, skipped, peaks, modes_run = [], [], [], [], [], {}, {}
    fast_notes, flops_per_image = {}, None
    for device in devices:
        modes_run[device] = list(modes or default_modes(device, quick))
        for mode in modes_run[device]:
            reason = mode_unavailable(mode, device)
            if reason:
                skipped.append(f"{device} {mode}: {reason}")
        modes_run[device] = [m for m in modes_run[device] if not mode_unavailable(m, device)]
        fast_notes[device] = fast_bf16(device)[1]
        uses_bf16 = "bf16" in modes_run[device] or (fast_bf16(device)[0] and (baseline or "fast" in modes_run[device]))
        peaks[device] = common.device_peaks(device, uses_bf16, quick, peak_n)
        common.log(f"[sampling] {device} peaks GFLOP/s: "
                   + ", ".join(f"{k} {v:.1f}" for k, v in peaks[device].items()))
        common.log(f"[sampling] {device} fast mode: {fast_notes[device]}")
        torch.manual_seed(seed)
        network = ContextUnet(in_channels=3, n_feat=n_feat, n_cfeat=5, height=16).to(device).eval()
        if flops_per_image is None:
            flops_per_image = common.forward_flops(network, torch.empty(1, 3, 16, 16, device="meta"),
                                                   torch.empty(1, device="meta"))
        x_Ts = {b: torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).to(device)
                for b in sorted(set(batches) | set(baseline_batches if baseline else ()) | {target_batch})}
        if baseline:          # first, before other modes have run: they change allocator and cache state
            for batch in baseline_batches:
                baseline_rows += [compare_with_course(network, sampler, x_Ts[batch], budget_s * 4, max(repeats, 5))
                                  for sampler in ("ddpm", "ddim")]
            baseline_rows += [compare_with_course(null_network, sampler, x_Ts[min(x_Ts)][:1], 60.0, max(repeats, 3))
                              for sampler in ("ddpm", "ddim")]          # each loop's own per-step cost
            overhead_rows += [sampler_overhead(network, sampler, x_Ts[target_batch], budget_s, max(repeats, 3))
                              for sampler in ("ddpm", "ddim")]
            x = x_Ts[target_batch]                                      # then fast (bf16) vs the course's fp32 loop
            fast = wrap(network, "fast", x, torch.full((target_batch,), 0.5, device=device))
            baseline_rows += [compare_with_course(network, sampler, x, budget_s * 4, max(repeats, 5), fast, "fast")
                              for sampler in ("ddpm", "ddim")]
        for batch in batches:
            rows += bench_batch(network, x_Ts[batch], modes_run[device], samplers, peaks[device], budget_s, repeats,
                                quick, skipped)
        if quality:
            quality_rows.append(fast_quality(device, network, quality_checkpoint, quality_n, quality_steps,
                                             quality_features, seed))
    common.speedup_vs_cpu(rows, ("mode", "sampler", "batch"), "ms_per_step")
    target_rows = targets(devices, rows, baseline_rows, overhead_rows, quality_rows, flops_per_image, n_feat,
                          fast_notes, target_batch, baseline, quality)
    settings = {"batches": list(batches), "modes": modes_run, "samplers": {s: SAMPLERS[s] or T for s in samplers},
                "model": f"ContextUnet(in_channels=3, n_feat={n_feat}, n_cfeat=5, height=16)", "T": T,
                "budget_s_per_row": budget_s, "repeats": repeats, "quick": quick, "seed": seed,
                "target_batch": target_batch, "fast_mode": fast_notes, "quality_n": quality_n,
                "quality_checkpoint": quality_checkpoint, "flops_per_image_forward": flops_per_image,
                "peaks_gflops": peaks}
    return write(rows, baseline_rows, notes + [f"Not run: {s}" for s in skipped], peaks, settings, out_dir,
                 overhead_rows, quality_rows, target_rows)


def _pct(value: float) -> str:
    return f"{value:.2f}%" if abs(value) < 10 else f"{value:.1f}%"


class TargetTable(list):
    """The rows of the Targets table: target, measured, limit, holds ("yes", "no ..." or "not run: why"), how."""

    def add(self, target, measured, limit, holds, how, value=None, limit_value=None):
        if isinstance(holds, bool):
            holds = "yes" if holds else "no"
        self.append({"target": target, "measured": measured, "limit": limit, "holds": holds, "how": how,
                     "value": value, "limit_value": limit_value})


def targets(devices, rows, baseline_rows, overhead_rows, quality_rows, flops_per_image, n_feat, fast_notes,
            target_batch, baseline=True, quality=True) -> List[dict]:
    """The speed targets, one row each (see TargetTable): the CPU ones, the GPU ones, the network's FLOPs."""
    table = TargetTable()
    for device in [d for d in devices if d == "cpu"] or ["cpu"]:
        ran = device in devices
        why = "not run: " + ("CPU not requested" if not ran else "--no-baseline (the course comparison was skipped)")
        overhead_targets(table, device, overhead_rows, target_batch, why)
        fp32 = course_loop_targets(table, device, baseline_rows, why)
        fast_mode_targets(table, device, baseline_rows, fp32, fast_notes, target_batch, why)
        quality_target(table, device, quality_rows, quality)
    gpu_targets(table, devices, [r for r in rows if r["device"] == "cuda"])
    gflop = flops_per_image / 1e9 if flops_per_image else None
    table.add(f"reference: ContextUnet n_feat={n_feat} GFLOP per image per forward"
              + ("" if n_feat == 64 else " (not the course's n_feat=64)"),
              f"{gflop:.3f} GFLOP" if gflop is not None else "-", f"the course network: {REFERENCE_GFLOP} GFLOP",
              "- (reference)", "torch.utils.flop_counter on the meta device, batch 1 (matmuls and convolutions, "
              "2 FLOPs per multiply-add; elementwise work not counted)", gflop, REFERENCE_GFLOP)
    return list(table)


def overhead_targets(table: TargetTable, device, overhead_rows, target_batch, why) -> None:
    """1. The sampler's (and the Stepper loop's) time outside the network: <= 5% of a step."""
    for row in [r for r in overhead_rows if r["device"] == device] or [None]:
        if row is None:
            table.add(f"{device}: sampler overhead outside the network, batch {target_batch}", "-",
                      "<= 5% of the step", why, "-")
            continue
        table.add(f"{device}: sampler overhead outside the network, {row['sampler']} batch {row['batch']}",
                  f"{_pct(row['overhead_percent'])} ({row['null_step_us']:.1f} us of {row['step_ms']:.2f} ms/step; "
                  f"(step - forward) / step: {_pct(row['overhead_percent_forward'])})",
                  "<= 5% of the step", row["overhead_percent"] <= 5.0,
                  "md.sample per-step time with a do-nothing network / with the real ContextUnet, same batch; "
                  "the second number: md.sample step vs the bare network forward, interleaved (noisier)",
                  row["overhead_percent"], 5.0)
        table.add(f"{device}: md.Stepper loop overhead outside the network, {row['sampler']} batch {row['batch']}",
                  f"{_pct(row['stepper_overhead_percent'])} ({row['stepper_null_step_us']:.1f} us of "
                  f"{row['step_ms']:.2f} ms/step)", "<= 5% of the step", row["stepper_overhead_percent"] <= 5.0,
                  "a hand-written loop over md.Stepper with a do-nothing network / md.sample's step with the real "
                  "ContextUnet, same batch", row["stepper_overhead_percent"], 5.0)


def course_loop_targets(table: TargetTable, device, baseline_rows, why) -> List[dict]:
    """2. fp32 md.sample no slower than the course's own loop; returns those fp32 rows."""
    fp32 = [r for r in baseline_rows if r["device"] == device and r["mode"] == "eager"
            and r["model"].startswith("ContextUnet")]
    if not fp32:
        table.add(f"{device}: fp32 md.sample >= 1.0x the course loop", "-", "minidiff / course <= 1.0", why, "-")
    for r in fp32:
        ok = r["ratio"] <= 1.0
        holds = "yes" if ok else ("no (within the noise)" if r["ratio"] - r["ratio_noise"] <= 1.0 else "no")
        table.add(f"{device}: fp32 md.sample vs the course loop, {r['sampler']} batch {r['batch']}",
                  f"minidiff / course = {r['ratio']:.3f} ± {r['ratio_noise']:.3f}", "<= 1.0", holds,
                  "'minidiff vs the course's loop' row: same network, x_T, steps, interleaved repeats; ± = half the "
                  "spread of the per-repeat ratios", r["ratio"], 1.0)
    return fp32


def fast_mode_targets(table: TargetTable, device, baseline_rows, fp32, fast_notes, target_batch, why) -> None:
    """3. The fast mode at least 1.8x the course's fp32 loop."""
    fast_rows = [r for r in baseline_rows if r["device"] == device and r["mode"] == "fast"]
    if not fast_rows:
        table.add(f"{device}: fast mode >= 1.8x the course loop (fp32), batch {target_batch}", "-",
                  "course / minidiff >= 1.8", why, "-")
    for r in fast_rows:
        clean = next((b for b in fp32 if b["sampler"] == r["sampler"] and b["batch"] == r["batch"]), None)
        clean_speedup = clean["course_ms_per_step"] / r["minidiff_ms_per_step"] if clean else None
        r["speedup_vs_fp32_row_course"] = clean_speedup
        value = min(r["speedup"], clean_speedup) if clean_speedup else r["speedup"]
        measured = f"{value:.2f}x (interleaved: {r['speedup']:.2f}x"
        measured += f"; vs the fp32 row's course time: {clean_speedup:.2f}x)" if clean_speedup else ")"
        table.add(f"{device}: fast mode vs the course loop (fp32), {r['sampler']} batch {r['batch']}", measured,
                  ">= 1.8x", value >= 1.8,
                  f"md.sample with modes.wrap(net, 'fast') [{fast_notes.get(device, '?')}] vs the course's fp32 "
                  "loop, same network, x_T, steps; the smaller of the interleaved speed-up and the one against the "
                  "course time measured before any bf16 ran", value, 1.8)


def quality_target(table: TargetTable, device, quality_rows, quality) -> None:
    """4. The fast mode leaves sample quality unchanged: FD(fp32, fast) within the noise floor."""
    q = next((r for r in quality_rows if r["device"] == device), None)
    if q is None:
        table.add(f"{device}: fast mode leaves sample quality unchanged", "-", "FD(fp32, fast) <= FD noise floor",
                  "not run: " + ("--no-quality" if not quality else "CPU not requested"), "-")
        return
    extra = ""
    if q.get("class_accuracy_fp32") is not None:
        extra = f"; class accuracy fp32 {q['class_accuracy_fp32']:.3f}, fast {q['class_accuracy_fast']:.3f}"
    table.add(f"{device}: fast mode leaves sample quality unchanged ({q['n']} samples, {q['sampler']})",
              f"FD(fp32, fast) {q['fd_fp32_vs_fast']:.4g} vs FD(fp32, fp32 other x_T) "
              f"{q['fd_fp32_vs_fp32_other_seed']:.4g}; max |diff| {q['max_abs_diff']:.3g}, "
              f"mean |diff| {q['mean_abs_diff']:.3g}{extra}",
              "FD(fp32, fast) <= the noise floor", bool(q["holds"]),
              f"same x_T and (DDIM eta = 0) no other noise; model: {q['model']}; features: {q['features']}",
              q["fd_fp32_vs_fast"], q["fd_fp32_vs_fp32_other_seed"])


def gpu_targets(table: TargetTable, devices, cuda: List[dict]) -> None:
    """5. The GPU targets, from the CUDA rows of the md.sample table (not run without a GPU)."""
    no_gpu = "not run: no GPU on this machine"
    gpu_name = torch.cuda.get_device_name(0) if "cuda" in devices else None
    on = "" if gpu_name is None or "H100" in gpu_name else f" (measured on {gpu_name}, not an H100)"

    def gpu_target(target, limit, pick, fmt, ok, how, limit_value):
        if "cuda" not in devices:
            return table.add(target, "-", limit, no_gpu, how, None, limit_value)
        best = pick()
        if best is None:
            return table.add(target, "-", limit, "not run: no such CUDA row (see --batches / --samplers / --modes)",
                             how, None, limit_value)
        value, row = best
        table.add(target, fmt(value, row), limit, ("yes" if ok(value) else "no") + on, how, value, limit_value)

    def best(filter_, key, higher):
        found = [(r[key], r) for r in cuda if filter_(r)]
        return (max if higher else min)(found, key=lambda vr: vr[0]) if found else None

    gpu_target("H100: DDIM-25, 32 sprites, one md.sample call", "<= 5 ms",
               lambda: best(lambda r: r["sampler"] == "ddim" and r["batch"] == 32, "sample_s", False),
               lambda v, r: f"{v * 1e3:.2f} ms ({r['mode']})", lambda v: v <= 5e-3,
               "the fastest CUDA ddim batch-32 row of the md.sample table (s per sample call)", 5e-3)
    gpu_target("H100: 1024 sprites, bf16, DDIM-25", ">= 20,000 images/s",
               lambda: best(lambda r: r["sampler"] == "ddim" and r["batch"] == 1024 and r.get("peak_kind") == "bf16",
                            "images_per_s", True),
               lambda v, r: f"{v:,.0f} images/s ({r['mode']})", lambda v: v >= 20000,
               "the fastest CUDA ddim batch-1024 bf16 row (bf16 or fast mode) of the md.sample table", 20000)
    every_row_has_peak = cuda and all(r.get("peak_percent") is not None for r in cuda)
    gpu_target("H100: fraction of peak printed on every GPU row", "every CUDA row",
               lambda: (min(r["peak_percent"] for r in cuda), None) if every_row_has_peak else None,
               lambda v, r: f"{len(cuda)} rows, lowest {v:.1f}% of peak", lambda v: True,
               "'% of peak' column of the CUDA rows", None)
    table.add("H100: the course preset trains in <= 3 minutes", "-", "<= 3 min",
              no_gpu if "cuda" not in devices else "not run: `make bench` does not train the preset; time "
              "`python -m minidiff train --preset course` on the GPU", "training, not sampling: outside this benchmark")


def bench_batch(network, x_T, modes, samplers, peaks, budget_s, repeats, quick, skipped) -> List[dict]:
    """The md.sample rows of one batch size: every mode x sampler (less the --quick plan's skips)."""
    device, batch = x_T.device.type, x_T.shape[0]
    meta = (torch.empty(batch, 3, 16, 16, device="meta"), torch.empty(batch, device="meta"))
    flops = common.forward_flops(network, *meta)                          # one network call per step
    rows = []
    for mode in modes:
        model = wrap(network, mode, x_T, torch.full((batch,), 0.5, device=device))
        for sampler in samplers:
            reason = quick_skip(device, batch, mode, sampler) if quick else None
            if reason:
                skipped.append(f"{device} {mode} {sampler} batch {batch}: {reason}")
                continue
            warmup = 2 if mode in ("compile", "compile_cudagraphs") else 1
            row = {"device": device, "mode": mode,
                   **bench_row(model, SCHEDULE, sampler, x_T, budget_s, repeats, warmup)}
            kind, peak = peak_for(peaks, mode, device)
            row.update(gflop_per_step=flops / 1e9, gflops=flops / (row["ms_per_step"] / 1e3) / 1e9,
                       peak_kind=kind, peak_gflops=peak)
            row["peak_percent"] = 100 * row["gflops"] / peak
            rows.append(row)
            common.log(f"[sampling] {device} {mode:>13} {sampler:>8} batch {batch:>4}: "
                       f"{row['ms_per_step']:.2f} ms/step over {row['steps_measured']} steps, "
                       f"{row['images_per_s']:.1f} images/s")
    return rows


def write(rows, baseline_rows, notes, peaks, settings, out_dir, overhead_rows=(), quality_rows=(),
          target_rows=()) -> dict:
    target_table = common.Table("Targets", TARGET_COLUMNS, list(target_rows), notes=[
        "The speed targets. holds: yes / no / not run (why). Speed numbers on a shared CPU move by several per cent "
        "between runs: read the ± noise and the load average above.",
        f"Speed rows: the course config, ContextUnet n_feat={settings['model'].split('n_feat=')[1].split(',')[0]}, "
        "random weights. Fast-mode quality: the model named in its row (the quick preset's trained checkpoint, "
        "n_feat=32, when outputs/sprites_quick/checkpoint.pt exists).",
        "Fast mode: " + "; ".join(f"{d}: {note}" for d, note in settings.get("fast_mode", {}).items())])
    table = common.Table("md.sample", COLUMNS, rows, notes=[
        "ms/step: median over the timed calls of (call time / steps timed); each call is md.sample stopped after "
        "'steps timed' steps. Where 'steps timed' < steps, images/s = batch / (steps x ms/step) and "
        "'s per sample call' = steps x ms/step are EXTRAPOLATED from those steps.",
        "GFLOP/s: the network's matmul/conv FLOPs per step (torch.utils.flop_counter) / time per step; "
        "elementwise work is not counted.",
        "% of peak: against the device's peak probed in the same run, the faster of a large matmul and a large 3x3 "
        "convolution in the mode's dtype (fp32 rows: fp32 on CPU, TF32 on CUDA when cuDNN TF32 is on; bf16 rows: "
        "bf16). The matmul alone understates a CPU whose BLAS and convolution libraries differ in speed.",
        "Peak probes (GFLOP/s): " + "; ".join(f"{d}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
                                               for d, p in peaks.items()),
        "CUDA speed-up: the CPU row's ms/step / the CUDA row's, same mode, sampler and batch."])
    ratio_notes = ["The course's sampling loop as published (benchmarks/course_baseline.py) vs md.sample on the "
                   "same network, x_T and steps, eager fp32, repeats interleaved. Target on CPU: "
                   "ratio <= 1.0, "
                   "read with its ± noise (half the spread of the per-repeat ratios) in the Targets table; rows "
                   "above 1.05 are flagged ABOVE TARGET below.",
                   "ddim: md.sample(spacing='trailing'), the course's grid. The 'none' network isolates each "
                   "loop's own per-step cost.",
                   "Measured first, before the other modes run. On a CPU the network rows' ratio still moves by "
                   "several per cent between runs with allocator and cache state (after a bf16 run in the same "
                   "process we saw the course's loop 13% slower on identical network calls); the 'none' rows "
                   "give the sampler-only difference in us/step, which is what the code controls."]
    for row in baseline_rows:
        if row["device"] == "cpu" and row["model"].startswith("ContextUnet") and row["mode"] == "eager" \
                and row["ratio"] > 1.05:
            ratio_notes.append(f"ABOVE TARGET: cpu {row['sampler']} batch {row['batch']}: ratio {row['ratio']:.3f}")
    ratio_notes.append("mode fast: md.sample runs the network wrapped by modes.wrap(net, 'fast') (channels_last + "
                       "bf16 autocast where the device has fast bf16), the course's loop the same network in fp32; "
                       "measured after the fp32 rows. speed-up = course / minidiff.")
    baseline_table = common.Table("minidiff vs the course's loop", BASELINE_COLUMNS, baseline_rows, ratio_notes)
    overhead_table = common.Table("Sampler overhead outside the network", OVERHEAD_COLUMNS, list(overhead_rows), [
        "overhead % = md.sample's per-step time with a do-nothing network (returns its input; every step of the run) "
        "/ its per-step time with the ContextUnet. The last column times md.sample steps against bare network "
        "forwards on the same x (interleaved): a difference of two nearly equal times, so noisier."])
    quality_table = common.Table("Fast mode vs fp32: sample quality", QUALITY_COLUMNS, list(quality_rows), [
        "Same x_T, DDIM (eta = 0: no other noise). |diff|: final images clamped to [-1, 1]. FD: Fréchet distance "
        "in the features named; the noise floor is FD between two fp32 runs from different x_T at the same n."])
    all_notes = list(notes)
    tables = ([target_table] if target_rows else []) + [table] + ([baseline_table] if baseline_rows else [])
    tables += ([overhead_table] if overhead_rows else []) + ([quality_table] if quality_rows else [])
    md_path, json_path = common.write_results("bench_sampling", "Sampling speed: md.sample with ContextUnet",
                                              tables, {**settings, "peaks_gflops": peaks}, all_notes,
                                              out_dir=out_dir)
    common.log(f"[sampling] wrote {md_path} and {json_path}")
    return {"rows": rows, "baseline": baseline_rows, "overhead": list(overhead_rows), "quality": list(quality_rows),
            "targets": list(target_rows), "notes": all_notes, "md": md_path, "json": json_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped where absent")
    parser.add_argument("--batches", default="1,32,256,1024")
    parser.add_argument("--modes", default=None, help=f"comma list of {MODES}; default all that the device runs "
                                                      "(--quick: no compiled modes)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--n-feat", type=int, default=64)
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed work per row (10; 1.5 --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the course-loop comparison (and the "
                        "overhead and fast-mode targets measured with it)")
    parser.add_argument("--target-batch", type=int, default=32, help="batch of the overhead and fast-mode targets")
    parser.add_argument("--no-quality", action="store_true", help="skip the fast-mode sample-quality check")
    parser.add_argument("--quality-n", type=int, default=256, help="samples per run in the quality check")
    parser.add_argument("--quality-checkpoint", default=QUICK_CHECKPOINT,
                        help="model for the quality check (random weights where the file is missing)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="the CPU subset of `make bench` (about 2 minutes)")
    parser.add_argument("--out", default=None, help=f"output folder (default {common.RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(devices=common.parse_list(args.device), batches=common.parse_list(args.batches, int),
        modes=common.parse_list(args.modes) if args.modes else None, samplers=common.parse_list(args.samplers),
        n_feat=args.n_feat, budget_s=args.budget or (1.5 if args.quick else 10.0), repeats=args.repeats,
        quick=args.quick, baseline=not args.no_baseline, out_dir=args.out, target_batch=args.target_batch,
        quality=not args.no_quality, quality_n=args.quality_n, quality_checkpoint=args.quality_checkpoint)


if __name__ == "__main__":
    main()
