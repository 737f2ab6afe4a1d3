"""Progressive distillation: a student that takes one DDIM step where its teacher took two.

Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models", Algorithm 2.
A teacher samples with N' = 2N deterministic DDIM steps. The student starts as a copy of the teacher
and learns, at each of its own N grid points t, the one x0-prediction whose DDIM step lands exactly
where the teacher's two steps land:

    z_t   = alpha_t x + sigma_t eps                            (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar))
    z_t'  = alpha_t'  x_hat_T(z_t, t)   + sigma_t'  eps_hat_T(z_t, t)      teacher's DDIM step t  -> t'
    z_t'' = alpha_t'' x_hat_T(z_t', t') + sigma_t'' eps_hat_T(z_t', t')    teacher's DDIM step t' -> t''
    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)    (Alg. 2)

x_tilde is the x0 that a single DDIM step t -> t'' (Song et al. 2021, Eq. 12 with eta = 0) must use to
reach z_t''. The student regresses it with the "truncated SNR" weight max(alpha^2 / sigma^2, 1) on the
x0 error (paper Sec. 4). Then the student becomes the teacher and N halves: 16 -> 8 -> 4 -> 2 -> 1.

Grids. Steps t, t', t'' are points of the "trailing" grid (NoiseSchedule.timesteps(n, "trailing"),
which starts at t = T - 1): its N-point grid is every other point of its 2N-point grid, exactly, so
one student step covers two teacher steps; the last step lands on clean data (alpha_bar = 1, where
x_tilde = z_t''). The student samples with md.sample(sampler="ddim", steps=N, spacing="trailing").

Guidance. With guidance_scale w, the teacher's output is the guided one (Ho & Salimans Eq. 6) for the
samples that keep their context, and the unconditional one for those whose context the Trainer
dropped; the student then draws guided samples in ONE network call per step, with no guidance of its
own (guidance_scale=None). Only the first round guides its teacher: later teachers are students with w
already baked in, and guiding them again would compound it (w, w^2, w^3, ...: over-saturated samples
that lose their diversity). This bakes one w into the student; Meng et al. 2023 ("On Distillation of
Guided Diffusion Models") instead condition the student on w, which this module does not do.

Parametrisation. Any prediction type works in the loss, but the paper (Sec. 4) finds that a student
predicting eps cannot take the last few steps: x0 = (z - sigma eps) / alpha divides by alpha ~ 0 at
t = T. Distil a "v_prediction" (or "sample") teacher; the student keeps the teacher's parametrisation.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from typing import List, Optional

import torch
from torch import Tensor, nn

from .guidance import guided_output
from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType, x0_eps_from_output

SPACING = "trailing"                # the distillation grid: nested when the step count halves


def nested_grids(schedule: NoiseSchedule, student_steps: int):
    """(student grid [N], teacher grid [2N]) of step indices, descending; the student's is every other teacher point.

    Raises ValueError when 2N > T or the two grids do not nest.
    """
    if isinstance(student_steps, bool) or not isinstance(student_steps, int) or student_steps < 1:
        raise ValueError(f"student_steps must be an integer >= 1, got {student_steps!r}")
    if 2 * student_steps > schedule.T:
        raise ValueError(f"student_steps must be at most T / 2 = {schedule.T // 2} (the teacher takes twice as "
                         f"many steps), got {student_steps}")
    student = schedule.timesteps(student_steps, SPACING)
    teacher = schedule.timesteps(2 * student_steps, SPACING)
    if not torch.equal(teacher[::2], student):
        raise ValueError(f"the {SPACING} grids of {student_steps} and {2 * student_steps} steps do not nest for "
                         f"T = {schedule.T}")
    return student, teacher


class ProgressiveDistillationLoss:
    """The student's loss of one distillation round: Trainer(student, ..., loss_fn=ProgressiveDistillationLoss(...)).

    teacher: a network model(x, t, context) taking 2 * student_steps DDIM steps (frozen here).
    prediction_type: what teacher and student predict. guidance_scale: the teacher's w (None: unguided).
    Called as loss_fn(student, x0 [B, C, H, W], context or None, generator) -> scalar loss.
    """

    def __init__(self, teacher: nn.Module, schedule: NoiseSchedule, student_steps: int,
                 prediction_type: PredictionType = "v_prediction", guidance_scale: Optional[float] = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if guidance_scale is not None and not (isinstance(guidance_scale, (int, float)) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be None or a number >= 0, got {guidance_scale!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.schedule, self.prediction_type, self.guidance_scale = schedule, prediction_type, guidance_scale
        self.student_steps = student_steps
        student_grid, teacher_grid = nested_grids(schedule, student_steps)
        # alpha_bar at the student's point k (t), the teacher's point between (t') and the next student point (t'')
        table = schedule.alphas_cumprod
        self.alpha_bar = table[student_grid]                                              # [N]
        self.alpha_bar_mid = table[teacher_grid[1::2]]                                    # [N]
        self.alpha_bar_next = torch.cat([table[student_grid[1:]], torch.ones(1, dtype=table.dtype)])   # [N], 1: clean
        self.time = schedule.model_time(student_grid)                                     # t = (i + 1) / T
        self.time_mid = schedule.model_time(teacher_grid[1::2])

    def __call__(self, student: nn.Module, x0: Tensor, context: Optional[Tensor],
                 generator: Optional[torch.Generator] = None) -> Tensor:
        B, shape = x0.shape[0], (-1,) + (1,) * (x0.ndim - 1)
        dtype = torch.promote_types(x0.dtype, torch.float32)                             # float32, or float64
        k = torch.randint(0, self.student_steps, (B,), generator=generator)              # the student's step
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)

        def per_sample(table):                                                            # [N] -> [B, 1, 1, 1]
            return table[k].to(device=x0.device, dtype=dtype).view(shape)
        a, a_mid, a_next = per_sample(self.alpha_bar), per_sample(self.alpha_bar_mid), per_sample(self.alpha_bar_next)
        t, t_mid = per_sample(self.time).flatten(), per_sample(self.time_mid).flatten()

        z = a.sqrt() * x0 + (1 - a).sqrt() * noise                                        # z_t  (Ho Eq. 4)
        with torch.no_grad():
            z = z.to(dtype)
            z_mid = self._teacher_ddim_step(z, t, a, a_mid, context)                      # z_t'
            z_next = self._teacher_ddim_step(z_mid, t_mid, a_mid, a_next, context)        # z_t''
            ratio = ((1 - a_next) / (1 - a)).sqrt()                                       # sigma_t'' / sigma_t
            x_tilde = (z_next - ratio * z) / (a_next.sqrt() - ratio * a.sqrt())           # Algorithm 2's target

        x0_student, _ = x0_eps_from_output(student(z, t, context), z, a, self.prediction_type)
        weight = (a / (1 - a)).clamp(min=1.0).flatten()                                   # max(SNR, 1), Sec. 4
        per_sample_error = (x0_student.to(dtype) - x_tilde).pow(2).flatten(1).mean(1)
        return (weight * per_sample_error).mean()

    def _teacher_ddim_step(self, z: Tensor, t: Tensor, alpha_bar: Tensor, alpha_bar_next: Tensor,
                           context: Optional[Tensor]) -> Tensor:
        """The teacher's deterministic DDIM step (ddim_step with eta 0) from alpha_bar to alpha_bar_next, per sample."""
        output = guided_output(self.teacher, z, t, context, self.guidance_scale)
        x0_pred, eps_pred = x0_eps_from_output(output.to(z.dtype), z, alpha_bar, self.prediction_type)
        return alpha_bar_next.sqrt() * x0_pred + (1 - alpha_bar_next).sqrt() * eps_pred   # Song et al. Eq. 12


@dataclass
class Round:
    """One distillation round: the student's step count, its network (EMA weights) and its training record."""
    steps: int
    model: nn.Module
    history: list                   # [step, loss, lr] rows, as Trainer.history
    seconds: float


def progressive_distillation(teacher: nn.Module, schedule: NoiseSchedule, dataset, config, teacher_steps: int,
                             final_steps: int = 1, prediction_type: PredictionType = "v_prediction",
                             guidance_scale: Optional[float] = None, model_kwargs: Optional[dict] = None,
                             on_round=None) -> List[Round]:
    """Halve the step count round by round, from a teacher's `teacher_steps` DDIM steps to `final_steps`.

    config: the TrainConfig of every round (its out_dir, if set, gets one sub-folder per round,
    "steps_NNN", holding that round's checkpoint, loss curve and samples). Each round's student starts
    from its teacher's weights and the next round's teacher is the student's EMA. Returns the Rounds.
    on_round(round): called after each round (write a grid, measure quality...).
    guidance_scale: the first teacher's w, baked into every student; later rounds call their teacher (a
    student, guided already) as it is.
    """
    from .train import Trainer  # train imports nothing from here
    def power_of_two(n) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and not n & (n - 1)
    if not power_of_two(teacher_steps) or teacher_steps < 2:
        raise ValueError(f"teacher_steps must be a power of two >= 2, got {teacher_steps!r}")
    if not power_of_two(final_steps) or final_steps >= teacher_steps:
        raise ValueError(f"final_steps must be a power of two below teacher_steps = {teacher_steps}, got "
                         f"{final_steps!r}")
    nested_grids(schedule, teacher_steps // 2)                            # every round's grids, checked up front
    rounds, steps = [], teacher_steps // 2
    while steps >= final_steps:
        out_dir = os.path.join(config.out_dir, f"steps_{steps:03d}") if config.out_dir else None
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        loss_fn = ProgressiveDistillationLoss(teacher, schedule, steps, prediction_type,
                                              guidance_scale if not rounds else None)   # w once, not w^k
        start = time.perf_counter()
        round_config = replace(config, out_dir=out_dir, prediction_type=prediction_type, objective="diffusion")
        trainer = Trainer(student, dataset, round_config, schedule=schedule,
                          model_kwargs=model_kwargs, loss_fn=loss_fn).fit()
        done = Round(steps, trainer.ema.model, trainer.history, time.perf_counter() - start)
        rounds.append(done)
        if on_round is not None:
            on_round(done)
        teacher, steps = trainer.ema.model, steps // 2
    return rounds
