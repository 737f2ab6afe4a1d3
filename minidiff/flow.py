"""Flow matching on the linear (rectified-flow) path, and the flow ODE samplers.

Convention (Esser et al. 2024, "Scaling Rectified Flow Transformers" (SD3), Sec. 2 with a_t = 1 - t, b_t = t;
Liu et al. 2022, "Flow Straight and Fast", Eq. 1; Lipman et al. 2023, "Flow Matching", Sec. 4.1 with
sigma_min = 0 and t -> 1 - t):

    x_t = (1 - t) x0 + t eps,     eps ~ N(0, I),  t in [0, 1]:  t = 0 is the data, t = 1 the noise
    v   = d x_t / dt = eps - x0   the velocity a network v_theta(x_t, t) regresses:
                                  L = E_t E ||v_theta(x_t, t) - (eps - x0)||^2   (conditional flow matching)

Time runs the same way as the SDEs' (sde.py): sampling integrates dx/dt = v_theta(x, t) from t = 1 down
to t = 0. The network is called like every minidiff network, model(x, t, context) with t [B] the flow time.

Time sampling for training (SD3 Sec. 3.1): "uniform" t ~ U(0, 1), or "logit_normal": t = sigmoid(n),
n ~ N(logit_mean, logit_std^2), which puts more weight on the middle of the path.
Timestep shift for sampling (SD3 Sec. 5.3.2): t -> shift t / (1 + (shift - 1) t), shift > 1 spends more of
the grid at high noise (SD3 uses shift = 3 at 1024^2).

The relation to the discrete-time models (what `VelocityFromEps` / `EpsFromVelocity` implement). A VP state
x = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, divided by s = sqrt(alpha_bar) + sqrt(1 - alpha_bar), is a
point on the linear path,

    x / s = (1 - t) x0 + t eps    with  t = sqrt(1 - alpha_bar) / s,

and in these coordinates the eps and velocity predictions are the same information:

    v = (eps - x_t) / (1 - t),    eps = x_t + (1 - t) v,    x0 = x_t - t v.

A flow-Euler step x_t + (t' - t) v = (1 - t') x0_pred + t' eps_pred is DDIM's deterministic update
(Song et al. 2021, Eq. 12) written in the flow coordinates: flow-Euler on the grid t_k is DDIM on the grid
alpha_bar_k (tests/test_flow.py checks it to float64 precision with the exact model).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import ode
from .checks import check_int, check_sampling_inputs
from .guidance import guided_output
from .schedule import NoiseSchedule
from .sde import SDE
from .tensors import per_sample, randn

TimeSampling = Literal["uniform", "logit_normal"]
TIME_SAMPLINGS = ("uniform", "logit_normal")
FlowSampler = Literal["euler", "heun", "midpoint"]


class RectifiedFlow(SDE):
    """The linear path x_t = (1 - t) x0 + t eps (see the module docstring), the forward process of a flow model.

    It is an SDE like the others: the marginals of dx = -x / (1 - t) dt + sqrt(2 t / (1 - t)) dw are exactly
    N((1 - t) x0, t^2 I), so exact.ExactScore and the checkpoint's "sde" entry work with it unchanged. Flow
    models never integrate that SDE; they learn the velocity and use `flow_sample`.

    time_sampling: how training draws t ("uniform" | "logit_normal", SD3 Sec. 3.1, with logit_mean, logit_std).
    shift: the default timestep shift for sampling (1.0: none; SD3 Sec. 5.3.2).
    """

    prior_std = 1.0

    def __init__(self, time_sampling: TimeSampling = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0,
                 shift: float = 1.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if not (math.isfinite(logit_mean) and math.isfinite(logit_std) and logit_std > 0):
            raise ValueError(f"logit_mean must be finite and logit_std > 0, got {logit_mean}, {logit_std}")
        _check_shift(shift)
        self.time_sampling, self.logit_mean, self.logit_std, self.shift = time_sampling, logit_mean, logit_std, shift
        self._kwargs = {"time_sampling": time_sampling, "logit_mean": float(logit_mean),
                        "logit_std": float(logit_std), "shift": float(shift)}

    def sde(self, x, t):
        t = _per_sample(t, x)
        return -x / (1 - t), torch.sqrt(2 * t / (1 - t))      # c = 1 - t, s = t: f = c'/c, g^2 = (s^2)' - 2 f s^2

    def marginal_std(self, t):
        return torch.as_tensor(t, dtype=torch.float64).reshape(-1)

    def marginal_prob(self, x0, t):
        t = _per_sample(t, x0)
        return (1 - t) * x0, t                                      # x_t = (1 - t) x0 + t eps

    def sample_time(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n training times in (0, 1), float64 [n]: uniform, or sigmoid of N(logit_mean, logit_std^2)."""
        if self.time_sampling == "uniform":
            return torch.rand(n, generator=generator, dtype=torch.float64)
        n_ = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.sigmoid(self.logit_mean + self.logit_std * n_)     # logit-normal, SD3 Sec. 3.1

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 - t) x0 + t noise; t [B] or a number."""
        t = _per_sample(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity(x0: Tensor, noise: Tensor) -> Tensor:
        """The regression target v = d x_t / dt = noise - x0."""
        return noise - x0


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift (Sec. 5.3.2): t -> shift t / (1 + (shift - 1) t). Keeps 0 and 1; shift 1: identity."""
    return shift * t / (1 + (shift - 1) * t)


def flow_timesteps(steps: int, shift: float = 1.0) -> Tensor:
    """The sampling grid: steps + 1 times from 1 down to 0, uniform then shifted, float64 [steps + 1]."""
    check_int("steps", steps, 1)
    _check_shift(shift)
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


# ------------------------------------------------------------------------------------ the samplers
# Each is ode.<name>(f, x, ts): one step per grid interval, f = the (guided) velocity. Euler is DDIM (above);
# Heun (explicit trapezoid) and midpoint are second order and take two network calls a step.
FLOW_SAMPLERS = {"euler": ode.euler, "heun": ode.heun, "midpoint": ode.midpoint}


def flow_sample(model, flow: Optional[RectifiedFlow], shape, sampler: FlowSampler = "euler", steps: int = 10,
                shift: Optional[float] = None, context: Optional[Tensor] = None,
                guidance_scale: Optional[float] = None, uncond_context: Optional[Tensor] = None,
                x_T: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                timesteps: Optional[Sequence[float]] = None, return_trajectory: bool = False, progress: bool = False,
                device=None, dtype: Optional[torch.dtype] = None):
    """Integrate dx/dt = v(x, t) from t = 1 (x_T ~ N(0, I)) to t = 0 with `sampler` ("euler" | "heun" | "midpoint").

    model(x, t, context) -> velocity [B, ...]. flow: the RectifiedFlow the model was trained on (its `shift`
    is the default; None: no shift). steps: grid intervals (network calls: steps for Euler, 2 steps otherwise).
    timesteps: an explicit descending grid instead (e.g. one that stops above t = 0). guidance_scale:
    classifier-free guidance on the velocity (guidance.guided_output; the same linear combination).
    Returns x [B, ...]; with return_trajectory, (x, {"x": [x_T, after each step], "timesteps": [...], "nfe"}).
    """
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(FLOW_SAMPLERS)}, got {sampler!r}")
    shape = check_sampling_inputs(shape, x_T, context, guidance_scale)
    if timesteps is None:
        shift = (flow.shift if flow is not None else 1.0) if shift is None else shift
        timesteps = flow_timesteps(steps, shift)
    ts = [float(t) for t in timesteps]
    if len(ts) < 2 or any(not 0 <= t <= 1 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be >= 2 strictly decreasing times in [0, 1], got {ts}")
    if device is None or dtype is None:
        param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        ref = x_T if x_T is not None else param
        device = device or (ref.device if ref is not None else "cpu")
        dtype = dtype or (ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    x = x_T.to(device, dtype) if x_T is not None else randn(shape, generator, device, dtype)
    context = context.to(device) if context is not None else None
    uncond_context = uncond_context.to(device) if uncond_context is not None else None
    nfe = 0

    def velocity(t: float, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        t_batch = torch.full((y.shape[0],), t, device=y.device, dtype=y.dtype)
        return guided_output(model, y, t_batch, context, guidance_scale, uncond_context)

    trajectory = [x.cpu()] if return_trajectory else []
    bar = tqdm(total=len(ts) - 1, desc=f"flow {sampler}", disable=not progress, leave=False)

    def on_step(t: float, y: Tensor) -> None:
        bar.update(1)
        if return_trajectory:
            trajectory.append(y.cpu())

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            x, _ = FLOW_SAMPLERS[sampler](velocity, x, ts, callback=on_step)
    finally:
        bar.close()
        if was_training:
            model.train()
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"flow sampler {sampler!r} produced NaN or inf (the model's output is not finite)")
    if return_trajectory:
        return x, {"x": trajectory, "timesteps": ts, "nfe": nfe}
    return x


# ------------------------------------------------------------------------------------ eps <-> velocity
class VelocityFromEps(nn.Module):
    """A discrete-time eps network as a velocity network on the linear path (module docstring):

    at flow time t: alpha_bar = (1 - t)^2 / ((1 - t)^2 + t^2), x_vp = x / sqrt((1 - t)^2 + t^2) (the same point
    rescaled), eps = eps_model(x_vp, network time of alpha_bar), v = (eps - x) / (1 - t).
    The network time is the schedule's fractional step (NoiseSchedule.step_index_from_sigma). t < 1 only.
    """

    def __init__(self, eps_model, schedule: NoiseSchedule):
        super().__init__()
        self.eps_model, self.schedule = eps_model, schedule

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()
        s = torch.sqrt((1 - t64) ** 2 + t64**2)                      # x_vp = x / s            [B]
        i = self.schedule.step_index_from_sigma(t64 / (1 - t64))     # sigma_ve = sigma / sqrt(alpha_bar) = t / (1 - t)
        t_net = ((i + 1) / self.schedule.T).to(x.device, x.dtype)
        x_vp = x / _per_sample(s, x)
        eps = self.eps_model(x_vp, t_net, context)
        return (eps - x) / _per_sample(1 - t64, x)       # v = (eps - x_t) / (1 - t)


class EpsFromVelocity(nn.Module):
    """A velocity network as a discrete-time eps network under `schedule` (the inverse of VelocityFromEps):

    at network time t_net: alpha_bar = schedule.alpha_bar_at_time(t_net), flow time t = sqrt(1 - ab) / s with
    s = sqrt(ab) + sqrt(1 - ab), x_flow = x / s, eps = x_flow + (1 - t) v(x_flow, t).
    """

    def __init__(self, velocity_model, schedule: NoiseSchedule):
        super().__init__()
        self.velocity_model, self.schedule = velocity_model, schedule

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        alpha_bar = self.schedule.alpha_bar_at_time(t).reshape(-1)             # float64 [B]
        s = alpha_bar.sqrt() + (1 - alpha_bar).sqrt()
        t_flow = (1 - alpha_bar).sqrt() / s
        x_flow = x / _per_sample(s, x)
        v = self.velocity_model(x_flow, t_flow.to(x.device, x.dtype), context)
        return x_flow + _per_sample(1 - t_flow, x) * v             # eps = x_t + (1 - t) v


def flow_time_of_alpha_bar(alpha_bar) -> Tensor:
    """The flow time of a VP noise level: t = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)), float64."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return (1 - alpha_bar).sqrt() / (alpha_bar.sqrt() + (1 - alpha_bar).sqrt())


# ------------------------------------------------------------------------------------ likelihood
def flow_log_likelihood(model, x: Tensor, *, context: Optional[Tensor] = None, trace: str = "exact",
                        rtol: float = 1e-6, atol: float = 1e-6, generator: Optional[torch.Generator] = None,
                        return_info: bool = False):
    """log p_0(x) in nats per sample [B] through the flow ODE (continuous change of variables, Chen et al. 2018):

    integrate [x, int div v] from t = 0 to 1 with dx/dt = v(x, t); log p_0(x) = log N(x(1); 0, I) + int_0^1 div v dt.
    trace: "exact" (one backward pass per dimension) or a Hutchinson probe ("rademacher" | "gaussian"), as in
    likelihood.log_likelihood. With return_info: (logp, {"nfe", "z"}).
    """
    from .likelihood import TRACE_METHODS, _divergence, _probe
    if trace not in TRACE_METHODS:
        raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
    if x.ndim < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(f"x must be a non-empty float batch [B, ...], got {x.dtype} {tuple(x.shape)}")
    B, D = x.shape[0], x[0].numel()
    probe = None if trace == "exact" else _probe(trace, x, generator)

    def augmented(t: float, state: Tensor) -> Tensor:
        x_t = state[:, :D].reshape(x.shape)
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            v = model(x_t, torch.full((B,), t, dtype=x.dtype, device=x.device), context)
            div = _divergence(v, x_t, probe)
        return torch.cat([v.detach().flatten(1), div.detach()[:, None]], dim=1)

    with torch.no_grad():
        state = torch.cat([x.flatten(1), x.new_zeros(B, 1)], dim=1)             # [B, D + 1]
        state, nfe = ode.rk45(augmented, state, 0.0, 1.0, rtol=rtol, atol=atol)
    z = state[:, :D].reshape(x.shape)
    logp = RectifiedFlow().prior_logp(z) + state[:, D]                         # log N(x(1); 0, I) + int div v dt
    return (logp, {"nfe": nfe, "z": z}) if return_info else logp


def _check_shift(shift) -> None:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def _per_sample(v, like: Tensor) -> Tensor:
    """A number or a [B] tensor as a tensor that broadcasts against like [B, ...] (like's device and dtype)."""
    v = torch.as_tensor(v, device=like.device, dtype=like.dtype)
    return v.reshape(()) if v.numel() == 1 else per_sample(v, like)
