"""Discrete-time samplers and `sample()`, the one entry point that runs them.

Every sampler is one plain function with the same signature

    sampler(denoise, x, schedule, timesteps, generator=None, callback=None, **options) -> x0

`denoise(x, i, alpha_bar) -> (x0_pred, eps_pred)` is the network behind guidance and clipping
(see guidance.Denoiser); `x` starts as x_T ~ N(0, I); `timesteps` are descending step indices;
`callback(info)` is called after each step with {"step", "i", "x", "x0_pred"}. Choosing a sampler
by name is the dict SAMPLERS at the bottom, nothing else.

Symbols (as in schedule.py): alpha_bar = prod(1 - beta); alpha_bar_prev is alpha_bar at the NEXT
grid point, where the sampler lands (1.0 after the last one: a clean x0); sigma = sqrt((1 - alpha_bar) /
alpha_bar); lambda_ = log-SNR.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .guidance import Denoiser
from .schedule import SPACINGS, NoiseSchedule, PredictionType

Variance = Literal["beta", "posterior"]


def _randn_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device so seeds are portable."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _alpha_bar(schedule: NoiseSchedule, i) -> float:
    """alpha_bar at grid point i: a table entry, or interpolated at a fractional ("karras") index."""
    return schedule.alphas_cumprod_list[i] if isinstance(i, int) else float(schedule.alpha_bar_at(i))


def _next_alpha_bar(schedule: NoiseSchedule, timesteps: Sequence, k: int) -> float:
    return _alpha_bar(schedule, timesteps[k + 1]) if k + 1 < len(timesteps) else 1.0


# ------------------------------------------------------------------------------------------ DDPM
def ddpm(denoise, x, schedule, timesteps, generator=None, callback=None,
         variance: Variance = "beta", add_noise: bool = True) -> Tensor:
    """Ancestral sampling, Ho et al. 2020, Algorithm 2.

    x_{prev} = posterior_mean(x0_pred, x) + sigma z with sigma^2 = beta ("beta", the sprites course) or
    the posterior variance ("posterior"). On a grid coarser than every step, beta is the beta of the
    jump, 1 - alpha_bar / alpha_bar_prev (Nichol & Dhariwal 2021, Sec. 4). No noise on the last step.
    add_noise=False drops z everywhere: the course's "sampling without the extra noise" collapse.
    """
    timesteps = timesteps.tolist()
    for k, i in enumerate(timesteps):
        alpha_bar = _alpha_bar(schedule, i)
        alpha_bar_prev = _next_alpha_bar(schedule, timesteps, k)
        beta = 1 - alpha_bar / alpha_bar_prev                              # beta of this jump
        x0_pred, eps_pred = denoise(x, i, alpha_bar)
        # Posterior mean, Ho et al. Eq. 7 (equal to Eq. 11's eps form when x0_pred is not clipped).
        mean = (math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)) * x0_pred \
            + (math.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x
        if k + 1 < len(timesteps) and add_noise:
            var = beta if variance == "beta" else beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
            x = mean + math.sqrt(var) * _randn_like(x, generator)
        else:
            x = mean
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ DDIM
def ddim(denoise, x, schedule, timesteps, generator=None, callback=None, eta: float = 0.0) -> Tensor:
    """Song, Meng & Ermon 2021 (DDIM), Eq. 12, with sigma from Eq. 16.

    eta = 0: deterministic (the probability-flow path); eta = 1 on every step: ancestral sampling
    with the posterior variance. The last step lands on alpha_bar = 1, a clean x0.
    """
    timesteps = timesteps.tolist()
    for k, i in enumerate(timesteps):
        alpha_bar = _alpha_bar(schedule, i)
        alpha_bar_prev = _next_alpha_bar(schedule, timesteps, k)
        x0_pred, eps_pred = denoise(x, i, alpha_bar)
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        direction = math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps_pred   # "direction pointing to x_t"
        x = math.sqrt(alpha_bar_prev) * x0_pred + direction
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ DPM-Solver++(2M)
def dpmpp_2m(denoise, x, schedule, timesteps, generator=None, callback=None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2: multistep, data prediction, in lambda.

    With alpha = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar), lambda_ = log(alpha / sigma_t) and
    h = lambda_next - lambda_cur:
        x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D
    where D = x0_pred on the first step (first order: DDIM) and (1 + 1/(2r)) x0_pred - 1/(2r) x0_prev on
    every later step, r = h_prev / h. The last step goes to lambda_ = +inf, where the update is
    x_next = x0_pred. This is the published algorithm, as k-diffusion's sample_dpmpp_2m and diffusers'
    DPMSolverMultistepScheduler(solver_order=2, lower_order_final=True) run it.
    """
    timesteps = timesteps.tolist()
    x0_prev, h_prev = None, None
    for k, i in enumerate(timesteps):
        alpha_bar = _alpha_bar(schedule, i)
        alpha_bar_next = _next_alpha_bar(schedule, timesteps, k)
        x0_pred, _ = denoise(x, i, alpha_bar)
        if alpha_bar_next == 1.0:
            x = x0_pred                                                   # sigma_next = 0: land on the data
        else:
            alpha_next, sigma_next = math.sqrt(alpha_bar_next), math.sqrt(1 - alpha_bar_next)
            sigma_cur = math.sqrt(1 - alpha_bar)
            lambda_cur = 0.5 * math.log(alpha_bar / (1 - alpha_bar))
            lambda_next = 0.5 * math.log(alpha_bar_next / (1 - alpha_bar_next))
            h = lambda_next - lambda_cur
            if x0_prev is None:
                D = x0_pred                                               # first order (DPM-Solver++(1) = DDIM)
            else:
                r = h_prev / h
                D = (1 + 1 / (2 * r)) * x0_pred - (1 / (2 * r)) * x0_prev
            x = (sigma_next / sigma_cur) * x - alpha_next * math.expm1(-h) * D
            h_prev = h
        x0_prev = x0_pred
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ Karras et al. 2022
def _karras_loop(denoise, x, schedule, timesteps, callback, second_order: bool) -> Tensor:
    """Karras et al. 2022, Algorithm 1 (Euler, or Heun when second_order) on dx/dsigma = (x - D(x; sigma)) / sigma.

    Works on x_ve = x / sqrt(alpha_bar) = x0 + sigma eps ("variance exploding" units); the denoiser
    D(x_ve; sigma) asks the network at x_ve / sqrt(1 + sigma^2). The grid ends at sigma = 0.
    """
    grid = [(i, math.sqrt(1 / _alpha_bar(schedule, i) - 1)) for i in timesteps.tolist()] + [(None, 0.0)]

    def derivative(x_ve, i, sigma):
        alpha_bar = 1 / (1 + sigma**2)
        x0_pred, _ = denoise(x_ve * math.sqrt(alpha_bar), i, alpha_bar)
        return (x_ve - x0_pred) / sigma, x0_pred                          # d = (x - D(x; sigma)) / sigma

    x = x * math.sqrt(1 + grid[0][1] ** 2)                                # x_T ~ N(0, I) in VE units
    for k in range(len(grid) - 1):
        (i, sigma), (i_next, sigma_next) = grid[k], grid[k + 1]
        d, x0_pred = derivative(x, i, sigma)
        x_next = x + (sigma_next - sigma) * d                             # Euler step
        if second_order and sigma_next > 0:
            d_next, _ = derivative(x_next, i_next, sigma_next)
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)        # Heun correction
        x = x_next
        if callback:
            callback({"step": k, "i": i, "x": x / math.sqrt(1 + sigma_next**2), "x0_pred": x0_pred})
    return x


def euler(denoise, x, schedule, timesteps, generator=None, callback=None) -> Tensor:
    """Karras et al. 2022, Algorithm 1 without the Heun correction: one network call per step."""
    return _karras_loop(denoise, x, schedule, timesteps, callback, second_order=False)


def heun(denoise, x, schedule, timesteps, generator=None, callback=None) -> Tensor:
    """Karras et al. 2022, Algorithm 1: Heun's second-order method, 2 * steps - 1 network calls."""
    return _karras_loop(denoise, x, schedule, timesteps, callback, second_order=True)


# ------------------------------------------------------------------------------------------ DDIM inversion
@torch.no_grad()
def ddim_invert(model, schedule: NoiseSchedule, x0: Tensor, steps: int = 50, context: Optional[Tensor] = None,
                guidance_scale: Optional[float] = None, prediction_type: PredictionType = "epsilon",
                spacing: str = "leading", progress: bool = False) -> Tensor:
    """Encode x0 -> x_T by running the DDIM (eta = 0) ODE backwards over the same grid `sample` uses.

    Song et al. 2021 (DDIM), Sec. 4.3. `sample(..., sampler="ddim", steps=steps, x_T=ddim_invert(...))`
    decodes it back to x0 up to the ODE's discretisation error. x0: [B, C, H, W]; returns [B, C, H, W].
    """
    denoise = Denoiser(model, schedule, prediction_type, context, guidance_scale)
    ascending = schedule.timesteps(steps, spacing).flip(0).tolist()
    x = x0
    for k in tqdm(range(len(ascending)), disable=not progress, desc="ddim_invert"):
        i = ascending[k]                                                  # eps is read at the grid point ahead,
        _, eps_pred = denoise(x, i, float(schedule.alphas_cumprod[i]))    # mirroring the sampler's use of eps(x_i)
        alpha_bar_cur = float(schedule.alphas_cumprod[ascending[k - 1]]) if k > 0 else 1.0
        alpha_bar = float(schedule.alphas_cumprod[i])
        x0_pred = (x - math.sqrt(1 - alpha_bar_cur) * eps_pred) / math.sqrt(alpha_bar_cur)
        x = math.sqrt(alpha_bar) * x0_pred + math.sqrt(1 - alpha_bar) * eps_pred
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "euler": euler, "heun": heun}


# ------------------------------------------------------------------------------------------ sample()
@torch.no_grad()
def sample(model, schedule: NoiseSchedule, shape, sampler: str = "ddim", steps: Optional[int] = None,
           eta: float = 0.0, context: Optional[Tensor] = None, guidance_scale: Optional[float] = None,
           prediction_type: PredictionType = "epsilon", x_T: Optional[Tensor] = None,
           generator: Optional[torch.Generator] = None, return_trajectory: bool = False, progress: bool = True,
           spacing: str = "leading", clip_x0: bool = False, dynamic_threshold: Optional[float] = None,
           uncond_context: Optional[Tensor] = None, variance: Variance = "beta", add_noise: bool = True,
           device=None, dtype: Optional[torch.dtype] = None,
           callback: Optional[Callable[[dict], None]] = None):
    """Draw samples of `shape` ([B, C, H, W]) from `model` under `schedule`.

    sampler: "ddpm" | "ddim" | "dpmpp_2m" | "euler" | "heun". steps: number of grid points (None:
    every step, T, for "ddpm"; 25 otherwise); spacing: the grid ("leading" | "trailing" | "linspace" |
    "karras", see NoiseSchedule.timesteps).
    context: [B, ...] conditioning; guidance_scale w: classifier-free guidance (needs context).
    eta: DDIM's noise (0..1). variance / add_noise: DDPM options.
    x_T: the starting noise [B, C, H, W]; else drawn with `generator`.
    Returns x0 samples [B, C, H, W]; with return_trajectory, (x0, trajectory) where trajectory is
    {"x": [x_T, x after each step], "x0_pred": [...], "timesteps": [...], "nfe": int}, tensors on the CPU.
    """
    shape, timesteps = _check_arguments(schedule, shape, sampler, steps, spacing, eta, variance, guidance_scale,
                                        context, dynamic_threshold, prediction_type)
    device, dtype = _device_and_dtype(model, device, dtype, x_T)
    x = _starting_noise(shape, x_T, generator, device, dtype)                # x_T ~ N(0, I)
    context = context.to(device) if context is not None else None
    uncond_context = uncond_context.to(device) if uncond_context is not None else None

    denoise = Denoiser(model, schedule, prediction_type, context, guidance_scale, uncond_context,
                       clip_x0, dynamic_threshold)
    options = {"ddpm": {"variance": variance, "add_noise": add_noise}, "ddim": {"eta": eta}}.get(sampler, {})
    trajectory = {"x": [x.cpu()] if return_trajectory else [], "x0_pred": [], "timesteps": timesteps.tolist(),
                  "nfe": 0}
    bar = tqdm(total=len(timesteps), desc=sampler, disable=not progress, leave=False)

    def on_step(info):
        bar.update(1)
        if return_trajectory:
            trajectory["x"].append(info["x"].cpu())
            trajectory["x0_pred"].append(info["x0_pred"].cpu())
        if callback:
            callback(info)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()                                                      # dropout off while sampling
    try:
        x = SAMPLERS[sampler](denoise, x, schedule, timesteps, generator=generator, callback=on_step, **options)
    finally:
        bar.close()
        if was_training:
            model.train()
    if not torch.isfinite(x).all():                                       # one cheap check, at the end
        raise FloatingPointError(f"sampler {sampler!r} produced NaN or inf after {len(timesteps)} steps (the model's "
                                 f"output is not finite, or the dtype {x.dtype} overflowed)")
    if return_trajectory:
        trajectory["nfe"] = denoise.nfe
        return x, trajectory
    return x


def _check_arguments(schedule, shape, sampler, steps, spacing, eta, variance, guidance_scale, context,
                     dynamic_threshold, prediction_type):
    """Every check of sample()'s arguments, with errors that name the argument; returns (shape, timesteps)."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = _check_shape(shape)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    if steps is None:
        steps = schedule.T if sampler == "ddpm" else 25
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    if guidance_scale is not None:
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if context is None:
            raise ValueError("guidance_scale needs a context (the condition to guide towards)")
    if context is not None:
        if context.ndim == 0 or context.shape[0] != shape[0]:
            raise ValueError(f"context must have batch size {shape[0]} (shape [B, ...]), got {tuple(context.shape)}")
        if context.is_floating_point() and not torch.isfinite(context).all():
            raise ValueError("context must be finite: it holds NaN or inf")
    if dynamic_threshold is not None and not 0 < dynamic_threshold < 1:
        raise ValueError(f"dynamic_threshold must be a percentile in (0, 1), got {dynamic_threshold!r}")
    timesteps = schedule.timesteps(steps, spacing)
    first = timesteps[0].item()
    if _alpha_bar(schedule, first) == 0 and (prediction_type == "epsilon" or sampler in ("dpmpp_2m", "euler", "heun")):
        raise ValueError(f"spacing {spacing!r} starts at step {first}, where alpha_bar = 0 (zero terminal "
                         f"SNR): sampler {sampler!r} with prediction_type {prediction_type!r} cannot start there "
                         f"(x0 or lambda_ is undefined). Use sampler 'ddim' or 'ddpm' with prediction_type "
                         f"'v_prediction' (Lin et al. 2023), or spacing 'leading' or 'karras'")
    return shape, timesteps


def _starting_noise(shape, x_T, generator, device, dtype) -> Tensor:
    """x_T as given (checked), or N(0, I) drawn on the generator's device so a seed gives the same noise anywhere."""
    if x_T is None:
        return torch.randn(shape, generator=generator, dtype=dtype,
                           device=generator.device if generator is not None else device).to(device)
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T must be finite: it holds NaN or inf")
    return x_T.to(device=device, dtype=dtype)


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(operator.index(s) for s in shape)                   # ints only: 2.5 or "2" is an error
    except TypeError:
        raise ValueError(f"shape must be a sequence of ints like (B, C, H, W), got {shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must have at least 2 positive dimensions (B, ...), got {shape}")
    return shape


def _device_and_dtype(model, device, dtype, x_T):
    """Where and in what dtype to sample: as asked; else the model's parameters'; else x_T's; else CPU float32."""
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    if dtype is None:
        if parameter is not None and parameter.is_floating_point():
            dtype = parameter.dtype
        else:
            dtype = x_T.dtype if x_T is not None else torch.float32
    return torch.device(device), dtype
