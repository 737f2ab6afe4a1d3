"""Classifier-free guidance and the denoiser that every discrete-time sampler calls.

Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6:
    eps_guided = eps_uncond + w * (eps_cond - eps_uncond)
w = 0 is the unconditional model, w = 1 the conditional one, w > 1 pushes past it. The combination
is linear, so it is applied to the raw network output whatever the network predicts.

`Denoiser` wraps a network `model(x, t, context=None)` into the one question a sampler asks:
"given x at step index i (possibly fractional) with noise level alpha_bar, what are x0 and eps?"
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType, eps_from_x0, x0_eps_from_output
from .tensors import per_sample


def null_context_like(model, context: Tensor) -> Tensor:
    """The "no condition" context matching `context`, for the unconditional half of guidance.

    Float contexts (ContextUnet's one-hot vectors, text embeddings) use all zeros; integer class ids
    use the model's reserved null id, `model.null_id`. A model may define `null_context(context)`.
    """
    if hasattr(model, "null_context"):
        return model.null_context(context)
    if context.is_floating_point():
        return torch.zeros_like(context)
    null_id = getattr(model, "null_id", getattr(model, "num_classes", None))
    if null_id is not None:
        return torch.full_like(context, int(null_id))
    raise ValueError("guidance needs an unconditional context: pass uncond_context=, or give the model a "
                     "`null_id` attribute (its reserved null class id)")


def model_prediction_type(model, prediction_type: Optional[str] = None) -> str:
    """What `model`'s output is read as: `prediction_type` when given (it wins), else ``model.prediction_type``
    (set by the loaders from what a file records), else "epsilon"."""
    if prediction_type is None:
        prediction_type = getattr(model, "prediction_type", None) or "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def guided_output(model, x: Tensor, t: Tensor, context: Optional[Tensor], guidance_scale: Optional[float],
                  uncond_context: Optional[Tensor] = None) -> Tensor:
    """The network output, with classifier-free guidance when guidance_scale is given.

    Conditional and unconditional halves go through the network as ONE batch of size 2B.
    x: [B, ...], t: [B], context: [B, ...] or None. Returns [B, ...].
    """
    if guidance_scale is None or context is None:
        return model(x, t, context)
    if uncond_context is None:
        uncond_context = null_context_like(model, context)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, uncond_context]))
    cond, uncond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)               # Ho & Salimans Eq. 6


class Denoiser:
    """Turns a network into (x0_pred, eps_pred) at a step index i, with guidance and x0 clipping.

    clip_x0: clamp x0_pred to [-1, 1] (pixel-space images). dynamic_threshold: a percentile p in
    (0, 1): per sample, s = max(1, quantile(|x0|, p)) and x0 <- clamp(x0, -s, s) / s (Saharia et al.
    2022, Imagen Sec. 2.3). After clipping, eps_pred is recomputed so the pair stays consistent.
    `nfe` counts network evaluations (a guided call of 2B images counts once).
    """

    def __init__(self, model, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon",
                 context: Optional[Tensor] = None, guidance_scale: Optional[float] = None,
                 uncond_context: Optional[Tensor] = None, clip_x0: bool = False,
                 dynamic_threshold: Optional[float] = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.model, self.schedule, self.prediction_type = model, schedule, prediction_type
        self.context, self.guidance_scale, self.uncond_context = context, guidance_scale, uncond_context
        self.clip_x0, self.dynamic_threshold = clip_x0, dynamic_threshold
        self.nfe = 0

    def __call__(self, x: Tensor, i, alpha_bar: Optional[float] = None) -> Tuple[Tensor, Tensor]:
        """x: [B, ...] at step index i (int or float); returns (x0_pred, eps_pred), each [B, ...]."""
        if alpha_bar is None:
            alpha_bar = float(self.schedule.alpha_bar_at(float(i)))
        # t = (i + 1) / T (schedule.model_time), made directly on x's device: no host-to-device copy per step
        t = torch.full((x.shape[0],), (float(i) + 1) / self.schedule.T, device=x.device, dtype=x.dtype)
        output = guided_output(self.model, x, t, self.context, self.guidance_scale, self.uncond_context)
        self.nfe += 1
        return self.from_output(output, x, alpha_bar)

    def from_output(self, output: Tensor, x: Tensor, alpha_bar: float) -> Tuple[Tensor, Tensor]:
        """The network's (guided) output at x, noise level alpha_bar -> (x0_pred, eps_pred), clipped as asked."""
        x0, eps = x0_eps_from_output(output, x, alpha_bar, self.prediction_type)
        if self.clip_x0 or self.dynamic_threshold is not None:
            x0 = self._threshold(x0)
            eps = eps_from_x0(x, x0, alpha_bar)
        return x0, eps

    def _threshold(self, x0: Tensor) -> Tensor:
        if self.dynamic_threshold is None:
            return x0.clamp(-1, 1)
        s = torch.quantile(x0.abs().flatten(1).float(), self.dynamic_threshold, dim=1).clamp(min=1.0)
        s = per_sample(s.to(x0.dtype), x0)                             # [B, 1, 1, 1]
        return x0.clamp(-s, s) / s
