"""Sampling from a score model by reversing an SDE: Euler–Maruyama, predictor–corrector, probability-flow ODE.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"; "Eq. n" is
that paper's equation n, symbols as in sde.py. Each sampler is a plain function with one signature,

    sampler(score, sde, x, ts, generator=None, callback=None, progress=False, **options) -> x

where `score(x, t)` is the model behind guidance (GuidedScore), x starts at the prior and `ts` is the
descending time grid from 1 to t_min. `callback(info)` is called after each step with a dict like the one
`sample`'s callback gets: {"step", "t", "t_next", "x", "x0_pred"}, SDE time t where `sample` has the step
index i; x is at time t_next after the step from t, and x0_pred = E[x(0) | x(t)] comes from the score at t
(Tweedie's formula, SDE.x0_from_score). SDE_SAMPLERS maps the names `sde_sample` accepts to them.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_int, check_sampling_inputs
from .guidance import guided_output
from .ode import heun, rk45
from .sde import SDE, check_t_min
from .tensors import batch_time, per_sample, randn


class GuidedScore:
    """score(x, t) as the samplers call it: the model with its context and classifier-free guidance
    (guidance.guided_output: score = s_uncond + w (s_cond - s_uncond), one batch of 2B), counting calls."""

    def __init__(self, score_model, context=None, guidance_scale=None, uncond_context=None):
        self.model, self.context = score_model, context
        self.guidance_scale, self.uncond_context = guidance_scale, uncond_context
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return guided_output(self.model, x, t, self.context, self.guidance_scale, self.uncond_context)


def euler_maruyama(score, sde: SDE, x: Tensor, ts: Sequence[float], generator=None, callback=None,
                   progress=False, **_) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE (Eq. 6) over the grid ts (descending); no noise on the last step."""
    last = len(ts) - 2
    for k in tqdm(range(len(ts) - 1), desc="euler_maruyama", disable=not progress, leave=False):
        t, h = batch_time(ts[k], x), ts[k] - ts[k + 1]
        s = score(x, t)
        drift, g = sde.reverse(x, t, s)
        x_next = x - drift * h                                             # dt = -h: time runs backwards
        if k < last:
            x_next = x_next + g * math.sqrt(h) * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(_step_info(k, ts, x_next, sde.x0_from_score(x, t, s)))
        x = x_next
    return x


def predictor_corrector(score, sde: SDE, x: Tensor, ts: Sequence[float], generator=None, callback=None,
                        progress=False, snr: float = 0.16, corrector_steps: int = 1, **_) -> Tensor:
    """PC sampling (Algorithm 1): Langevin corrector steps at t (Algorithms 4-5), then a reverse-diffusion
    predictor step to the next t (App. E); no noise on the last predictor step.

    The Langevin step size is 2 alpha (snr ||z|| / ||score||)^2 with both norms averaged over the batch,
    as in Song et al.'s code and the seed tutorial.
    """
    last = len(ts) - 2
    for k in tqdm(range(len(ts) - 1), desc="pc", disable=not progress, leave=False):
        t, h = batch_time(ts[k], x), ts[k] - ts[k + 1]
        for _ in range(corrector_steps):                                   # Langevin corrector
            s = score(x, t)
            z = randn(x.shape, generator, x.device, x.dtype)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp(min=1e-30)
            step = per_sample(2 * sde.langevin_alpha(t, h) * (snr * ratio) ** 2, x)
            x = x + step * s + torch.sqrt(2 * step) * z
        f, G = sde.discretize(x, t, h)                                     # reverse-diffusion predictor
        s = score(x, t)
        x_next = x - f + G**2 * s
        if k < last:
            x_next = x_next + G * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(_step_info(k, ts, x_next, sde.x0_from_score(x, t, s)))
        x = x_next
    return x


def probability_flow(score, sde: SDE, x: Tensor, ts: Sequence[float], generator=None, callback=None,
                     progress=False, ode_solver: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5,
                     with_x0_pred: bool = False, **_) -> Tensor:
    """Solve the probability-flow ODE (Eq. 13) from ts[0] to ts[-1]: adaptive RK45 (which ignores the
    grid in between) or fixed-step Heun on the grid. The callback's x0_pred is None unless with_x0_pred:
    then it costs one more score call per step (the solvers' own calls are not at the step's start alone)."""

    def drift(t: float, y: Tensor) -> Tensor:
        t_batch = batch_time(t, y)
        return sde.probability_flow(y, t_batch, score(y, t_batch))

    start = {"k": 0, "t": ts[0], "x": x}                                   # the accepted step's starting point

    def on_step(t_next: float, y: Tensor) -> None:
        x0_pred = None
        if with_x0_pred:
            t_batch = batch_time(start["t"], y)
            x0_pred = sde.x0_from_score(start["x"], t_batch, score(start["x"], t_batch))
        callback({"step": start["k"], "t": start["t"], "t_next": t_next, "x": y, "x0_pred": x0_pred})
        start.update(k=start["k"] + 1, t=t_next, x=y)

    step_callback = on_step if callback is not None else None
    if ode_solver == "rk45":
        x, _ = rk45(drift, x, ts[0], ts[-1], rtol=rtol, atol=atol, callback=step_callback, progress=progress)
    else:
        x, _ = heun(drift, x, ts, callback=step_callback, progress=progress)
    return x


Method = Literal["euler_maruyama", "pc", "ode"]
SDE_SAMPLERS = {"euler_maruyama": euler_maruyama, "pc": predictor_corrector, "ode": probability_flow}
ODE_SOLVERS = ("rk45", "heun")


def sde_sample(score_model, sde: SDE, shape: Sequence[int], method: Method = "euler_maruyama", steps: int = 500,
               t_min: float = 1e-3, context: Optional[Tensor] = None, x_T: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, progress: bool = True, *,
               guidance_scale: Optional[float] = None, uncond_context: Optional[Tensor] = None,
               snr: float = 0.16, corrector_steps: int = 1, ode_solver: str = "rk45",
               rtol: float = 1e-5, atol: float = 1e-5, return_trajectory: bool = False,
               return_info: bool = False, device=None, callback: Optional[Callable[[dict], None]] = None,
               eps: Optional[float] = None):
    """Draw samples [B, ...] = shape by running `sde` backwards from its prior at t = 1 to t = t_min.

    method: "euler_maruyama" (steps steps), "pc" (steps predictor steps, each after `corrector_steps`
        Langevin steps with signal-to-noise ratio `snr`), or "ode" (the probability-flow ODE, with
        ode_solver "rk45" to tolerances rtol/atol, which ignores `steps`, or "heun" with `steps` steps).
        Options of the other methods are ignored.
    score_model(x, t, context) returns the score; x_T replaces the prior draw; guidance_scale turns on
    classifier-free guidance (see guidance.py for the null context; or pass uncond_context). `eps=` is the
    deprecated old name of t_min.
    Returns x. With return_trajectory=True or return_info=True, returns (x, info), info a dict with
    "nfe" (score-model calls; a guided call of 2B counts once) and, for return_trajectory, "x" (CPU
    tensors: x at t = 1 and after every step, or every accepted RK45 step) and "t" (their times).
    callback(info), as in `sample`, is called after every step with {"step", "t", "t_next", "x", "x0_pred"}
    (see the module docstring); with method "ode" each x0_pred costs one more score call (counted in nfe).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if method not in SDE_SAMPLERS:
        raise ValueError(f"method must be one of {tuple(SDE_SAMPLERS)}, got {method!r}")
    if ode_solver not in ODE_SOLVERS:
        raise ValueError(f"ode_solver must be one of {ODE_SOLVERS}, got {ode_solver!r}")
    check_int("steps", steps, minimum=1)
    check_int("corrector_steps", corrector_steps, minimum=0)
    t_min = check_t_min(t_min, eps, "sde_sample")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    shape = check_sampling_inputs(shape, x_T, context, guidance_scale)

    device = device if device is not None else (x_T.device if x_T is not None else _model_device(score_model))
    x = x_T.to(device) if x_T is not None else sde.prior_sample(shape, generator, device)
    ts = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64).tolist()  # descending: 1 .. t_min
    score = GuidedScore(score_model, context, guidance_scale, uncond_context)
    info = {"nfe": 0, "x": [x.detach().cpu()], "t": [ts[0]]} if return_trajectory else {"nfe": 0}

    def on_step(step: dict) -> None:
        if return_trajectory:
            info["x"].append(step["x"].detach().cpu())
            info["t"].append(step["t_next"])
        if callback is not None:
            callback(step)

    was_training = getattr(score_model, "training", False)
    if was_training:
        score_model.eval()                                                 # dropout off while sampling
    try:
        with torch.no_grad():
            x = SDE_SAMPLERS[method](score, sde, x, ts, generator=generator,
                                     callback=on_step if return_trajectory or callback else None,
                                     progress=progress, snr=snr, corrector_steps=corrector_steps,
                                     ode_solver=ode_solver, rtol=rtol, atol=atol, with_x0_pred=callback is not None)
    finally:
        if was_training:
            score_model.train()
    if not torch.isfinite(x).all():                                        # one cheap check, at the end
        raise FloatingPointError(f"sde_sample method {method!r} with steps={steps} produced NaN or inf (the score "
                                 f"model's output is not finite, the steps are too coarse, or {x.dtype} overflowed)")
    info["nfe"] = score.nfe
    return (x, info) if return_trajectory or return_info else x


# ==================================================================== helpers
def _step_info(k: int, ts: Sequence[float], x: Tensor, x0_pred: Tensor) -> dict:
    return {"step": k, "t": ts[k], "t_next": ts[k + 1], "x": x, "x0_pred": x0_pred}



def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")
