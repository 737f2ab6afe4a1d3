"""minidiff: a from-scratch, pure-PyTorch reference implementation of diffusion models.

    import minidiff as md
    s = md.NoiseSchedule.linear(T=1000)
    x = md.sample(model, s, (16, 3, 16, 16), sampler="ddim", steps=25)

The public names below are the contract of ../shared/DESIGN.md; the README's architecture map says
which file holds which concept.
"""

__version__ = "0.1.0"

from . import data, distill, exact, imaging, metrics, nn
from .checkpoint import load_checkpoint, load_model, load_pipeline, save_checkpoint
from .flow import RectifiedFlow, flow_log_likelihood, flow_sample
from .guidance import Denoiser, guided_output, null_context_like
from .likelihood import log_likelihood
from .losses import diffusion_loss, dsm_loss, flow_loss
from .pretrained import load_pretrained, save_pretrained
from .samplers import SAMPLERS, ddim_invert, ddim_step, ddpm_step, dpmpp_2m_step, euler_step, heun_step, sample
from .schedule import (
    NoiseSchedule,
    eps_from_x0,
    v_from_x0_eps,
    x0_eps_from_output,
    x0_eps_from_v,
    x0_from_eps,
)
from .sde import SDE, VESDE, VPSDE, SubVPSDE, as_score_model, sde_from_config
from .sde_samplers import sde_sample
from .stepper import Stepper
from .text import TextEncoder, Tokenizer
from .text_to_image import TextToImage
from .train import TrainConfig, Trainer

__all__ = [
    "NoiseSchedule", "sample", "SAMPLERS", "ddim_invert", "Stepper",
    "ddpm_step", "ddim_step", "dpmpp_2m_step", "euler_step", "heun_step",
    "Denoiser", "guided_output", "null_context_like", "diffusion_loss", "dsm_loss",
    "x0_from_eps", "eps_from_x0", "v_from_x0_eps", "x0_eps_from_v", "x0_eps_from_output",
    "SDE", "VESDE", "VPSDE", "SubVPSDE", "sde_sample", "log_likelihood", "as_score_model", "sde_from_config",
    "Trainer", "TrainConfig", "load_model", "load_pipeline", "load_checkpoint", "save_checkpoint",
    "save_pretrained", "load_pretrained",
    "RectifiedFlow", "flow_sample", "flow_loss", "flow_log_likelihood",
    "Tokenizer", "TextEncoder", "TextToImage",
    "data", "distill", "exact", "imaging", "metrics", "nn",
]
