"""Sprites in 1 to 8 network calls: progressive distillation, measured against its teacher.

Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models". A teacher samples with
2N deterministic DDIM steps; a student, started from the teacher's weights, learns to take ONE step where the
teacher took two (minidiff/distill.py has the target and its equation). Then the student becomes the teacher
and N halves again: 16 -> 8 -> 4 -> 2 -> 1. Each round is the previous lesson's DDIM step, learned in one call.

This page builds every part: the sprites, the teacher (the course's ContextUnet trained to predict v, as in the
paper: a student predicting eps cannot take the last steps, where x0 = (x - sigma eps) / alpha divides by
alpha ~ 0), the distillation rounds through the same Trainer, and the measurements: Fréchet distance and class
accuracy (minidiff.metrics, guided samples, w = 2, as benchmarks/quality_vs_steps.py measures) of the teacher's
DDPM over every step, of the teacher's DDIM and DPM-Solver++(2M) with as many calls as each student (trailing
grid), and of each student.

Run:  python examples/few_step.py --preset smoke     # seconds: runs end to end (the numbers mean nothing)
      python examples/few_step.py --preset quick     # a small teacher (3,000 steps) and four rounds of 600
      python examples/few_step.py --preset full      # the course-sized model, longer rounds (hours on a CPU)
      python examples/few_step.py --preset full --teacher runs/v/checkpoint.pt   # distil a v-prediction checkpoint

Writes: teacher_vs_student.png (per class, the teacher's DDIM and the student at 8, 4, 2 and 1 calls),
quality.png (Fréchet distance against network calls), few_step.md (the table), student_<N>/ (each student as
a pretrained folder that `python -m minidiff sample --checkpoint student_<N>` samples in its N steps).
"""

from __future__ import annotations

import json
import os
import time

import torch
from _common import Timer, parse_args, wrote

import minidiff as md
from minidiff.data import CLASS_NAMES, ProceduralSprites
from minidiff.distill import SPACING, progressive_distillation
from minidiff.imaging import Series, line_plot, save_class_grid

GUIDANCE = 2.0                      # the teacher's guidance, baked into every student (quality_vs_steps: w = 2)
PREDICTION = "v_prediction"

PRESETS = {
    "smoke": {"n_feat": 8, "data": 64, "teacher": {"steps": 6, "batch_size": 8, "lr": 1e-3},
              "teacher_steps": 8, "round": {"steps": 2, "batch_size": 8, "lr": 1e-4}, "eval_n": 0, "per_class": 2},
    "quick": {"n_feat": 32, "data": 8000, "teacher": {"steps": 3000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100},
              "teacher_steps": 16, "round": {"steps": 600, "batch_size": 64, "lr": 1e-4}, "eval_n": 250,
              "per_class": 6},
    "full": {"n_feat": 64, "data": 89400, "teacher": {"steps": 12000, "batch_size": 100, "lr": 1e-3,
                                                      "warmup_steps": 200},
             "teacher_steps": 32, "round": {"steps": 4000, "batch_size": 100, "lr": 1e-4}, "eval_n": 500,
             "per_class": 8},
}


def add_arguments(parser):
    parser.add_argument("--teacher", help="a checkpoint of a ContextUnet sprites model to distil (default: train one)")


def teacher_model(args, preset, data, schedule):
    """The teacher: loaded from --teacher, or the course's ContextUnet trained here to predict v."""
    if args.teacher:
        checkpoint = md.load_checkpoint(args.teacher)
        prediction = (checkpoint.get("train_config") or {}).get("prediction_type", "epsilon")
        model, schedule = md.load_pipeline(args.teacher, device=args.device)
        return model, schedule, prediction, checkpoint["model"]["kwargs"]
    sizes = {"in_channels": 3, "n_feat": preset["n_feat"], "n_cfeat": len(CLASS_NAMES), "height": 16}
    model = md.nn.ContextUnet(**sizes)
    config = md.TrainConfig(**preset["teacher"], decay="linear", ema_decay=0.995, prediction_type=PREDICTION,
                            seed=args.seed, device=str(args.device), out_dir=os.path.join(args.out, "teacher"),
                            checkpoint_every=500)
    with Timer() as timer:
        trainer = md.Trainer(model, data, config, schedule=schedule, model_kwargs=sizes).fit()
    print(f"teacher: {trainer.step} steps in {timer.seconds:.0f} s")
    return trainer.ema.model, schedule, PREDICTION, sizes


def class_samples(model, schedule, steps, sampler, guidance, per_class, seed, device, prediction):
    """[K, per_class, 3, 16, 16]: the same x_T for every model, one row per class."""
    k = len(CLASS_NAMES)
    context = torch.eye(k).repeat_interleave(per_class, 0).to(device)          # one-hot, class-major
    x_T = torch.randn(k * per_class, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).to(device)
    x = md.sample(model, schedule, x_T.shape, sampler, steps=steps, spacing=SPACING if sampler == "ddim" else "leading",
                  context=context, guidance_scale=guidance, prediction_type=prediction, x_T=x_T, progress=False)
    return x.cpu().view(k, per_class, 3, 16, 16)


def measure(model, schedule, steps, sampler, guidance, n, seed, device, prediction):
    """md.metrics.evaluate's dict (fd, class_accuracy, ...); DDIM and DPM-Solver++ on the trailing grid."""
    return md.metrics.evaluate(model, schedule, n=n, sampler=sampler, steps=steps,
                               spacing="leading" if sampler == "ddpm" else SPACING, guidance_scale=guidance,
                               seed=seed, device=device, prediction_type=prediction)


def main(argv=None):
    args = parse_args(__doc__, PRESETS, argv, add_arguments=add_arguments)
    preset, device = PRESETS[args.preset], args.device
    data = ProceduralSprites(preset["data"], seed=0)                          # images [3, 16, 16] in [-1, 1], class
    schedule = md.NoiseSchedule.course()                                      # T = 500, the sprites course's table
    teacher, schedule, prediction, sizes = teacher_model(args, preset, data, schedule)
    teacher.to(device).eval()

    # The rounds: N = teacher_steps / 2, ..., 1. Each student copies its teacher and trains with the same Trainer.
    round_config = md.TrainConfig(**preset["round"], decay="linear", ema_decay=0.99, seed=args.seed,
                                  device=str(device), out_dir=os.path.join(args.out, "rounds"), log_every=50)
    with Timer() as timer:
        rounds = progressive_distillation(teacher, schedule, data, round_config, preset["teacher_steps"],
                                          final_steps=1, prediction_type=prediction, guidance_scale=GUIDANCE,
                                          model_kwargs=sizes,
                                          on_round=lambda r: print(f"round: {r.steps} steps, {r.seconds:.0f} s, "
                                                                   f"final loss {r.history[-1][1]:.4g}"))
    shown = [r for r in rounds if r.steps <= 8]
    for r in rounds:                                                           # share every student
        folder = os.path.join(args.out, f"student_{r.steps}")
        md.save_pretrained(r.model, schedule, folder, model_kwargs=sizes, prediction_type=prediction,
                           class_names=list(CLASS_NAMES),
                           sampling={"sampler": "ddim", "steps": r.steps, "spacing": SPACING})

    # Pictures: the teacher's DDIM at N calls above the N-step student, for N = 8, 4, 2, 1 (classes left to right).
    rows, labels = [], []
    for r in shown:
        rows.append(class_samples(teacher, schedule, r.steps, "ddim", GUIDANCE, preset["per_class"], args.seed,
                                  device, prediction))
        rows.append(class_samples(r.model, schedule, r.steps, "ddim", None, preset["per_class"], args.seed, device,
                                  prediction))
        labels += [f"teacher DDIM {r.steps}", f"student {r.steps}"]
    grid = torch.stack([row.flatten(0, 1) for row in rows])      # [rows, classes x per_class, 3, 16, 16]
    save_class_grid(grid, labels, os.path.join(args.out, "teacher_vs_student.png"), scale=3)

    # Numbers: the teacher's DDPM over every step, and teacher vs student at every student's call count.
    lines = ["| network calls | teacher DDIM FD | teacher DPM-Solver++(2M) FD | student FD | student / teacher DDPM | "
             "student class acc | round training s |", "|---|---|---|---|---|---|---|"]
    results = {"preset": args.preset, "guidance": GUIDANCE, "rounds": []}
    if preset["eval_n"]:
        n = preset["eval_n"]
        ddpm = measure(teacher, schedule, schedule.T, "ddpm", GUIDANCE, n, args.seed, device, prediction)
        results["teacher_ddpm"] = ddpm
        for r in rounds:
            ddim = measure(teacher, schedule, r.steps, "ddim", GUIDANCE, n, args.seed, device, prediction)
            dpm = measure(teacher, schedule, r.steps, "dpmpp_2m", GUIDANCE, n, args.seed, device, prediction)
            student = measure(r.model, schedule, r.steps, "ddim", None, n, args.seed, device, prediction)
            results["rounds"].append({"steps": r.steps, "seconds": r.seconds, "teacher_ddim": ddim,
                                      "teacher_dpmpp_2m": dpm, "student": student})
            lines.append(f"| {r.steps} | {ddim['fd']:.2f} | {dpm['fd']:.2f} | {student['fd']:.2f} | "
                         f"{student['fd'] / ddpm['fd']:.2f}x | {student['class_accuracy']:.3f} | {r.seconds:.0f} |")
        lines.append(f"\nTeacher DDPM over all {schedule.T} steps: FD {ddpm['fd']:.2f}, class accuracy "
                     f"{ddpm['class_accuracy']:.3f}; two real sets of {n}: FD {ddpm.get('fd_real', float('nan')):.2f}.")
        calls = [r["steps"] for r in results["rounds"]]
        line_plot([Series(calls, [r["student"]["fd"] for r in results["rounds"]], "student (distilled)", markers=True),
                   Series(calls, [r["teacher_ddim"]["fd"] for r in results["rounds"]], "teacher DDIM", markers=True),
                   Series(calls, [r["teacher_dpmpp_2m"]["fd"] for r in results["rounds"]], "teacher DPM-Solver++(2M)",
                          markers=True),
                   Series(calls, [ddpm["fd"]] * len(calls), f"teacher DDPM, {schedule.T} calls", dashed=True)],
                  os.path.join(args.out, "quality.png"), title="Fréchet distance against network calls",
                  xlabel="network calls", ylabel="Fréchet distance", log_x=True, log_y=True)
    lines.append(f"\nDistillation, all {len(rounds)} rounds: {timer.seconds:.0f} s on {device}.")
    with open(os.path.join(args.out, "few_step.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "few_step.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    print("\n".join(lines))
    for name in sorted(os.listdir(args.out)):
        if name.endswith((".png", ".md", ".json")):
            wrote(os.path.join(args.out, name))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - start:.0f} s")
