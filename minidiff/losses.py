"""Training objectives.

`diffusion_loss` is the discrete-time objective of Ho et al. 2020 (Algorithm 1) for any of the three
targets a network may predict; `dsm_loss` (below, with the SDEs) is the denoising score matching
objective of Song et al. 2021, and `flow_loss` the conditional flow-matching objective on the linear
path (flow.py). All take the model, a clean batch x0 and the forward process, draw
their own noise and time, and return a scalar loss.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType
from .sde import check_t_min

Weighting = Literal["none", "min_snr"]
WEIGHTINGS = ("none", "min_snr")


def diffusion_loss(model, x0: Tensor, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon",
                   context: Optional[Tensor] = None, weighting: Weighting = "none", min_snr_gamma: float = 5.0,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Ho et al. 2020, Algorithm 1: i ~ U{0..T-1}, eps ~ N(0, I), regress the target at x_i.

    x0: [B, C, H, W] clean images in [-1, 1]. The target is eps ("epsilon"), x0 ("sample") or
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 ("v_prediction"). weighting="min_snr" applies
    the Min-SNR-gamma weights of Hang et al. 2023 (Eq. 8), expressed for each target.
    Returns a scalar: the mean over the batch of the per-sample mean squared error.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...], got shape {tuple(x0.shape)}")
    B = x0.shape[0]
    i = torch.randint(0, schedule.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_i = schedule.add_noise(x0, noise, i)
    t = schedule.model_time(i).to(device=x0.device, dtype=x0.dtype)
    output = model(x_i, t, context)

    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x0
    else:
        target = schedule.velocity(x0, noise, i)
    per_sample = F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)    # [B]

    if weighting == "min_snr":
        snr = (schedule.alphas_cumprod / (1 - schedule.alphas_cumprod))[i.cpu()].to(per_sample)
        clipped = snr.clamp(max=min_snr_gamma)
        # min(SNR, gamma) is the weight on the x0 error; dividing by the target's own SNR factor
        # expresses it for eps (/SNR) and v (/(SNR + 1)) targets.
        per_sample = per_sample * {"sample": clipped, "epsilon": clipped / snr, "v_prediction": clipped / (snr + 1)}[
            prediction_type]
    return per_sample.mean()


def dsm_loss(score_model, x0: Tensor, sde, t_min: float = 1e-5, context: Optional[Tensor] = None,
             likelihood_weighting: bool = False, generator: Optional[torch.Generator] = None, *,
             eps: Optional[float] = None) -> Tensor:
    """Denoising score matching for an SDE (Song et al. 2021, Eq. 7): t ~ U(t_min, 1), z ~ N(0, I).

    x_t = mean + std z is drawn from the SDE's kernel p_0t(x_t | x0), whose score is -z / std. With the
    weight lambda(t) = std(t)^2 (the seed tutorial) the per-sample loss is  sum (score * std + z)^2;
    likelihood_weighting=True uses lambda(t) = g(t)^2, which makes the loss a bound on the negative
    log-likelihood (Song, Durkan, Murray & Ermon 2021, Theorem 1).
    `eps=` is the deprecated old name of t_min.
    Returns a scalar: the mean over the batch of the per-sample sum over all other dimensions.
    """
    t_min = check_t_min(t_min, eps, "dsm_loss")
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...], got shape {tuple(x0.shape)}")
    B = x0.shape[0]
    t = (torch.rand(B, generator=generator, dtype=torch.float64) * (1 - t_min) + t_min).to(x0.device, x0.dtype)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    mean, std = sde.marginal_prob(x0, t)                 # std: [B, 1, ...]
    score = score_model(mean + std * z, t, context)
    if likelihood_weighting:
        _, g = sde.sde(x0, t)
        per_sample = ((score + z / std) ** 2 * g**2).flatten(1).sum(1)
    else:
        per_sample = ((score * std + z) ** 2).flatten(1).sum(1)
    return per_sample.mean()


def flow_loss(model, x0: Tensor, flow, context: Optional[Tensor] = None,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Conditional flow matching on the linear path (flow.py; Lipman et al. 2023, Liu et al. 2022, SD3 Sec. 2):
    t ~ flow.sample_time (uniform or logit-normal), eps ~ N(0, I), x_t = (1 - t) x0 + t eps, regress v = eps - x0.

    flow: a flow.RectifiedFlow. Returns a scalar: the mean over the batch of the per-sample mean squared error.
    """
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, ...], got shape {tuple(x0.shape)}")
    t = flow.sample_time(x0.shape[0], generator).to(x0.device, x0.dtype)            # [B]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    output = model(flow.add_noise(x0, noise, t), t, context)
    target = flow.velocity(x0, noise)
    return F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1).mean()
