"""The sprites course's sampling algorithm as published: the speed baseline that md.sample must match.

Source: DeepLearning.AI, "How Diffusion Models Work" (sprites), the notebooks' `sample_ddpm` (L2,
Ho et al. 2020 Algorithm 2) and `sample_ddim` (L4, Song et al. 2021 Eq. 12 with eta = 0):
a plain per-step loop under torch.no_grad, the schedule held in device tensors indexed by the
course's step number i = T .. 1, the network asked at t = i / T.

Written here rather than imported so the benchmark compares against the algorithm itself. Changes,
none of which touches the arithmetic of a step:
  * x_T and the generator can be passed in (the course draws them from the global RNG), so a test
    can check that md.sample computes the same thing;
  * no per-step print, and no intermediate frames (the course copies them to numpy for its GIFs;
    md.sample keeps none unless asked either);
  * `max_steps` stops the loop early: the benchmark times the first steps of a long run;
  * the time [1, 1, 1, 1] is expanded to [B, 1, 1, 1] (a view, no copy): the course's ContextUnet
    broadcasts one time over the batch, minidiff's ContextUnet asks for one time per sample.

The course's tables, in minidiff's symbols: its b_t, a_t, ab_t have T + 1 entries indexed by the
course step i = 0 .. T, and its step i is minidiff's step index i - 1 (same model time i / T).
One quirk: ab_t[i] = prod_{j=0..i} a_t[j] INCLUDES a_t[0] = 1 - beta1, although b_t[0] is never
used by a step, and then ab_t[0] is overwritten with 1. So ab_t[1] = a_t[0] a_t[1] != a_t[1], and the
last DDPM step (i = 1) mixes a_t[1] with ab_t[1]. DDPM with sigma^2 = beta (md.sample's default) on
`md.NoiseSchedule.course(T, beta1, beta2)` (the library's table: alpha_bar = ab_t[1:]) therefore reproduces the
course's loop exactly on every step but that last one; with beta1 = 0 the quirk vanishes and the
two agree on every step (tests/test_benchmarks.py checks both). DDIM uses ab_t alone: the course's
sample_ddim(n) equals md.sample(sampler="ddim", steps=n, spacing="trailing") on that schedule (its
grid i = T, T - T//n, ..., T//n is minidiff's trailing grid T - 1, ..., T//n - 1) whenever n divides T.
"""

from __future__ import annotations

from typing import Optional

import torch


def course_tables(timesteps: int = 500, beta1: float = 1e-4, beta2: float = 0.02, device="cpu",
                  dtype: torch.dtype = torch.float32):
    """The course's schedule tables (b_t, a_t, ab_t), each [timesteps + 1], exactly as it builds them."""
    b_t = (beta2 - beta1) * torch.linspace(0, 1, timesteps + 1, device=device, dtype=dtype) + beta1
    a_t = 1 - b_t
    ab_t = torch.cumsum(a_t.log(), dim=0).exp()
    ab_t[0] = 1
    return b_t, a_t, ab_t


def _time(i: int, timesteps: int, n_sample: int, device) -> torch.Tensor:
    t = torch.tensor([i / timesteps])[:, None, None, None].to(device)       # the course's [1, 1, 1, 1]
    return t.expand(n_sample, 1, 1, 1)                                      # one time per sample, a view


@torch.no_grad()
def course_sample_ddpm(nn_model, n_sample: int, timesteps: int, tables, height: int = 16, in_channels: int = 3,
                       device="cpu", x_T: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None, max_steps: Optional[int] = None) -> torch.Tensor:
    """The course's `sample_ddpm`: x_{i-1} = (x_i - eps (1 - a_t) / sqrt(1 - ab_t)) / sqrt(a_t) + sqrt(b_t) z."""
    b_t, a_t, ab_t = tables

    def denoise_add_noise(x, t, pred_noise, z):
        noise = b_t.sqrt()[t] * z
        mean = (x - pred_noise * ((1 - a_t[t]) / (1 - ab_t[t]).sqrt())) / a_t[t].sqrt()
        return mean + noise

    samples = torch.randn(n_sample, in_channels, height, height).to(device) if x_T is None else x_T.to(device)
    for k, i in enumerate(range(timesteps, 0, -1)):
        if max_steps is not None and k == max_steps:
            break
        t = _time(i, timesteps, n_sample, device)
        z = _randn_like(samples, generator) if i > 1 else 0                 # no noise on the last step
        eps = nn_model(samples, t)                                          # predict the noise e(x_t, t)
        samples = denoise_add_noise(samples, i, eps, z)
    return samples


@torch.no_grad()
def course_sample_ddim(nn_model, n_sample: int, timesteps: int, tables, n: int = 25, height: int = 16,
                       in_channels: int = 3, device="cpu", x_T: Optional[torch.Tensor] = None,
                       max_steps: Optional[int] = None) -> torch.Tensor:
    """The course's `sample_ddim`: n steps of size timesteps // n, each
    x_prev = sqrt(ab_prev / ab) (x - sqrt(1 - ab) eps) + sqrt(1 - ab_prev) eps."""
    _, _, ab_t = tables

    def denoise_ddim(x, t, t_prev, pred_noise):
        ab, ab_prev = ab_t[t], ab_t[t_prev]
        x0_pred = ab_prev.sqrt() / ab.sqrt() * (x - (1 - ab).sqrt() * pred_noise)
        dir_xt = (1 - ab_prev).sqrt() * pred_noise
        return x0_pred + dir_xt

    samples = torch.randn(n_sample, in_channels, height, height).to(device) if x_T is None else x_T.to(device)
    step_size = timesteps // n
    for k, i in enumerate(range(timesteps, 0, -step_size)):
        if max_steps is not None and k == max_steps:
            break
        t = _time(i, timesteps, n_sample, device)
        eps = nn_model(samples, t)
        samples = denoise_ddim(samples, i, i - step_size, eps)
    return samples


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """torch.randn_like(x) (the course), from `generator` when one is given: drawn on the generator's
    device, as md.sample draws it, so both consume the same random numbers."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
