"""Stepper: one sampler step at a time, for the loop both courses write by hand.

    stepper = md.Stepper(schedule, sampler="ddim", steps=25, spacing="trailing")
    x = torch.randn(shape, generator=g) * stepper.init_noise_sigma
    for i in stepper.timesteps:
        output = model(x, stepper.model_time(i, x), context)     # or md.guided_output(...) for guidance
        x = stepper.step(output, i, x, generator=g)

With the same starting noise and generator this loop gives bit-for-bit what `md.sample` gives: both call
the one-step functions of samplers.py with the same numbers. diffusers calls this object a "scheduler";
the names mean the same as there: `timesteps`, `step`, `add_noise`, `init_noise_sigma`, `prediction_type`.
Differences: `timesteps` holds minidiff step indices (floats on the "karras" grid), and the network's time
value is `model_time(i, x)` = (i + 1) / T (DESIGN's convention), not the index itself.

Multistep and multi-call samplers keep state between calls, as in diffusers:
  * "dpmpp_2m" remembers the previous step's x0_pred and h (reset by building a new Stepper);
  * "heun" calls the network twice per step except the last: `timesteps` repeats every inner grid point
    ([i0, i1, i1, i2, i2, ..., i_last]); the first call at a point takes an Euler step, the second call
    (at the repeated point, on the Euler estimate) applies Heun's correction. `state_in_first_order` is
    True when the next call starts a new step.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import samplers as S
from .guidance import Denoiser, model_prediction_type
from .schedule import NoiseSchedule, PredictionType


class Stepper:
    """A sampler of samplers.SAMPLERS on a fixed grid, stepped by hand. See the module docstring."""

    def __init__(self, schedule: NoiseSchedule, sampler: str = "ddim", steps: Optional[int] = None,
                 spacing: str = "leading", prediction_type: Optional[PredictionType] = None, eta: float = 0.0,
                 variance: S.Variance = "beta", add_noise: bool = True, clip_x0: bool = False,
                 dynamic_threshold: Optional[float] = None, model=None):
        """prediction_type: None takes ``model.prediction_type`` when `model` (the network you will call) is
        given and has one (a loaded model does), else "epsilon". The other arguments are md.sample's."""
        prediction_type = model_prediction_type(model, prediction_type)
        _, grid = S.check_sample_arguments(schedule, (1, 1), sampler, steps, spacing, eta, variance, None, None,
                                     dynamic_threshold, prediction_type)
        S.check_sampler_options(sampler, eta, variance, add_noise)
        self.schedule, self.sampler, self.prediction_type = schedule, sampler, prediction_type
        self.eta, self.variance, self.add_noise_in_step = eta, variance, add_noise
        self._convert = Denoiser(None, schedule, prediction_type, clip_x0=clip_x0,
                                 dynamic_threshold=dynamic_threshold)
        self.grid: List = grid.tolist()                                   # the distinct grid points, descending
        self.timesteps: List = self.grid if sampler != "heun" else \
            [self.grid[0]] + [i for i in self.grid[1:] for _ in (0, 1)]
        self.init_noise_sigma = 1.0                                       # x_T ~ N(0, I) (variance preserving)
        self._call, self._x0_older, self._h_older, self._first = 0, None, None, None

    @property
    def state_in_first_order(self) -> bool:
        """Heun: True when the next call starts a step (its Euler part), False when it is the correction."""
        return self._first is None

    def model_time(self, i, x: Tensor) -> Tensor:
        """The network's time input at grid point i for a batch like x: [B] filled with (i + 1) / T."""
        return torch.full((x.shape[0],), (float(i) + 1) / self.schedule.T, device=x.device, dtype=x.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, i) -> Tensor:
        """q(x_i | x_0) in closed form (NoiseSchedule.add_noise); i: int64 [B]."""
        return self.schedule.add_noise(x0, noise, i)

    def step(self, model_output: Tensor, i, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The network's (guided) output at (x, i) -> x at the next grid point (Heun: see the module docstring).

        model_output, x: [B, ...]; i must be stepper.timesteps[n] on the n-th call.
        """
        if self._call >= len(self.timesteps):
            raise RuntimeError(f"all {len(self.timesteps)} steps were taken; build a new Stepper to sample again")
        if i != self.timesteps[self._call]:
            raise ValueError(f"i must be stepper.timesteps[{self._call}] = {self.timesteps[self._call]}, got {i!r}")
        k = self._call if self.sampler != "heun" else (self._call + 1) // 2   # index of i in the grid
        self._call += 1
        alpha_bar = S.grid_alpha_bar(self.schedule, i)
        x0_pred, eps_pred = self._convert.from_output(model_output, x, alpha_bar)
        if self.sampler == "heun" and self._first is not None:            # the correction at the repeated point
            x_start, x0_start, alpha_bar_start = self._first
            self._first = None
            return S.heun_step(x_start, x0_start, x, x0_pred, alpha_bar_start, alpha_bar)
        alpha_bar_next = S.next_alpha_bar(self.schedule, self.grid, k)
        if self.sampler == "ddpm":
            return S.ddpm_step(x, x0_pred, alpha_bar, alpha_bar_next, generator, self.variance, self.add_noise_in_step)
        if self.sampler == "ddim":
            return S.ddim_step(x, x0_pred, eps_pred, alpha_bar, alpha_bar_next, self.eta, generator)
        if self.sampler == "dpmpp_2m":
            x, self._h_older = S.dpmpp_2m_step(x, x0_pred, alpha_bar, alpha_bar_next, self._x0_older, self._h_older)
            self._x0_older = x0_pred
            return x
        x_euler = S.euler_step(x, x0_pred, alpha_bar, alpha_bar_next)
        if self.sampler == "heun" and alpha_bar_next < 1.0:
            self._first = (x, x0_pred, alpha_bar)
        return x_euler
