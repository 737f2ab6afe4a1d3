"""minidiff: a from-scratch, pure-PyTorch reference implementation of diffusion models.

    import minidiff as md
    s = md.NoiseSchedule.linear(T=1000)
    x = md.sample(model, s, (16, 3, 16, 16), sampler="ddim", steps=25)
"""

__version__ = "0.1.0"

from .guidance import Denoiser, guided_output, null_context_like
from .losses import diffusion_loss
from .samplers import SAMPLERS, ddim_invert, sample
from .schedule import (
    NoiseSchedule,
    eps_from_x0,
    v_from_x0_eps,
    x0_eps_from_output,
    x0_eps_from_v,
    x0_from_eps,
)

__all__ = [
    "NoiseSchedule", "sample", "SAMPLERS", "ddim_invert",
    "Denoiser", "guided_output", "null_context_like", "diffusion_loss",
    "x0_from_eps", "eps_from_x0", "v_from_x0_eps", "x0_eps_from_v", "x0_eps_from_output",
]
