"""Exact log-likelihoods (in bits per dimension) through the probability-flow ODE.

Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.3 and App. D.2; the
instantaneous change of variables of Chen et al. 2018 ("Neural ODEs", Theorem 1).

Run the probability-flow ODE dx/dt = f_tilde(x, t) (Eq. 13) from the data at t = t_min up to t = 1.
The log-density along the path obeys  d log p_t(x(t)) / dt = -div f_tilde(x(t), t),  so

    log p_t_min(x) = log p_1(x(1)) + int_t_min^1 div f_tilde(x(t), t) dt,

with log p_1 the prior's log-density. The divergence (the trace of the drift's Jacobian) is computed
exactly with one backward pass per dimension, or estimated as z^T (d f_tilde / dx) z with a probe z
of Rademacher or Gaussian entries, drawn once per call (Skilling 1989, Hutchinson 1990; FFJORD).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor

from .ode import rk45
from .sde import SDE, check_t_min
from .tensors import batch_time, randn

TraceMethod = Literal["rademacher", "gaussian", "exact"]
TRACE_METHODS = ("rademacher", "gaussian", "exact")


def log_likelihood(score_model, sde: SDE, x: Tensor, *, context: Optional[Tensor] = None,
                   trace: TraceMethod = "rademacher", t_min: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5,
                   dequantize: bool = False, generator: Optional[torch.Generator] = None,
                   return_info: bool = False, progress: bool = False, eps: Optional[float] = None):
    """Bits per dimension of each sample of x [B, ...] under the model's probability-flow ODE.

    trace: "rademacher" or "gaussian" (a Hutchinson estimate: unbiased, one backward pass per
        evaluation) or "exact" (one backward pass per dimension; for small dimensions).
    dequantize=True treats x as 8-bit images (uint8 in [0, 255], or floats in [-1, 1] on the 8-bit
        grid), adds uniform noise within each of the 256 bins and reports the bits/dim of the discrete
        data: -log2 p(x_dequantized) / D + 7 (8 bits for the bins, minus 1 for the [-1, 1] scale).
    Without it the result is the continuous -log2 p_t_min(x) / D. `eps=` is the deprecated old name of t_min.
    Returns bpd [B]; with return_info=True, (bpd, info) where info = {"nfe": drift evaluations,
    "logp": log p_t_min(x) [B] in nats, "prior_logp": [B], "z": x(1), the latent}.
    """
    if trace not in TRACE_METHODS:
        raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
    t_min = check_t_min(t_min, eps, "log_likelihood")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, ...], got shape {tuple(x.shape)}")
    if dequantize:
        x = dequantize_8bit(x, generator)
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (or uint8 with dequantize=True), got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite: it holds NaN or inf")
    if context is not None and (context.ndim == 0 or context.shape[0] != x.shape[0]):
        raise ValueError(f"context must have batch size {x.shape[0]}, got shape {tuple(context.shape)}")
    B, D = x.shape[0], x[0].numel()
    probe = None if trace == "exact" else _probe(trace, x, generator)

    def augmented_drift(t: float, state: Tensor) -> Tensor:
        """d/dt of the state [x, int div] = [f_tilde(x, t), div f_tilde(x, t)], flattened to [B, D + 1]."""
        x_t = state[:, :D].reshape(x.shape)
        t_batch = batch_time(t, x_t)
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            drift = sde.probability_flow(x_t, t_batch, score_model(x_t, t_batch, context))   # Eq. 13
            div = _divergence(drift, x_t, probe)
        return torch.cat([drift.detach().flatten(1), div.detach()[:, None]], dim=1)

    was_training = getattr(score_model, "training", False)
    if was_training:
        score_model.eval()
    try:
        with torch.no_grad():
            state = torch.cat([x.flatten(1), x.new_zeros(B, 1)], dim=1)                    # [B, D + 1]
            state, nfe = rk45(augmented_drift, state, t_min, 1.0, rtol=rtol, atol=atol, progress=progress)
    finally:
        if was_training:
            score_model.train()
    z, integral_of_div = state[:, :D].reshape(x.shape), state[:, D]
    prior_logp = sde.prior_logp(z)
    logp = prior_logp + integral_of_div                     # log p_t_min(x) = log p_1(x(1)) + int div dt
    bpd = -logp / (D * math.log(2))
    if dequantize:
        bpd = bpd + 7.0
    if return_info:
        return bpd, {"nfe": nfe, "logp": logp, "prior_logp": prior_logp, "z": z}
    return bpd


def dequantize_8bit(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform dequantisation: 8-bit values k in {0..255} -> (k + u) / 256 with u ~ U(0, 1), rescaled to [-1, 1].

    x: uint8 in [0, 255], or floats in [-1, 1] on the grid k / 127.5 - 1. Returns a float tensor.
    """
    if x.dtype == torch.uint8:
        k = x.float()
    else:
        k = torch.round((x.float() + 1) * 127.5).clamp(0, 255)
    u = torch.rand(x.shape, generator=generator, device=generator.device if generator is not None else x.device)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return (2 * (k + u.to(x.device)) / 256 - 1).to(dtype)


def _probe(trace: str, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """The Hutchinson probe: entries +-1 with equal probability ("rademacher") or N(0, 1) ("gaussian")."""
    z = randn(x.shape, generator, x.device, x.dtype)
    return z.sign() if trace == "rademacher" else z


def _divergence(drift: Tensor, x: Tensor, probe: Optional[Tensor]) -> Tensor:
    """div_x drift per sample [B]: exact (probe None) or the Hutchinson estimate probe^T J probe."""
    if probe is not None:
        (vjp,) = torch.autograd.grad((drift * probe).sum(), x)           # probe^T J, [B, ...]
        return (vjp * probe).flatten(1).sum(1)
    flat = drift.flatten(1)                                              # [B, D]
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat.shape[1]):                                       # d drift_i / d x_i, one pass each
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        div = div + row.flatten(1)[:, i]
    return div
