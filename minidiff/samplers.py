"""Discrete-time samplers and `sample()`, the one entry point that runs them.

Every sampler is one plain function with the same signature

    sampler(denoise, x, schedule, timesteps, generator=None, callback=None, **options) -> x0

`denoise(x, i, alpha_bar) -> (x0_pred, eps_pred)` is the network behind guidance and clipping
(see guidance.Denoiser); `x` starts as x_T ~ N(0, I); `timesteps` are descending step indices;
`callback(info)` is called after each step with {"step", "i", "x", "x0_pred"}. Choosing a sampler
by name is the dict SAMPLERS at the bottom, nothing else.

Each sampler's update is a public one-step function (ddpm_step, ddim_step, dpmpp_2m_step, euler_step,
heun_step): the loops here and the Stepper (stepper.py) call the same code.

Symbols (as in schedule.py), one name per quantity:
  alpha_bar       prod(1 - beta) at the grid point a step starts from;
  alpha_bar_next  alpha_bar at the grid point the step lands on (Ho et al. write it "t-1" when sampling);
                  1.0 after the last grid point: a clean x0;
  sigma           sqrt(1 - alpha_bar), the std of the noise in x = sqrt(alpha_bar) x0 + sigma eps;
  sigma_ve        sqrt((1 - alpha_bar) / alpha_bar), the same noise level in "variance exploding" units
                  x / sqrt(alpha_bar) (Karras et al. 2022's sigma);
  noise_std       the std of the fresh noise z a stochastic step adds (DDIM's sigma_t, Eq. 16);
  lambda_         log-SNR = log(sqrt(alpha_bar) / sigma);
  eps_pred        the network's noise estimate; `eps` names noise and nothing else.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_sampling_inputs
from .guidance import Denoiser, model_prediction_type
from .schedule import SPACINGS, NoiseSchedule, PredictionType
from .tensors import randn

Variance = Literal["beta", "posterior"]


def grid_alpha_bar(schedule: NoiseSchedule, i) -> float:
    """alpha_bar at grid point i: a table entry, or interpolated at a fractional ("karras") index."""
    return schedule.alphas_cumprod_list[i] if isinstance(i, int) else float(schedule.alpha_bar_at(i))


def next_alpha_bar(schedule: NoiseSchedule, timesteps: Sequence, k: int) -> float:
    return grid_alpha_bar(schedule, timesteps[k + 1]) if k + 1 < len(timesteps) else 1.0


# ------------------------------------------------------------------------------------------ DDPM
def ddpm_step(x, x0_pred, alpha_bar: float, alpha_bar_next: float, generator=None,
              variance: Variance = "beta", add_noise: bool = True) -> Tensor:
    """One ancestral step from alpha_bar to alpha_bar_next (Ho et al. 2020, Algorithm 2, line 4).

    x_next = posterior_mean(x0_pred, x) + noise_std z with noise_std^2 = beta ("beta", the sprites course)
    or the posterior variance ("posterior"). On a grid coarser than every step, beta is the beta of the
    jump, 1 - alpha_bar / alpha_bar_next (Nichol & Dhariwal 2021, Sec. 4). No noise on the step to
    alpha_bar_next = 1. add_noise=False drops z: the course's "sampling without the extra noise" collapse.
    On NoiseSchedule.course this is the course's loop on every step but the last, where the course divides by
    sqrt(a_t[1]) although its ab_t[1] = a_t[0] a_t[1]; minidiff reads every step from the one table on purpose,
    so that each step is the posterior of the forward process the model was trained on.
    """
    beta = 1 - alpha_bar / alpha_bar_next                                  # beta of this jump
    # Posterior mean, Ho et al. Eq. 7 (equal to Eq. 11's eps form when x0_pred is not clipped).
    mean = (math.sqrt(alpha_bar_next) * beta / (1 - alpha_bar)) * x0_pred \
        + (math.sqrt(1 - beta) * (1 - alpha_bar_next) / (1 - alpha_bar)) * x
    if alpha_bar_next == 1.0 or not add_noise:
        return mean
    noise_var = beta if variance == "beta" else beta * (1 - alpha_bar_next) / (1 - alpha_bar)
    return mean + math.sqrt(noise_var) * randn(x.shape, generator, x.device, x.dtype)


def ddpm(denoise, x, schedule, timesteps, generator=None, callback=None,
         variance: Variance = "beta", add_noise: bool = True) -> Tensor:
    """Ancestral sampling, Ho et al. 2020, Algorithm 2: ddpm_step on every grid point."""
    timesteps = timesteps.tolist()
    for k, i in enumerate(timesteps):
        alpha_bar, alpha_bar_next = grid_alpha_bar(schedule, i), next_alpha_bar(schedule, timesteps, k)
        x0_pred, _ = denoise(x, i, alpha_bar)
        x = ddpm_step(x, x0_pred, alpha_bar, alpha_bar_next, generator, variance, add_noise)
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ DDIM
def ddim_step(x, x0_pred, eps_pred, alpha_bar: float, alpha_bar_next: float, eta: float = 0.0,
              generator=None) -> Tensor:
    """One DDIM step from alpha_bar to alpha_bar_next: Song, Meng & Ermon 2021, Eq. 12, with noise_std the
    paper's sigma_t of Eq. 16."""
    noise_std = eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next))
    direction = math.sqrt(max(1 - alpha_bar_next - noise_std**2, 0.0)) * eps_pred   # "direction pointing to x_t"
    x = math.sqrt(alpha_bar_next) * x0_pred + direction
    if noise_std > 0:
        x = x + noise_std * randn(x.shape, generator, x.device, x.dtype)
    return x


def ddim(denoise, x, schedule, timesteps, generator=None, callback=None, eta: float = 0.0) -> Tensor:
    """Song, Meng & Ermon 2021 (DDIM), Eq. 12, with noise_std = the paper's sigma_t (Eq. 16).

    eta = 0: deterministic (the probability-flow path); eta = 1 on every step: ancestral sampling
    with the posterior variance. The last step lands on alpha_bar = 1, a clean x0.
    """
    timesteps = timesteps.tolist()
    for k, i in enumerate(timesteps):
        alpha_bar, alpha_bar_next = grid_alpha_bar(schedule, i), next_alpha_bar(schedule, timesteps, k)
        x0_pred, eps_pred = denoise(x, i, alpha_bar)
        x = ddim_step(x, x0_pred, eps_pred, alpha_bar, alpha_bar_next, eta, generator)
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ DPM-Solver++(2M)
def dpmpp_2m_step(x, x0_pred, alpha_bar: float, alpha_bar_next: float, x0_older: Optional[Tensor] = None,
                  h_older: Optional[float] = None):
    """One DPM-Solver++(2M) step from alpha_bar to alpha_bar_next; returns (x, h) for the next step's memory.

    x0_older, h_older: the previous step's x0_pred and h (None on the first step: first order, = DDIM).
    h is None after the final step to alpha_bar_next = 1, where the update is x = x0_pred.
    """
    if alpha_bar_next == 1.0:
        return x0_pred, None                                              # sigma_next = 0: land on the data
    sigma, sigma_next = math.sqrt(1 - alpha_bar), math.sqrt(1 - alpha_bar_next)
    lambda_ = 0.5 * math.log(alpha_bar / (1 - alpha_bar))                 # log(sqrt(alpha_bar) / sigma)
    lambda_next = 0.5 * math.log(alpha_bar_next / (1 - alpha_bar_next))
    h = lambda_next - lambda_
    if x0_older is None:
        D = x0_pred                                                       # first order (DPM-Solver++(1) = DDIM)
    else:
        r = h_older / h
        D = (1 + 1 / (2 * r)) * x0_pred - (1 / (2 * r)) * x0_older
    return (sigma_next / sigma) * x - math.sqrt(alpha_bar_next) * math.expm1(-h) * D, h


def dpmpp_2m(denoise, x, schedule, timesteps, generator=None, callback=None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2: multistep, data prediction, in lambda.

    With sigma = sqrt(1 - alpha_bar), lambda_ = log(sqrt(alpha_bar) / sigma) and h = lambda_next - lambda_:
        x_next = (sigma_next / sigma) x - sqrt(alpha_bar_next) (exp(-h) - 1) D
    where D = x0_pred on the first step (first order: DDIM) and (1 + 1/(2r)) x0_pred - 1/(2r) x0_older on
    every later step, r = h_older / h (x0_older, h_older: the previous step's). The last step goes to
    lambda_ = +inf, where the update is x_next = x0_pred. This is the published algorithm, as k-diffusion's
    sample_dpmpp_2m and diffusers' DPMSolverMultistepScheduler(solver_order=2, lower_order_final=True) run it.
    """
    timesteps = timesteps.tolist()
    x0_older, h_older = None, None
    for k, i in enumerate(timesteps):
        alpha_bar, alpha_bar_next = grid_alpha_bar(schedule, i), next_alpha_bar(schedule, timesteps, k)
        x0_pred, _ = denoise(x, i, alpha_bar)
        x, h_older = dpmpp_2m_step(x, x0_pred, alpha_bar, alpha_bar_next, x0_older, h_older)
        x0_older = x0_pred
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
    return x


# ------------------------------------------------------------------------------------------ Karras et al. 2022
# Karras et al. 2022, Algorithm 1 on dx_ve/dsigma_ve = (x_ve - D(x_ve; sigma_ve)) / sigma_ve, in "variance
# exploding" units x_ve = x / sqrt(alpha_bar) = x0 + sigma_ve eps, sigma_ve = sqrt((1 - alpha_bar) / alpha_bar).
# The step functions take and return x in the sampler's own (variance-preserving) units.
def _derivative(x, x0_pred, alpha_bar: float) -> Tensor:
    """d = (x_ve - D(x_ve; sigma_ve)) / sigma_ve, in VE units."""
    return (x / math.sqrt(alpha_bar) - x0_pred) / math.sqrt((1 - alpha_bar) / alpha_bar)


def euler_step(x, x0_pred, alpha_bar: float, alpha_bar_next: float) -> Tensor:
    """One Euler step of Karras et al. 2022, Algorithm 1 (lines 4-5), from alpha_bar to alpha_bar_next."""
    sigma_ve, sigma_ve_next = math.sqrt((1 - alpha_bar) / alpha_bar), math.sqrt((1 - alpha_bar_next) / alpha_bar_next)
    x_ve_next = x / math.sqrt(alpha_bar) + (sigma_ve_next - sigma_ve) * _derivative(x, x0_pred, alpha_bar)
    return x_ve_next * math.sqrt(alpha_bar_next)


def heun_step(x, x0_pred, x_euler, x0_pred_euler, alpha_bar: float, alpha_bar_next: float) -> Tensor:
    """Heun's correction, Karras et al. 2022, Algorithm 1 (lines 6-8): x_euler = euler_step(x, ...), and
    x0_pred_euler the network's x0 at x_euler (its second call). Not taken on a step to alpha_bar_next = 1."""
    sigma_ve, sigma_ve_next = math.sqrt((1 - alpha_bar) / alpha_bar), math.sqrt((1 - alpha_bar_next) / alpha_bar_next)
    d, d_next = _derivative(x, x0_pred, alpha_bar), _derivative(x_euler, x0_pred_euler, alpha_bar_next)
    x_ve_next = x / math.sqrt(alpha_bar) + (sigma_ve_next - sigma_ve) * 0.5 * (d + d_next)
    return x_ve_next * math.sqrt(alpha_bar_next)


def _karras_loop(denoise, x, schedule, timesteps, callback, second_order: bool) -> Tensor:
    timesteps = timesteps.tolist()
    for k, i in enumerate(timesteps):
        alpha_bar, alpha_bar_next = grid_alpha_bar(schedule, i), next_alpha_bar(schedule, timesteps, k)
        x0_pred, _ = denoise(x, i, alpha_bar)
        x_next = euler_step(x, x0_pred, alpha_bar, alpha_bar_next)
        if second_order and alpha_bar_next < 1.0:
            x0_pred_euler, _ = denoise(x_next, timesteps[k + 1], alpha_bar_next)
            x_next = heun_step(x, x0_pred, x_next, x0_pred_euler, alpha_bar, alpha_bar_next)
        x = x_next
        if callback:
            callback({"step": k, "i": i, "x": x, "x0_pred": x0_pred})
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
                guidance_scale: Optional[float] = None, prediction_type: Optional[PredictionType] = None,
                spacing: str = "leading", progress: bool = False) -> Tensor:
    """Encode x0 -> x_T by running the DDIM (eta = 0) ODE backwards over the same grid `sample` uses.

    Song et al. 2021 (DDIM), Sec. 4.3. `sample(..., sampler="ddim", steps=steps, x_T=ddim_invert(...))`
    decodes it back to x0 up to the ODE's discretisation error. x0: [B, C, H, W]; returns [B, C, H, W].
    """
    denoise = Denoiser(model, schedule, model_prediction_type(model, prediction_type), context, guidance_scale)
    ascending = schedule.timesteps(steps, spacing).flip(0).tolist()
    x = x0
    for k in tqdm(range(len(ascending)), disable=not progress, desc="ddim_invert"):
        # One step from alpha_bar (the previous grid point; 1.0 before the first) to alpha_bar_next. eps_pred is
        # read at the landing point (fractional on the "karras" grid), mirroring the sampler's use of eps(x_i).
        alpha_bar = grid_alpha_bar(schedule, ascending[k - 1]) if k > 0 else 1.0
        alpha_bar_next = grid_alpha_bar(schedule, ascending[k])
        _, eps_pred = denoise(x, ascending[k], alpha_bar_next)
        x0_pred = (x - math.sqrt(1 - alpha_bar) * eps_pred) / math.sqrt(alpha_bar)
        x = math.sqrt(alpha_bar_next) * x0_pred + math.sqrt(1 - alpha_bar_next) * eps_pred
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "euler": euler, "heun": heun}


# ------------------------------------------------------------------------------------------ sample()
@torch.no_grad()
def sample(model, schedule: NoiseSchedule, shape, sampler: str = "ddim", steps: Optional[int] = None,
           eta: float = 0.0, context: Optional[Tensor] = None, guidance_scale: Optional[float] = None,
           prediction_type: Optional[PredictionType] = None, x_T: Optional[Tensor] = None,
           generator: Optional[torch.Generator] = None, return_trajectory: bool = False, progress: bool = True,
           spacing: str = "leading", clip_x0: bool = False, dynamic_threshold: Optional[float] = None,
           uncond_context: Optional[Tensor] = None, variance: Variance = "beta", add_noise: bool = True,
           device=None, dtype: Optional[torch.dtype] = None,
           callback: Optional[Callable[[dict], None]] = None):
    """Draw samples of `shape` ([B, C, H, W]) from `model` under `schedule`.

    sampler: "ddpm" | "ddim" | "dpmpp_2m" | "euler" | "heun". steps: number of grid points (None:
    every step, T, for "ddpm"; 25 otherwise); spacing: the grid ("leading" | "trailing" | "linspace" |
    "karras", see NoiseSchedule.timesteps). The default "leading" is the DDIM paper's and diffusers' grid, so
    that results compare with theirs; the course's DDIM grid is "trailing", the better one with few steps.
    context: [B, ...] conditioning; guidance_scale w: classifier-free guidance (needs context).
    prediction_type: "epsilon" | "sample" | "v_prediction"; None: ``model.prediction_type`` when the model
    has one (a loaded model does), else "epsilon".
    eta: DDIM's noise (0..1). variance / add_noise: DDPM options.
    x_T: the starting noise [B, C, H, W]; else drawn with `generator`.
    Returns x0 samples [B, C, H, W]; with return_trajectory, (x0, trajectory) where trajectory is
    {"x": [x_T, x after each step], "x0_pred": [...], "timesteps": [...], "nfe": int}, tensors on the CPU.
    """
    prediction_type = model_prediction_type(model, prediction_type)
    shape, timesteps = check_sample_arguments(schedule, shape, sampler, steps, spacing, eta, variance, guidance_scale,
                                        context, dynamic_threshold, prediction_type, x_T)
    check_sampler_options(sampler, eta, variance, add_noise)
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


def check_sampler_options(sampler: str, eta: float, variance: str, add_noise: bool) -> None:
    """An option the sampler does not use must keep its default: a set value would be silently ignored."""
    used = {"ddpm": ("variance", "add_noise"), "ddim": ("eta",)}.get(sampler, ())
    for name, value, default in (("eta", eta, 0.0), ("variance", variance, "beta"), ("add_noise", add_noise, True)):
        if name not in used and value != default:
            raise ValueError(f"{name}={value!r} has no effect with sampler {sampler!r} (only "
                             f"{'ddim' if name == 'eta' else 'ddpm'} uses it): leave it at {default!r}")


def check_sample_arguments(schedule, shape, sampler, steps, spacing, eta, variance, guidance_scale, context,
                     dynamic_threshold, prediction_type, x_T=None):
    """Every check of sample()'s arguments, with errors that name the argument; returns (shape, timesteps)."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    shape = check_sampling_inputs(shape, x_T, context, guidance_scale)
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
    if dynamic_threshold is not None and not 0 < dynamic_threshold < 1:
        raise ValueError(f"dynamic_threshold must be a percentile in (0, 1), got {dynamic_threshold!r}")
    timesteps = schedule.timesteps(steps, spacing)
    first = timesteps[0].item()
    needs_x0_or_lambda = prediction_type == "epsilon" or sampler in ("dpmpp_2m", "euler", "heun")
    if grid_alpha_bar(schedule, first) == 0 and needs_x0_or_lambda:
        raise ValueError(f"spacing {spacing!r} starts at step {first}, where alpha_bar = 0 (zero terminal "
                         f"SNR): sampler {sampler!r} with prediction_type {prediction_type!r} cannot start there "
                         f"(x0 or lambda_ is undefined). Use sampler 'ddim' or 'ddpm' with prediction_type "
                         f"'v_prediction' (Lin et al. 2023), or spacing 'leading' or 'karras'")
    return shape, timesteps


def _starting_noise(shape, x_T, generator, device, dtype) -> Tensor:
    """x_T as given (checked by check_sampling_inputs), or N(0, I) drawn on the generator's device so a seed
    gives the same noise anywhere."""
    if x_T is None:
        return torch.randn(shape, generator=generator, dtype=dtype,
                           device=generator.device if generator is not None else device).to(device)
    return x_T.to(device=device, dtype=dtype)


def _device_and_dtype(model, device, dtype, x_T):
    """Where and in what dtype to sample: as asked; else the model's parameters'; else x_T's; else CPU float32.

    An asked device or dtype must be one the model computes on: a floating dtype on a device with data,
    and the parameters' own device and dtype (the model is not converted here; convert it first).
    """
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if parameter is not None and not parameter.is_floating_point():
        parameter = None
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    else:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1', ...), got {device!r}: "
                             f"{error}") from None
        if parameter is not None and (device.type != parameter.device.type or
                                      device.index not in (None, parameter.device.index)):
            raise ValueError(f"device={str(device)!r} but the model's parameters are on {parameter.device}: "
                             f"move the model first (model.to({str(device)!r})) or leave device=None")
    if device.type == "meta":
        raise ValueError("device='meta' (asked, or the model's) holds shapes but no values: sample on a real "
                         "device ('cpu', 'cuda') with a model whose weights are loaded")
    if dtype is None:
        dtype = parameter.dtype if parameter is not None else (x_T.dtype if x_T is not None else torch.float32)
    elif not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64, ...), "
                         f"got {dtype!r}")
    elif parameter is not None and dtype != parameter.dtype:
        raise ValueError(f"dtype={dtype} but the model's parameters are {parameter.dtype}: convert the model first "
                         f"(model.to({dtype})) or leave dtype=None")
    return torch.device(device), dtype
