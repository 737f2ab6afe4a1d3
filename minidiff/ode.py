"""ODE solvers written in torch: adaptive Dormand–Prince RK45 and fixed-step Euler, Heun and midpoint.

The probability-flow ODE sampler (sde.py), the likelihood (likelihood.py) and the flow samplers (flow.py) integrate
dy/dt = f(t, y) with these, where y is a batch [B, ...] and t a python float. Time may run
backwards (t1 < t0): sampling goes from t = 1 down to t_min, the likelihood from t_min up to 1.

Every solver returns (y at t1, the number of evaluations of f), so a caller can report the NFE.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

ODEFunc = Callable[[float, Tensor], Tensor]            # f(t, y) -> dy/dt, same shape as y
Callback = Optional[Callable[[float, Tensor], None]]   # called as callback(t, y) after every accepted step

# Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae", Table 5 (RK5(4)7M).
# Stage i is evaluated at t + C[i] h, y + h sum_j A[i][j] k_j. B5 weighs the 5th-order solution (the
# one we keep; it equals the last stage's argument, so that stage is the next step's first: "FSAL"),
# B4 the embedded 4th-order one; their difference estimates the local error.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0      # step-size controller (Hairer et al., Sec. II.4)


def dopri5_step(f: ODEFunc, t: float, y: Tensor, k1: Tensor, dt: float) -> Tuple[Tensor, Tensor, Tensor]:
    """One Dormand–Prince step of signed size dt from (t, y) with k1 = f(t, y): six new evaluations of f.

    Returns (y_new, the local error estimate y5 - y4, f(t + dt, y_new) = the next step's k1).
    """
    k = [k1]
    for i in range(1, 7):                                    # stages 2..7; stage 7 is f at the new point
        y_stage = y + dt * sum(a * kj for a, kj in zip(_A[i], k) if a != 0.0)
        k.append(f(t + _C[i] * dt, y_stage))
    y_new = y_stage                                          # = y + dt sum_j B5_j k_j (the last stage's argument)
    error = dt * sum(e * kj for e, kj in zip(_E, k) if e != 0.0)
    return y_new, error, k[6]


def rk45(f: ODEFunc, y0: Tensor, t0: float, t1: float, rtol: float = 1e-5, atol: float = 1e-5,
         callback: Callback = None, progress: bool = False, max_steps: int = 100_000) -> Tuple[Tensor, int]:
    """Adaptive Dormand–Prince RK5(4) from t0 to t1 (Dormand & Prince 1980; as scipy's solve_ivp "RK45").

    A step is accepted when every sample's RMS error, measured in units of atol + rtol |y|, is at
    most 1; the batch is stepped together, so the strictest sample sets the step size.
    Returns (y(t1), nfe).
    """
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    direction = 1.0 if t1 >= t0 else -1.0
    t, y = float(t0), y0
    k1 = f(t, y)
    h, nfe = _initial_step(f, t, y, k1, direction, abs(t1 - t0), rtol, atol)
    nfe += 1
    bar = tqdm(desc="rk45", disable=not progress, leave=False)
    for _ in range(max_steps):
        if direction * (t1 - t) <= 0:
            break
        h = min(h, abs(t1 - t))
        dt = direction * h
        y_new, error, k7 = dopri5_step(f, t, y, k1, dt)
        nfe += 6
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        error_norm = _rms_per_sample(error / scale).max().item()
        if error_norm <= 1.0:                                # accept
            t = t1 if h == abs(t1 - t) else t + dt
            y, k1 = y_new, k7
            bar.update(1)
            bar.set_postfix(t=f"{t:.4f}", nfe=nfe)
            if callback is not None:
                callback(t, y)
        # h_new = h * 0.9 * error^(-1/5), the exponent being 1 / (order of the embedded method + 1)
        factor = MAX_FACTOR if error_norm == 0 else SAFETY * error_norm ** -0.2
        factor = min(max(factor, MIN_FACTOR), MAX_FACTOR if error_norm <= 1.0 else 1.0)
        h = h * factor
        if h < 1e-12 * max(1.0, abs(t)):
            raise RuntimeError(f"rk45: step size underflow at t={t:.6g}; the ODE may be stiff or not finite")
    else:
        raise RuntimeError(f"rk45: no convergence within max_steps={max_steps} steps (reached t={t:.6g})")
    bar.close()
    return y, nfe


def heun(f: ODEFunc, y0: Tensor, ts: Sequence[float], callback: Callback = None,
         progress: bool = False) -> Tuple[Tensor, int]:
    """Heun's second-order method on the fixed grid ts (explicit trapezoidal rule; Karras et al. 2022, Alg. 1).

    Each step: d = f(t, y); Euler predictor y' = y + h d; corrector y += h (d + f(t_next, y')) / 2.
    Returns (y(ts[-1]), nfe = 2 * (len(ts) - 1)).
    """
    y, nfe = y0, 0
    for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc="heun", disable=not progress, leave=False):
        h = t_next - t
        d = f(t, y)
        y_euler = y + h * d
        d_next = f(t_next, y_euler)
        y = y + h * 0.5 * (d + d_next)
        nfe += 2
        if callback is not None:
            callback(t_next, y)
    return y, nfe


def euler(f: ODEFunc, y0: Tensor, ts: Sequence[float], callback: Callback = None,
          progress: bool = False) -> Tuple[Tensor, int]:
    """Euler's method on the fixed grid ts: y += (t_next - t) f(t, y). Returns (y(ts[-1]), nfe = len(ts) - 1)."""
    y, nfe = y0, 0
    for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc="euler", disable=not progress, leave=False):
        y = y + (t_next - t) * f(t, y)
        nfe += 1
        if callback is not None:
            callback(t_next, y)
    return y, nfe


def midpoint(f: ODEFunc, y0: Tensor, ts: Sequence[float], callback: Callback = None,
             progress: bool = False) -> Tuple[Tensor, int]:
    """The explicit midpoint rule on the fixed grid ts (second order; Hairer et al., Sec. II.1):
    y += h f(t + h/2, y + h/2 f(t, y)). Returns (y(ts[-1]), nfe = 2 * (len(ts) - 1))."""
    y, nfe = y0, 0
    for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc="midpoint", disable=not progress, leave=False):
        h = t_next - t
        y_half = y + 0.5 * h * f(t, y)
        y = y + h * f(t + 0.5 * h, y_half)
        nfe += 2
        if callback is not None:
            callback(t_next, y)
    return y, nfe


def _rms_per_sample(v: Tensor) -> Tensor:
    """Root mean square over all but the batch dimension: [B, ...] -> [B]."""
    return v.flatten(1).pow(2).mean(1).sqrt()


def _initial_step(f: ODEFunc, t0: float, y0: Tensor, f0: Tensor, direction: float, span: float,
                  rtol: float, atol: float) -> Tuple[float, int]:
    """A first step size from one trial Euler step (Hairer, Nørsett & Wanner, Sec. II.4). Returns (h, nfe=1)."""
    scale = atol + rtol * y0.abs()
    d0 = _rms_per_sample(y0 / scale).max().item()
    d1 = _rms_per_sample(f0 / scale).max().item()
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = f(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms_per_sample((f1 - f0) / scale).max().item() / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, span)
    if not math.isfinite(h) or h <= 0:
        raise RuntimeError(f"rk45: could not choose a first step (got {h}); is the ODE finite at t={t0}?")
    return h, 1
