"""Bad input on every public entry point gets a clear exception that names the argument and what it accepts.

This is the one bad-input suite: one table per part of the package: schedules, `sample`, the SDEs and their
samplers, likelihood and losses, the networks (constructors and calls), the metrics, the data loaders, the
Trainer, the command line. Each row is (id, call, exception, pattern);
`pattern` is matched against the message, so every row checks that the message names the argument (and,
where there is one, the accepted range). Rows are lambdas: nothing is built until the row runs.

Beside the errors, two behaviours are pinned down on purpose:
  * a network maps an empty batch [0, C, H, W] to an empty batch, like every torch layer; the entry
    points that draw, average or train over a batch (sample, sde_sample, log_likelihood, the losses,
    the Trainer) refuse B = 0 instead;
  * NaN checks are one reduction per call, never per step: x_T and float contexts at the start of
    `sample`, the sample at its end (FloatingPointError naming the sampler and step count), x for
    `log_likelihood`, and the loss and gradient norm of every training step.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff import model_table
from minidiff.cli import main as cli_main
from minidiff.data import (
    ImageFolder,
    ProceduralDigits,
    ProceduralSprites,
    SpritesDataset,
    from_uint8_images,
    to_uint8_images,
)
from minidiff.exact import ExactModel, ExactScore, GaussianMixture
from minidiff.metrics import frechet_distance
from minidiff.nn import (
    AutoEncoder,
    ConditionalScoreUNet,
    ContextUnet,
    GaussianFourierProjection,
    LatentScoreUNet,
    ResidualConvBlock,
    ResidualScoreUNet,
    ScoreUNet,
)
from minidiff.train import TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")
T_MIN_RANGE = r"t_min must lie in the open interval \(0, 1\)"
S = md.NoiseSchedule.linear(T=20)
ZERO_SNR = md.NoiseSchedule.linear(T=20, zero_terminal_snr=True)
EPS_MODEL = ExactModel(GaussianMixture([0.5], [0.3]), S)
VE = md.VESDE(sigma=25.0)


exact_score = ExactScore(GaussianMixture([0.0], [1.0]), VE)   # the exact VE score of N(0, I) data


def row(id_, call, error, match):
    return pytest.param(call, error, match, id=id_)


def check(call, error, match):
    with pytest.raises(error, match=match):
        call()


def sample(**kwargs):
    """md.sample on the exact Gaussian model, shape (2, 1), 5 steps, with the row's changes."""
    args = {"model": EPS_MODEL, "schedule": S, "shape": (2, 1), "steps": 5, "progress": False, **kwargs}
    return md.sample(**args)


def sde_sample(**kwargs):
    args = {"score_model": exact_score, "sde": VE, "shape": (2, 1), "steps": 3, "progress": False, **kwargs}
    return md.sde_sample(**args)


# ====================================================================================== schedules
SCHEDULE_ROWS = [
    row("linear T=0", lambda: md.NoiseSchedule.linear(T=0), ValueError, r"T must be an integer >= 1, got 0"),
    row("linear T=-5", lambda: md.NoiseSchedule.linear(T=-5), ValueError, r"T must be an integer >= 1"),
    row("linear T=2.5", lambda: md.NoiseSchedule.linear(T=2.5), ValueError, r"T must be an integer >= 1"),
    row("linear T=True", lambda: md.NoiseSchedule.linear(T=True), ValueError, r"T must be an integer >= 1"),
    row("linear T='10'", lambda: md.NoiseSchedule.linear(T="10"), ValueError, r"T must be an integer >= 1"),
    row("linear beta_start=0", lambda: md.NoiseSchedule.linear(beta_start=0.0), ValueError,
        r"beta_start must lie in the open interval \(0, 1\)"),
    row("linear beta_start=nan", lambda: md.NoiseSchedule.linear(beta_start=NAN), ValueError,
        r"beta_start must lie in the open interval \(0, 1\)"),
    row("linear beta_end=1", lambda: md.NoiseSchedule.linear(beta_end=1.0), ValueError,
        r"beta_end must lie in the open interval \(0, 1\)"),
    row("scaled_linear beta_end<0", lambda: md.NoiseSchedule.scaled_linear(beta_end=-0.1), ValueError,
        r"beta_end must lie in the open interval \(0, 1\)"),
    row("scaled_linear T=0", lambda: md.NoiseSchedule.scaled_linear(T=0), ValueError, r"T must be an integer >= 1"),
    row("cosine s<0", lambda: md.NoiseSchedule.cosine(s=-0.1), ValueError, r"s must be >= 0"),
    row("cosine s=nan", lambda: md.NoiseSchedule.cosine(s=NAN), ValueError, r"s must be >= 0"),
    row("cosine max_beta=0", lambda: md.NoiseSchedule.cosine(max_beta=0.0), ValueError,
        r"max_beta must lie in \(0, 1\)"),
    row("cosine max_beta=nan", lambda: md.NoiseSchedule.cosine(max_beta=NAN), ValueError,
        r"max_beta must lie in \(0, 1\)"),
    row("cosine max_beta=1", lambda: md.NoiseSchedule.cosine(max_beta=1.0), ValueError,
        r"max_beta must lie in \(0, 1\)"),
    row("from_betas empty", lambda: md.NoiseSchedule.from_betas([]), ValueError, r"betas must be a 1-D tensor"),
    row("from_betas 2-D", lambda: md.NoiseSchedule.from_betas([[0.1]]), ValueError, r"betas must be a 1-D tensor"),
    row("from_betas text", lambda: md.NoiseSchedule.from_betas("abc"), ValueError, r"betas must be a 1-D sequence"),
    row("from_betas nan", lambda: md.NoiseSchedule.from_betas([0.1, NAN]), ValueError,
        r"betas must lie in the open interval \(0, 1\)"),
    row("from_betas inf", lambda: md.NoiseSchedule.from_betas([0.1, INF]), ValueError,
        r"betas must lie in the open interval \(0, 1\)"),
    row("from_betas negative", lambda: md.NoiseSchedule.from_betas([0.5, -0.1]), ValueError,
        r"betas must lie in the open interval \(0, 1\)"),
    row("from_betas 1", lambda: md.NoiseSchedule.from_betas([0.5, 1.0]), ValueError,
        r"betas must lie in the open interval \(0, 1\)"),
    row("from_betas 0", lambda: md.NoiseSchedule.from_betas([0.1, 0.0]), ValueError,
        r"betas must lie in the open interval \(0, 1\)"),
    row("from_betas 1e-300", lambda: md.NoiseSchedule.from_betas([1e-300, 0.1]), ValueError,
        r"betas must be > 1.1e-16"),
    row("alpha_bar underflow", lambda: md.NoiseSchedule.linear(T=2000, beta_start=0.5, beta_end=0.6), ValueError,
        r"betas make alpha_bar underflow to 0 \(T=2000"),
    row("zero_terminal_snr with T=1", lambda: md.NoiseSchedule.linear(T=1, zero_terminal_snr=True), ValueError,
        r"zero_terminal_snr needs T >= 2"),
    row("karras with one usable level", lambda: md.NoiseSchedule.linear(T=2, zero_terminal_snr=True).timesteps(
        2, "karras"), ValueError, r"spacing 'karras' needs two distinct noise levels.*steps must be 1, got 2"),
    row("add_noise i=-1", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([-1, 0])), ValueError,
        r"step index i must lie in \[0, T-1\] = \[0, 19\]"),
    row("add_noise i=T", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 3), 20), ValueError,
        r"step index i must lie in \[0, T-1\] = \[0, 19\]"),
    row("add_noise float i", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0.5, 1.0])),
        ValueError, r"step index i must be an integer tensor"),
    row("add_noise i wrong batch", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 1, 2])),
        ValueError, r"step index i must have shape \[B\] = \[2\]"),
    row("add_noise i 2-D", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(1, 2, dtype=torch.long)),
        ValueError, r"step index i must have shape \[B\] = \[2\]"),
    row("add_noise noise shape", lambda: S.add_noise(torch.ones(2, 3), torch.ones(2, 4), 0), ValueError,
        r"x0 and noise must have the same shape"),
    row("velocity i=T", lambda: S.velocity(torch.ones(2, 3), torch.ones(2, 3), 20), ValueError,
        r"step index i must lie in \[0, T-1\]"),
    row("q_posterior i=-1", lambda: S.q_posterior(torch.ones(2, 3), torch.ones(2, 3), -1), ValueError,
        r"step index i must lie in \[0, T-1\]"),
    row("timesteps 0", lambda: S.timesteps(0), ValueError, r"steps must be an integer in \[1, T\] = \[1, 20\], got 0"),
    row("timesteps T+1", lambda: S.timesteps(21), ValueError, r"steps must be an integer in \[1, T\] = \[1, 20\]"),
    row("timesteps 2.5", lambda: S.timesteps(2.5), ValueError, r"steps must be an integer in \[1, T\]"),
    row("timesteps True", lambda: S.timesteps(True), ValueError, r"steps must be an integer in \[1, T\]"),
    row("timesteps '5'", lambda: S.timesteps("5"), ValueError, r"steps must be an integer in \[1, T\]"),
    row("timesteps spacing", lambda: S.timesteps(5, "uniform"), ValueError,
        r"spacing must be one of \('leading', 'trailing', 'linspace', 'karras'\)"),
    row("alpha_bar_at -1", lambda: S.alpha_bar_at(-1.0), ValueError, r"step index must lie in \[0, T-1\] = \[0, 19\]"),
    row("alpha_bar_at T", lambda: S.alpha_bar_at(20.0), ValueError, r"step index must lie in \[0, T-1\]"),
    row("alpha_bar_at nan", lambda: S.alpha_bar_at(NAN), ValueError, r"step index must lie in \[0, T-1\]"),
    row("x0_eps_from_output type", lambda: md.x0_eps_from_output(torch.ones(1), torch.ones(1), 0.5, "score"),
        ValueError, r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"),
]


@pytest.mark.parametrize("call, error, match", SCHEDULE_ROWS)
def test_schedule_bad_input(call, error, match):
    check(call, error, match)


# ====================================================================================== sample()
def _nan_model(x, t, context=None):
    return x * NAN


def _inf_model(x, t, context=None):
    return torch.full_like(x, INF)


SAMPLE_ROWS = [
    row("schedule not a NoiseSchedule", lambda: sample(schedule="linear"), TypeError,
        r"schedule must be a NoiseSchedule"),
    row("shape 1-D", lambda: sample(shape=(4,)), ValueError, r"shape must have at least 2 positive dimensions"),
    row("shape empty batch", lambda: sample(shape=(0, 1)), ValueError, r"shape must have at least 2 positive"),
    row("shape negative", lambda: sample(shape=(2, -1)), ValueError, r"shape must have at least 2 positive"),
    row("shape fractional", lambda: sample(shape=(2, 1.5)), ValueError, r"shape must be a sequence of ints"),
    row("shape text", lambda: sample(shape="abc"), ValueError, r"shape must be a sequence of ints"),
    row("shape int", lambda: sample(shape=4), ValueError, r"shape must be a sequence of ints"),
    row("sampler unknown", lambda: sample(sampler="plms"), ValueError,
        r"sampler must be one of \('ddpm', 'ddim', 'dpmpp_2m', 'euler', 'heun'\), got 'plms'"),
    row("steps=0", lambda: sample(steps=0), ValueError, r"steps must be an integer in \[1, T\] = \[1, 20\], got 0"),
    row("steps=-1", lambda: sample(steps=-1), ValueError, r"steps must be an integer in \[1, T\] = \[1, 20\]"),
    row("steps>T", lambda: sample(steps=21), ValueError, r"steps must be an integer in \[1, T\] = \[1, 20\]"),
    row("steps=2.5", lambda: sample(steps=2.5), ValueError, r"steps must be an integer in \[1, T\]"),
    row("steps=True", lambda: sample(steps=True), ValueError, r"steps must be an integer in \[1, T\]"),
    row("spacing unknown", lambda: sample(spacing="uniform"), ValueError, r"spacing must be one of"),
    row("eta<0", lambda: sample(eta=-0.1), ValueError, r"eta must lie in \[0, 1\], got -0.1"),
    row("eta>1", lambda: sample(eta=1.5), ValueError, r"eta must lie in \[0, 1\]"),
    row("eta nan", lambda: sample(eta=NAN), ValueError, r"eta must lie in \[0, 1\]"),
    row("variance unknown", lambda: sample(sampler="ddpm", variance="fixed"), ValueError,
        r"variance must be 'beta' or 'posterior'"),
    row("prediction_type unknown", lambda: sample(prediction_type="score"), ValueError,
        r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"),
    row("guidance negative", lambda: sample(guidance_scale=-1.0, context=torch.ones(2, 1)), ValueError,
        r"guidance_scale must be a finite number >= 0, got -1.0"),
    row("guidance nan", lambda: sample(guidance_scale=NAN, context=torch.ones(2, 1)), ValueError,
        r"guidance_scale must be a finite number >= 0"),
    row("guidance inf", lambda: sample(guidance_scale=INF, context=torch.ones(2, 1)), ValueError,
        r"guidance_scale must be a finite number >= 0"),
    row("guidance without context", lambda: sample(guidance_scale=2.0), ValueError, r"guidance_scale needs a context"),
    row("context wrong batch", lambda: sample(context=torch.ones(3, 1)), ValueError, r"context must have batch size 2"),
    row("context 0-d", lambda: sample(context=torch.tensor(1.0)), ValueError, r"context must have batch size 2"),
    row("context nan", lambda: sample(context=torch.full((2, 1), NAN)), ValueError, r"context must be finite"),
    row("x_T wrong shape", lambda: sample(x_T=torch.zeros(3, 1)), ValueError, r"x_T must have shape \(2, 1\)"),
    row("x_T nan", lambda: sample(x_T=torch.full((2, 1), NAN)), ValueError, r"x_T must be finite"),
    row("x_T inf", lambda: sample(x_T=torch.tensor([[0.0], [INF]])), ValueError, r"x_T must be finite"),
    row("dynamic_threshold 0", lambda: sample(dynamic_threshold=0.0), ValueError,
        r"dynamic_threshold must be a percentile in \(0, 1\)"),
    row("dynamic_threshold 1.5", lambda: sample(dynamic_threshold=1.5), ValueError,
        r"dynamic_threshold must be a percentile in \(0, 1\)"),
    row("zero terminal SNR, epsilon", lambda: sample(schedule=ZERO_SNR, spacing="trailing"), ValueError,
        r"spacing 'trailing' starts at step 19, where alpha_bar = 0.*prediction_type 'v_prediction'"),
    row("zero terminal SNR, dpmpp_2m", lambda: sample(schedule=ZERO_SNR, spacing="linspace", sampler="dpmpp_2m",
                                                      prediction_type="v_prediction"),
        ValueError, r"sampler 'dpmpp_2m' with prediction_type 'v_prediction' cannot start there"),
    row("model returns NaN", lambda: sample(model=_nan_model), FloatingPointError,
        r"sampler 'ddim' produced NaN or inf after 5 steps"),
    row("model returns inf", lambda: sample(model=_inf_model, sampler="ddpm"), FloatingPointError,
        r"sampler 'ddpm' produced NaN or inf after 5 steps"),
    row("ContextUnet non-square", lambda: sample(model=ContextUnet(n_feat=8), shape=(1, 3, 16, 12), steps=1),
        ValueError, r"x must have shape \(B, 3, 16, 16\), got \(1, 3, 16, 12\)"),
    row("ContextUnet size it cannot take", lambda: sample(model=ContextUnet(n_feat=8), shape=(1, 3, 8, 8), steps=1),
        ValueError, r"x must have shape \(B, 3, 16, 16\)"),
    row("ContextUnet context width", lambda: sample(model=ContextUnet(n_feat=8), shape=(1, 3, 16, 16), steps=1,
                                                    context=torch.ones(1, 4)),
        ValueError, r"context must have shape \(1, 5\), got \(1, 4\)"),
    row("ddim_invert steps=0", lambda: md.ddim_invert(EPS_MODEL, S, torch.zeros(2, 1), steps=0), ValueError,
        r"steps must be an integer in \[1, T\]"),
    row("Denoiser prediction_type", lambda: md.Denoiser(EPS_MODEL, S, "score"), ValueError,
        r"prediction_type must be one of"),
]


@pytest.mark.parametrize("call, error, match", SAMPLE_ROWS)
def test_sample_bad_input(call, error, match):
    check(call, error, match)


# ====================================================================================== SDEs, likelihood, losses
SDE_ROWS = [
    row("VESDE sigma=1", lambda: md.VESDE(sigma=1.0), ValueError, r"sigma must be a finite number > 1"),
    row("VESDE sigma=0.5", lambda: md.VESDE(sigma=0.5), ValueError, r"sigma must be a finite number > 1"),
    row("VESDE sigma=nan", lambda: md.VESDE(sigma=NAN), ValueError, r"sigma must be a finite number > 1"),
    row("VESDE sigma=inf", lambda: md.VESDE(sigma=INF), ValueError, r"sigma must be a finite number > 1"),
    row("VESDE sigma and sigma_min", lambda: md.VESDE(2.0, sigma_min=0.1, sigma_max=5.0), ValueError,
        r"give either sigma .* or both sigma_min and sigma_max"),
    row("VESDE.geometric min > max", lambda: md.VESDE.geometric(sigma_min=5.0, sigma_max=1.0), ValueError,
        r"need 0 < sigma_min < sigma_max"),
    row("VESDE.geometric min=0", lambda: md.VESDE.geometric(sigma_min=0.0), ValueError, r"need 0 < sigma_min"),
    row("VESDE.geometric min = max", lambda: md.VESDE.geometric(sigma_min=1.0, sigma_max=1.0), ValueError,
        r"need 0 < sigma_min < sigma_max"),
    row("VPSDE beta_min<0", lambda: md.VPSDE(beta_min=-1.0), ValueError, r"need 0 <= beta_min < beta_max"),
    row("VPSDE beta_max<beta_min", lambda: md.VPSDE(beta_min=5.0, beta_max=1.0), ValueError,
        r"need 0 <= beta_min < beta_max"),
    row("VPSDE beta_max=inf", lambda: md.VPSDE(beta_max=INF), ValueError, r"need 0 <= beta_min < beta_max"),
    row("SubVPSDE beta_min=nan", lambda: md.SubVPSDE(beta_min=NAN), ValueError, r"need 0 <= beta_min < beta_max"),
    row("SubVPSDE beta_min = beta_max", lambda: md.SubVPSDE(beta_min=1.0, beta_max=1.0), ValueError,
        r"need 0 <= beta_min < beta_max"),
    row("marginal_std t=nan", lambda: md.SubVPSDE().marginal_std(torch.tensor([NAN])), ValueError,
        r"t must lie in \[0, 1\]"),
    row("marginal_prob t<0", lambda: VE.marginal_prob(torch.zeros(2, 1), torch.tensor([-0.1, 0.5])), ValueError,
        r"t must lie in \[0, 1\]"),
    row("marginal_prob t>1", lambda: md.VPSDE().marginal_prob(torch.zeros(2, 1), 1.5), ValueError,
        r"t must lie in \[0, 1\]"),
    row("marginal_prob t=nan", lambda: md.SubVPSDE().marginal_prob(torch.zeros(2, 1), NAN), ValueError,
        r"t must lie in \[0, 1\]"),
    row("sde() t wrong shape", lambda: VE.sde(torch.zeros(2, 1), torch.rand(3)), ValueError,
        r"t must have shape \[B\] = \[2\]"),
    row("sde_from_config class", lambda: md.sde_from_config({"class": "EDM"}), ValueError,
        r"config\['class'\] must be one of \('VESDE', 'VPSDE', 'SubVPSDE', 'RectifiedFlow'\)"),
    row("sde_from_config kwargs", lambda: md.sde_from_config({"class": "VESDE", "kwargs": {"sigmaa": 3}}), ValueError,
        r"config\['kwargs'\] does not fit VESDE"),
    row("sde_sample sde not an SDE", lambda: sde_sample(sde="ve"), TypeError, r"sde must be an SDE"),
    row("sde_sample method", lambda: sde_sample(method="heun"), ValueError,
        r"method must be one of \('euler_maruyama', 'pc', 'ode'\)"),
    row("sde_sample ode_solver", lambda: sde_sample(method="ode", ode_solver="euler"), ValueError,
        r"ode_solver must be one of \('rk45', 'heun'\)"),
    row("sde_sample steps=0", lambda: sde_sample(steps=0), ValueError, r"steps must be an integer >= 1, got 0"),
    row("sde_sample steps=2.5", lambda: sde_sample(steps=2.5), ValueError, r"steps must be an integer >= 1"),
    row("sde_sample corrector_steps=-1", lambda: sde_sample(method="pc", corrector_steps=-1), ValueError,
        r"corrector_steps must be an integer >= 0"),
    row("sde_sample t_min=0", lambda: sde_sample(t_min=0.0), ValueError, T_MIN_RANGE),
    row("sde_sample t_min=1", lambda: sde_sample(t_min=1.0), ValueError, T_MIN_RANGE),
    row("sde_sample t_min=nan", lambda: sde_sample(t_min=NAN), ValueError, T_MIN_RANGE),
    row("sde_sample snr=0", lambda: sde_sample(method="pc", snr=0.0), ValueError, r"snr must be > 0"),
    row("sde_sample snr=nan", lambda: sde_sample(method="pc", snr=NAN), ValueError, r"snr must be > 0"),
    row("sde_sample rtol=0", lambda: sde_sample(method="ode", rtol=0.0), ValueError, r"rtol and atol must be > 0"),
    row("sde_sample shape 1-D", lambda: sde_sample(shape=(4,)), ValueError, r"shape must have at least 2 positive"),
    row("sde_sample empty batch", lambda: sde_sample(shape=(0, 1)), ValueError, r"shape must have at least 2 positive"),
    row("sde_sample shape 2.5", lambda: sde_sample(shape=(2, 2.5)), ValueError, r"shape must be a sequence of ints"),
    row("sde_sample x_T shape", lambda: sde_sample(x_T=torch.zeros(3, 1)), ValueError, r"x_T must have shape \(2, 1\)"),
    row("sde_sample x_T nan", lambda: sde_sample(x_T=torch.full((2, 1), NAN)), ValueError, r"x_T must be finite"),
    row("sde_sample context batch", lambda: sde_sample(context=torch.ones(3, 1)), ValueError,
        r"context must have batch size 2"),
    row("sde_sample context 0-d", lambda: sde_sample(context=torch.tensor(1.0)), ValueError,
        r"context must have batch size 2"),
    row("sde_sample context nan", lambda: sde_sample(context=torch.full((2, 1), NAN)), ValueError,
        r"context must be finite"),
    row("sde_sample guidance negative", lambda: sde_sample(guidance_scale=-1.0, context=torch.ones(2, 1)), ValueError,
        r"guidance_scale must be a finite number >= 0"),
    row("sde_sample guidance nan", lambda: sde_sample(guidance_scale=NAN, context=torch.ones(2, 1)), ValueError,
        r"guidance_scale must be a finite number >= 0"),
    row("sde_sample guidance without context", lambda: sde_sample(guidance_scale=2.0), ValueError,
        r"guidance_scale needs a context"),
    row("sde_sample score NaN", lambda: sde_sample(score_model=_nan_model), FloatingPointError,
        r"sde_sample method 'euler_maruyama' with steps=3 produced NaN or inf"),
    row("sde_sample pc, VP, too few steps", lambda: sde_sample(sde=md.VPSDE(), method="pc"), FloatingPointError,
        r"sde_sample method 'pc' with steps=3 produced NaN or inf"),           # beta(t) dt > 1: no real step
    row("log_likelihood trace", lambda: md.log_likelihood(exact_score, VE, torch.zeros(2, 1), trace="hutch"),
        ValueError, r"trace must be one of \('rademacher', 'gaussian', 'exact'\)"),
    row("log_likelihood t_min", lambda: md.log_likelihood(exact_score, VE, torch.zeros(2, 1), t_min=0.0), ValueError,
        T_MIN_RANGE),
    row("log_likelihood 1-D x", lambda: md.log_likelihood(exact_score, VE, torch.zeros(3)), ValueError,
        r"x must be a non-empty batch \[B, ...\]"),
    row("log_likelihood empty batch", lambda: md.log_likelihood(exact_score, VE, torch.zeros(0, 1)), ValueError,
        r"x must be a non-empty batch"),
    row("log_likelihood int x", lambda: md.log_likelihood(exact_score, VE, torch.zeros(2, 1, dtype=torch.long)),
        ValueError, r"x must be a float tensor \(or uint8 with dequantize=True\)"),
    row("log_likelihood nan x", lambda: md.log_likelihood(exact_score, VE, torch.full((2, 1), NAN)), ValueError,
        r"x must be finite"),
    row("log_likelihood context batch", lambda: md.log_likelihood(exact_score, VE, torch.zeros(2, 1),
                                                                  context=torch.ones(3, 1)),
        ValueError, r"context must have batch size 2"),
    row("log_likelihood rtol<0", lambda: md.log_likelihood(exact_score, VE, torch.zeros(2, 1), rtol=-1.0), ValueError,
        r"rtol and atol must be > 0"),
    row("diffusion_loss empty batch", lambda: md.diffusion_loss(EPS_MODEL, torch.zeros(0, 1), S), ValueError,
        r"x0 must be a non-empty batch"),
    row("diffusion_loss prediction_type", lambda: md.diffusion_loss(EPS_MODEL, torch.zeros(2, 1), S, "score"),
        ValueError, r"prediction_type must be one of"),
    row("diffusion_loss weighting", lambda: md.diffusion_loss(EPS_MODEL, torch.zeros(2, 1), S, weighting="snr"),
        ValueError, r"weighting must be one of \('none', 'min_snr'\)"),
    row("dsm_loss t_min=0", lambda: md.dsm_loss(exact_score, torch.zeros(2, 1), VE, t_min=0.0), ValueError,
        T_MIN_RANGE),
    row("dsm_loss t_min=1", lambda: md.dsm_loss(exact_score, torch.zeros(2, 1), VE, t_min=1.0), ValueError,
        T_MIN_RANGE),
    row("dsm_loss empty batch", lambda: md.dsm_loss(exact_score, torch.zeros(0, 1), VE), ValueError,
        r"x0 must be a non-empty batch"),
    row("as_score_model prediction_type", lambda: md.as_score_model(EPS_MODEL, S, "score"), ValueError,
        r"prediction_type must be one of"),
]


@pytest.mark.parametrize("call, error, match", SDE_ROWS)
def test_sde_likelihood_and_loss_bad_input(call, error, match):
    check(call, error, match)


# ====================================================================================== networks
_NETS = {}


def net(name):
    """Small networks, built once per test process (their errors come before any heavy computation)."""
    if name not in _NETS:
        torch.manual_seed(0)
        _NETS[name] = {
            "ContextUnet": lambda: ContextUnet(n_feat=8),
            "ScoreUNet": lambda: ScoreUNet(channels=(8, 16, 16, 16), embed_dim=16),
            "ResidualScoreUNet": lambda: ResidualScoreUNet(channels=(8, 16, 16, 16), embed_dim=16),
            "ConditionalScoreUNet": lambda: ConditionalScoreUNet(channels=(8, 16, 16, 16), embed_dim=16, text_dim=16),
            "TextScoreUNet": lambda: ConditionalScoreUNet(channels=(8, 16, 16, 16), embed_dim=16, text_dim=16,
                                                          context_dim=6),
            "LatentScoreUNet": lambda: LatentScoreUNet(channels=(8, 16, 64), embed_dim=16, text_dim=16),
            "AutoEncoder": lambda: AutoEncoder(channels=(8, 8)),
            "BasicUNet": lambda: model_table.model_classes()["BasicUNet"](),
            "UNet2D": lambda: model_table.model_classes()["UNet2D"](),
        }[name]().eval()
    return _NETS[name]


def call_net(name, shape, t=None, context=None, dtype=torch.float32):
    x = torch.zeros(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape).to(dtype)
    t = torch.rand(shape[0]) if t is None else t
    with torch.no_grad():
        return net(name)(x, t, context)


NET_ROWS = [
    # constructors
    row("ContextUnet height=18", lambda: ContextUnet(height=18), ValueError, r"height"),
    row("ContextUnet height=0", lambda: ContextUnet(height=0), ValueError, r"height"),
    row("ContextUnet n_feat=12", lambda: ContextUnet(n_feat=12), ValueError, r"n_feat"),
    row("ContextUnet in_channels=0", lambda: ContextUnet(in_channels=0), ValueError, r"in_channels"),
    row("ContextUnet n_cfeat=0", lambda: ContextUnet(n_cfeat=0), ValueError, r"n_cfeat"),
    row("ScoreUNet two levels", lambda: ScoreUNet(channels=(32, 64)), ValueError, r"channels"),
    row("ScoreUNet in_channels=0", lambda: ScoreUNet(in_channels=0), ValueError, r"in_channels"),
    row("ScoreUNet odd embed_dim", lambda: ScoreUNet(embed_dim=255), ValueError, r"embed_dim"),
    row("LatentScoreUNet four levels", lambda: LatentScoreUNet(channels=(64, 128, 256, 512)), ValueError,
        r"channels"),
    row("LatentScoreUNet bottleneck too narrow for GroupNorm", lambda: LatentScoreUNet(channels=(16, 32, 32)),
        ValueError, r"channels\[2\]"),
    row("ConditionalScoreUNet num_classes<0", lambda: ConditionalScoreUNet(num_classes=-1), ValueError,
        r"num_classes"),
    row("AutoEncoder latent_channels=0", lambda: AutoEncoder(latent_channels=0), ValueError, r"latent_channels"),
    row("GaussianFourierProjection odd", lambda: GaussianFourierProjection(31), ValueError, r"embed_dim"),
    row("ResidualConvBlock in_channels=0", lambda: ResidualConvBlock(0, 4), ValueError, r"in_channels"),
    # ContextUnet [B, 3, 16, 16], context one-hot float [B, 5]
    row("ContextUnet channels", lambda: call_net("ContextUnet", (1, 1, 16, 16)), ValueError,
        r"x must have shape \(B, 3, 16, 16\), got \(1, 1, 16, 16\)"),
    row("ContextUnet 3-D x", lambda: call_net("ContextUnet", (3, 16, 16)), ValueError, r"x must have shape \(B, 3, 16"),
    row("ContextUnet non-square", lambda: call_net("ContextUnet", (1, 3, 16, 12)), ValueError,
        r"x must have shape \(B, 3, 16, 16\), got \(1, 3, 16, 12\)"),
    row("ContextUnet other size", lambda: call_net("ContextUnet", (1, 3, 28, 28)), ValueError,
        r"x must have shape \(B, 3, 16, 16\)"),
    row("ContextUnet int x", lambda: call_net("ContextUnet", (1, 3, 16, 16), dtype=torch.long), ValueError,
        r"x must be a floating-point tensor"),
    row("ContextUnet t shape", lambda: call_net("ContextUnet", (2, 3, 16, 16), t=torch.rand(3)), ValueError,
        r"t must hold one time per sample: 2 values, got shape \(3,\)"),
    row("ContextUnet context width", lambda: call_net("ContextUnet", (2, 3, 16, 16), context=torch.ones(2, 4)),
        ValueError, r"context must have shape \(2, 5\), got \(2, 4\)"),
    row("ContextUnet context ids", lambda: call_net("ContextUnet", (2, 3, 16, 16), context=torch.tensor([1, 2])),
        ValueError, r"context must have shape \(2, 5\), got \(2,\)"),
    row("ContextUnet context batch", lambda: call_net("ContextUnet", (2, 3, 16, 16), context=torch.ones(3, 5)),
        ValueError, r"context must have shape \(2, 5\)"),
    # score UNets [B, 1, H, W] (any H, W: padded), unconditional or class ids / tokens
    row("ScoreUNet channels", lambda: call_net("ScoreUNet", (1, 3, 28, 28)), ValueError,
        r"x must have shape \(B, 1, H, W\), got \(1, 3, 28, 28\)"),
    row("ScoreUNet 3-D x", lambda: call_net("ScoreUNet", (1, 28, 28)), ValueError, r"x must have shape \(B, 1, H, W\)"),
    row("ScoreUNet int x", lambda: call_net("ScoreUNet", (1, 1, 28, 28), dtype=torch.long), ValueError,
        r"x must be a floating-point tensor"),
    row("ScoreUNet t shape", lambda: call_net("ScoreUNet", (2, 1, 28, 28), t=torch.rand(2, 2)), ValueError,
        r"t must hold one time per sample: 2 values"),
    row("ScoreUNet context", lambda: call_net("ScoreUNet", (1, 1, 28, 28), context=torch.tensor([1])), ValueError,
        r"ScoreUNet is unconditional: context must be None"),
    row("ResidualScoreUNet channels", lambda: call_net("ResidualScoreUNet", (1, 2, 28, 28)), ValueError,
        r"x must have shape \(B, 1, H, W\)"),
    row("ResidualScoreUNet context", lambda: call_net("ResidualScoreUNet", (1, 1, 28, 28), context=torch.tensor([1])),
        ValueError, r"ResidualScoreUNet is unconditional: context must be None"),
    row("ConditionalScoreUNet channels", lambda: call_net("ConditionalScoreUNet", (1, 3, 28, 28)), ValueError,
        r"x must have shape \(B, 1, H, W\)"),
    row("ConditionalScoreUNet ids shape", lambda: call_net("ConditionalScoreUNet", (2, 1, 28, 28),
                                                           context=torch.zeros(2, 1, dtype=torch.long)),
        ValueError, r"context ids must have shape \(2,\), got \(2, 1\)"),
    row("ConditionalScoreUNet ids batch", lambda: call_net("ConditionalScoreUNet", (2, 1, 28, 28),
                                                           context=torch.zeros(3, dtype=torch.long)),
        ValueError, r"context ids must have shape \(2,\)"),
    row("ConditionalScoreUNet id > null", lambda: call_net("ConditionalScoreUNet", (1, 1, 28, 28),
                                                           context=torch.tensor([11])),
        ValueError, r"context ids must lie in 0..10 \(10 = null id\)"),
    row("ConditionalScoreUNet id < 0", lambda: call_net("ConditionalScoreUNet", (1, 1, 28, 28),
                                                        context=torch.tensor([-1])),
        ValueError, r"context ids must lie in 0..10"),
    row("ConditionalScoreUNet float context", lambda: call_net("ConditionalScoreUNet", (1, 1, 28, 28),
                                                               context=torch.rand(1, 3, 16)),
        ValueError, r"a float context \(token sequence\) needs the model built with context_dim"),
    row("text ConditionalScoreUNet token width", lambda: call_net("TextScoreUNet", (1, 1, 28, 28),
                                                                  context=torch.rand(1, 3, 5)),
        ValueError, r"context tokens must have shape \(1, L, 6\), got \(1, 3, 5\)"),
    row("text ConditionalScoreUNet token rank", lambda: call_net("TextScoreUNet", (1, 1, 28, 28),
                                                                 context=torch.rand(1, 6)),
        ValueError, r"context tokens must have shape \(1, L, 6\)"),
    row("LatentScoreUNet channels", lambda: call_net("LatentScoreUNet", (1, 3, 10, 10)), ValueError,
        r"x must have shape \(B, 4, H, W\), got \(1, 3, 10, 10\)"),
    row("LatentScoreUNet ids", lambda: call_net("LatentScoreUNet", (1, 4, 10, 10), context=torch.tensor([12])),
        ValueError, r"context ids must lie in 0..10"),
    # AutoEncoder [B, 1, H, W], H and W even and >= 10
    row("AutoEncoder channels", lambda: net("AutoEncoder")(torch.zeros(1, 3, 28, 28)), ValueError,
        r"x must have shape \(B, 1, H, W\)"),
    row("AutoEncoder odd size", lambda: net("AutoEncoder")(torch.zeros(1, 1, 27, 27)), ValueError,
        r"x's height and width must be even and >= 10, got 27x27"),
    row("AutoEncoder too small", lambda: net("AutoEncoder")(torch.zeros(1, 1, 8, 8)), ValueError,
        r"x's height and width must be even and >= 10, got 8x8"),
    row("AutoEncoder int x", lambda: net("AutoEncoder")(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)), ValueError,
        r"x must be a floating-point tensor"),
    row("AutoEncoder decode channels", lambda: net("AutoEncoder").decode(torch.zeros(1, 3, 10, 10)), ValueError,
        r"z must have shape \(B, 4, h, w\)"),
    # BasicUNet and UNet2D (their messages belong to their files; only the argument is pinned here)
    row("BasicUNet channels", lambda: net("BasicUNet")(torch.zeros(1, 3, 28, 28)), ValueError, r"\bx\b"),
    row("BasicUNet size", lambda: net("BasicUNet")(torch.zeros(1, 1, 30, 30)), ValueError, r"height and width"),
    row("UNet2D channels", lambda: call_net("UNet2D", (1, 7, 32, 32)), ValueError, r"\bx\b"),
    row("UNet2D size", lambda: call_net("UNet2D", (1, 1, 30, 30)), ValueError, r"height and width"),
    row("UNet2D context without classes", lambda: call_net("UNet2D", (1, 1, 32, 32), context=torch.tensor([1])),
        ValueError, r"context"),
]


@pytest.mark.parametrize("call, error, match", NET_ROWS)
def test_network_bad_input(call, error, match):
    check(call, error, match)


@pytest.mark.parametrize("name, shape", [
    ("ContextUnet", (0, 3, 16, 16)), ("ScoreUNet", (0, 1, 28, 28)), ("ConditionalScoreUNet", (0, 1, 28, 28)),
    ("LatentScoreUNet", (0, 4, 10, 10)), ("UNet2D", (0, 1, 32, 32)),
])
def test_networks_map_an_empty_batch_to_an_empty_batch(name, shape):
    assert call_net(name, shape).shape == shape


@pytest.mark.parametrize("name, shape", [("ScoreUNet", (2, 1, 28, 20)), ("LatentScoreUNet", (1, 4, 10, 6)),
                                         ("AutoEncoder", (1, 1, 28, 12))])
def test_score_nets_and_the_autoencoder_accept_non_square_images(name, shape):
    with torch.no_grad():
        out = net(name)(torch.randn(shape)) if name == "AutoEncoder" else call_net(name, shape)
    assert out.shape == shape and torch.isfinite(out).all()


# ====================================================================================== metrics
METRIC_ROWS = [
    row("frechet_distance one sample", lambda: frechet_distance(torch.randn(1, 4), torch.randn(5, 4)), ValueError,
        r"N >= 2"),
    row("frechet_distance dimensions differ", lambda: frechet_distance(torch.randn(5, 4), torch.randn(5, 3)),
        ValueError, r"dimensions differ"),
    row("frechet_distance NaN", lambda: frechet_distance(torch.full((5, 4), NAN), torch.randn(5, 4)), ValueError,
        r"NaN"),
]


@pytest.mark.parametrize("call, error, match", METRIC_ROWS)
def test_metrics_bad_input(call, error, match):
    check(call, error, match)


# ====================================================================================== data loaders
def _course_files(tmp_path, images=None, labels=None):
    images = np.zeros((10, 16, 16, 3), np.uint8) if images is None else images
    labels = np.eye(5)[np.arange(10) % 5] if labels is None else labels
    np.save(tmp_path / "s.npy", images)
    np.save(tmp_path / "l.npy", labels)
    return str(tmp_path / "s.npy"), str(tmp_path / "l.npy")


def _image_dir(tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    return tmp_path


DATA_ROWS = [
    row("ProceduralSprites n<0", lambda tmp: ProceduralSprites(-1), ValueError,
        r"n must be a non-negative int, got -1"),
    row("ProceduralSprites n=2.5", lambda tmp: ProceduralSprites(2.5), ValueError, r"n must be a non-negative int"),
    row("ProceduralSprites n='10'", lambda tmp: ProceduralSprites("10"), ValueError, r"n must be a non-negative int"),
    row("ProceduralSprites size=8", lambda tmp: ProceduralSprites(4, size=8), ValueError,
        r"size must be a multiple of 16 \(16, 32, ...\), got 8"),
    row("ProceduralSprites size=24", lambda tmp: ProceduralSprites(4, size=24), ValueError,
        r"size must be a multiple of 16"),
    row("ProceduralDigits n<0", lambda tmp: ProceduralDigits(-3), ValueError, r"n must be a non-negative int"),
    row("ProceduralDigits size=8", lambda tmp: ProceduralDigits(4, size=8), ValueError, r"size must be an int >= 16"),
    row("SpritesDataset non-square",
        lambda tmp: SpritesDataset(*_course_files(tmp, np.zeros((10, 16, 8, 3), np.uint8))),
        ValueError, r"sprites file .*s.npy: expected shape \(N, H, H, 3\), got \(10, 16, 8, 3\)"),
    row("SpritesDataset NaN labels", lambda tmp: SpritesDataset(*_course_files(tmp, labels=np.full((10, 5), NAN))),
        ValueError, r"labels file .*l.npy: row 0 is not one-hot"),
    row("SpritesDataset missing", lambda tmp: SpritesDataset(tmp / "no.npy", tmp / "no.npy"), FileNotFoundError,
        r"sprites file not found: .*no.npy"),
    row("ImageFolder size=0", lambda tmp: ImageFolder(_image_dir(tmp), size=0), ValueError,
        r"size must be a positive int, got 0"),
    row("ImageFolder size=2.5", lambda tmp: ImageFolder(_image_dir(tmp), size=2.5), ValueError,
        r"size must be a positive int"),
    row("ImageFolder size='16'", lambda tmp: ImageFolder(_image_dir(tmp), size="16"), ValueError,
        r"size must be a positive int"),
    row("ImageFolder missing", lambda tmp: ImageFolder(tmp / "nowhere", size=8), FileNotFoundError,
        r"image folder not found: .*nowhere"),
    row("ImageFolder empty", lambda tmp: ImageFolder(tmp, size=8), FileNotFoundError, r"no images with extensions"),
    row("ImageFolder corrupt", lambda tmp: (tmp.joinpath("bad.png").write_bytes(b"\x89PNG garbage"),
                                           ImageFolder(tmp, size=8)[0]),
        ValueError, r"could not read image file .*bad.png"),
    row("from_uint8_images float", lambda tmp: from_uint8_images(np.zeros((1, 4, 4, 3), np.float32)), ValueError,
        r"expected uint8 images of shape \(B, H, W, C\)"),
    row("from_uint8_images 3-D", lambda tmp: from_uint8_images(np.zeros((4, 4, 3), np.uint8)), ValueError,
        r"expected uint8 images of shape \(B, H, W, C\)"),
    row("to_uint8_images 3-D", lambda tmp: to_uint8_images(torch.zeros(3, 4, 4)), ValueError,
        r"expected a tensor of shape \[B, C, H, W\]"),
]


@pytest.mark.parametrize("call, error, match", DATA_ROWS)
def test_data_loader_bad_input(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)


# ====================================================================================== Trainer and TrainConfig
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, t, context=None):
        return self.conv(x)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=8, item=None):
        self.n, self.item = n, item

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        return self.item if self.item is not None else torch.zeros(3, 4, 4)


def trainer(data=None, schedule=S, sde=None, **config):
    config = TrainConfig(**{"steps": 1, "batch_size": 4, "progress": False, "device": "cpu", **config})
    return Trainer(_Net(), data if data is not None else _Data(), config, schedule=schedule, sde=sde)


CONFIG_ROWS = [  # (field, bad value, pattern)
    ("steps", -1, r"steps must be None or an integer >= 0, got -1"),
    ("steps", 2.5, r"steps: expected null or an integer, got 2.5"),
    ("epochs", 0, r"epochs must be an integer >= 1, got 0"),
    ("batch_size", 0, r"batch_size must be an integer >= 1, got 0"),
    ("batch_size", 2.5, r"batch_size: expected an integer, got 2.5"),
    ("grad_accum_steps", 0, r"grad_accum_steps must be an integer >= 1"),
    ("log_every", 0, r"log_every must be an integer >= 1"),
    ("warmup_steps", -1, r"warmup_steps must be an integer >= 0"),
    ("sample_every", -1, r"sample_every must be an integer >= 0"),
    ("sample_steps", 0, r"sample_steps must be an integer >= 1"),
    ("samples_per_class", 0, r"samples_per_class must be an integer >= 1"),
    ("checkpoint_every", -1, r"checkpoint_every must be an integer >= 0"),
    ("num_workers", -1, r"num_workers must be an integer >= 0"),
    ("seed", -1, r"seed must be an integer >= 0"),
    ("seed", True, r"seed: expected an integer, got true"),
    ("seed", 2**64, r"seed must be an integer in \[0, 2\*\*63 - 1\]"),
    ("lr", "0.1", r"lr: expected a number, got \"0.1\""),
    ("channels_last", "false", r"channels_last: expected a boolean \(true or false\), got \"false\""),
    ("adam_betas", 5, r"adam_betas: expected a list of 2 numbers, got 5"),
    ("lr", 0.0, r"lr must be a finite number > 0, got 0.0"),
    ("lr", -1e-3, r"lr must be a finite number > 0"),
    ("lr", NAN, r"lr must be a finite number > 0"),
    ("lr", INF, r"lr must be a finite number > 0"),
    ("min_lr", -1.0, r"min_lr must be a finite number >= 0"),
    ("weight_decay", -0.1, r"weight_decay must be a finite number >= 0"),
    ("grad_clip", 0.0, r"grad_clip must be None or a finite number > 0"),
    ("grad_clip", NAN, r"grad_clip must be None or a finite number > 0"),
    ("adam_betas", (1.5, 0.9), r"adam_betas must be two numbers in \[0, 1\)"),
    ("adam_betas", (0.9,), r"adam_betas: expected a list of 2 numbers, got \[0.9\]"),
    ("ema_decay", 1.5, r"ema_decay must lie in \[0.0, 1.0\]"),
    ("ema_decay", NAN, r"ema_decay must lie in \[0.0, 1.0\]"),
    ("context_dropout", -0.1, r"context_dropout must lie in \[0.0, 1.0\]"),
    ("context_dropout", NAN, r"context_dropout must lie in \[0.0, 1.0\]"),
    ("dsm_t_min", 0.0, r"dsm_t_min must lie in the open interval \(0, 1\)"),
    ("decay", "exponential", r"decay must be one of \('linear', 'cosine', 'constant'\)"),
    ("mixed_precision", "fp8", r"mixed_precision must be one of \('no', 'bf16', 'fp16', 'auto'\)"),
    ("objective", "vlb", r"objective must be one of \('diffusion', 'dsm', 'flow'\)"),
    ("prediction_type", "score", r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"),
    ("loss_weighting", "snr", r"loss_weighting must be one of \('none', 'min_snr'\)"),
]


@pytest.mark.parametrize("field, value, match", [pytest.param(f, v, m, id=f"{f}={v!r}") for f, v, m in CONFIG_ROWS])
def test_train_config_bad_value(field, value, match):
    with pytest.raises(ValueError, match=f"TrainConfig.{match}"):
        TrainConfig(**{field: value})


TRAINER_ROWS = [
    row("TrainConfig.from_dict unknown field", lambda: TrainConfig.from_dict({"stpes": 3}), ValueError,
        r"unknown TrainConfig field"),
    row("batch larger than the dataset", lambda: trainer(data=_Data(n=3)), ValueError,
        r"the dataset has 3 images, fewer than one batch of 4"),
    row("empty dataset", lambda: trainer(data=_Data(n=0)), ValueError, r"dataset is empty"),
    row("batch not divisible", lambda: trainer(batch_size=4, grad_accum_steps=3), ValueError,
        r"batch_size 4 must be divisible by processes x grad_accum_steps = 3"),
    row("schedule missing", lambda: trainer(schedule=None), ValueError, r"objective 'diffusion' needs schedule="),
    row("schedule not a NoiseSchedule", lambda: trainer(schedule="linear"), TypeError,
        r"schedule must be a NoiseSchedule"),
    row("dsm without sde", lambda: trainer(objective="dsm"), ValueError, r"objective 'dsm' needs sde="),
    row("flow without RectifiedFlow", lambda: trainer(objective="flow"), ValueError,
        r"objective 'flow' goes with sde=RectifiedFlow"),
    row("fp16 on the CPU", lambda: trainer(mixed_precision="fp16"), ValueError,
        r"mixed_precision='fp16' needs a CUDA device"),
    row("device unknown", lambda: trainer(device="tpu"), ValueError,
        r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'.*got 'tpu'"),
    row("dataset item of the wrong type", lambda: trainer(data=_Data(item="picture")), ValueError,
        r"a dataset item must be an image tensor or \(image, context\), got str"),
    row("images the model cannot take",
        lambda: Trainer(ContextUnet(n_feat=8), _Data(), TrainConfig(steps=1, batch_size=4), schedule=S),
        ValueError, r"ContextUnet cannot take this dataset's images of shape \(3, 4, 4\)"),
]
if not torch.cuda.is_available():
    TRAINER_ROWS.append(row("device cuda without CUDA", lambda: trainer(device="cuda"), ValueError,
                            r"device 'cuda' asks for CUDA, but torch.cuda.is_available\(\) is False"))


@pytest.mark.parametrize("call, error, match", TRAINER_ROWS)
def test_trainer_bad_input(call, error, match):
    check(call, error, match)


def test_nan_in_the_data_stops_training_at_step_1_naming_it(tmp_path):
    bad = trainer(data=_Data(item=torch.full((3, 4, 4), NAN)), out_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"the loss is nan at step 1; stopping before the update"):
        bad.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


# ====================================================================================== command line
@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """A tiny ContextUnet checkpoint with a schedule, as `minidiff train` writes it."""
    path = tmp_path_factory.mktemp("cli") / "checkpoint.pt"
    torch.manual_seed(0)
    model = ckpt.build_model("ContextUnet", in_channels=3, n_feat=8, n_cfeat=5, height=16)
    ckpt.save_checkpoint(path, model, schedule=S, ema_model=model)
    return str(path)


CLI_ROWS = [  # (id, argv, pattern); CKPT is replaced by the fixture's checkpoint
    ("sample unknown checkpoint", ["sample", "--checkpoint", "missing.pt"], r"checkpoint not found: missing.pt"),
    ("sample checkpoint is a folder", ["sample", "--checkpoint", "."], r"\. is not a minidiff pretrained folder"),
    ("sample --steps 0", ["sample", "--checkpoint", "CKPT", "--steps", "0"], r"--steps must be >= 1, got 0"),
    ("sample --steps -2", ["sample", "--checkpoint", "CKPT", "--steps", "-2"], r"--steps must be >= 1, got -2"),
    ("sample --steps > T", ["sample", "--checkpoint", "CKPT", "--steps", "21", "--n", "2"],
     r"steps must be an integer in \[1, T\] = \[1, 20\], got 21"),
    ("sample --steps abc", ["sample", "--checkpoint", "CKPT", "--steps", "abc"], r"argument --steps: invalid int"),
    ("sample --n 0", ["sample", "--checkpoint", "CKPT", "--n", "0"], r"--n must be >= 1, got 0"),
    ("sample --nrow 0", ["sample", "--checkpoint", "CKPT", "--nrow", "0"], r"--nrow must be >= 1, got 0"),
    ("sample --scale 0", ["sample", "--checkpoint", "CKPT", "--scale", "0"], r"--scale must be >= 1, got 0"),
    ("sample --out not png", ["sample", "--checkpoint", "CKPT", "--out", "grid.txt"],
     r"--out must name a .png file, got 'grid.txt'"),
    ("sample --gif not gif", ["sample", "--checkpoint", "CKPT", "--gif", "t.png"], r"--gif must name a .gif file"),
    ("sample --context unknown", ["sample", "--checkpoint", "CKPT", "--context", "wizard", "--n", "2"],
     r"unknown context 'wizard'.*'hero'"),
    ("sample --context index", ["sample", "--checkpoint", "CKPT", "--context", "9", "--n", "2"],
     r"--context class index must lie in \[0, 4\], got 9"),
    ("sample --context not numbers", ["sample", "--checkpoint", "CKPT", "--context", "a,b,c,d,e", "--n", "2"],
     r"--context vector must be comma-separated numbers"),
    ("sample --context width", ["sample", "--checkpoint", "CKPT", "--context", "1,0", "--n", "2"],
     r"--context needs 5 comma-separated numbers, got 2"),
    ("sample --guidance negative", ["sample", "--checkpoint", "CKPT", "--context", "hero", "--guidance", "-1",
                                    "--n", "2"], r"guidance_scale must be a finite number >= 0, got -1.0"),
    ("sample --guidance nan", ["sample", "--checkpoint", "CKPT", "--context", "hero", "--guidance", "nan", "--n", "2"],
     r"guidance_scale must be a finite number >= 0, got nan"),
    ("sample --guidance without --context", ["sample", "--checkpoint", "CKPT", "--guidance", "2", "--n", "2"],
     r"guidance_scale needs a context"),
    ("sample --eta 2", ["sample", "--checkpoint", "CKPT", "--eta", "2", "--n", "2"], r"eta must lie in \[0, 1\]"),
    ("sample --sampler unknown", ["sample", "--checkpoint", "CKPT", "--sampler", "pc", "--n", "2"],
     r"sampler must be one of"),
    ("sample --device unknown", ["sample", "--checkpoint", "CKPT", "--device", "tpu"],
     r"device must be 'auto', 'cpu', 'cuda'"),
    ("train --preset unknown", ["train", "--preset", "huge"], r"argument --preset: invalid choice: 'huge'"),
    ("train --steps -3", ["train", "--steps", "-3"], r"--steps must be None or an integer >= 0, got -3"),
    ("train --epochs 0", ["train", "--epochs", "0"], r"--epochs must be an integer >= 1, got 0"),
    ("train --batch-size 0", ["train", "--batch-size", "0"], r"--batch-size must be an integer >= 1"),
    ("train --lr -1", ["train", "--lr", "-1"], r"--lr must be a finite number > 0, got -1.0"),
    ("train --lr nan", ["train", "--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
    ("train --device unknown", ["train", "--device", "tpu"], r"device must be 'auto', 'cpu', 'cuda'.*'tpu'"),
    ("train fp16 on the CPU", ["train", "--mixed-precision", "fp16", "--device", "cpu"],
     r"mixed_precision='fp16' needs a CUDA device"),
    ("train --data missing", ["train", "--data", "nowhere", "--image-size", "16"], r"image folder not found: nowhere"),
    ("train --sprites alone", ["train", "--sprites", "s.npy"], r"--sprites and --labels go together"),
    ("train --config missing", ["train", "--config", "nope.json"], r"config file not found: nope.json"),
    ("command unknown", ["paint"], r"invalid choice: 'paint'"),
]
if not torch.cuda.is_available():
    CLI_ROWS += [("sample --device cuda without CUDA", ["sample", "--checkpoint", "CKPT", "--device", "cuda"],
                  r"device 'cuda' asks for CUDA"),
                 ("train --device cuda without CUDA", ["train", "--device", "cuda"], r"device 'cuda' asks for CUDA")]


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=i) for i, a, m in CLI_ROWS])
def test_cli_user_error_exits_2_with_one_line(argv, match, checkpoint_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [checkpoint_file if a == "CKPT" else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    try:
        code = cli_main(argv)
    except SystemExit as exit_info:                                          # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("minidiff") and "Traceback" not in err[0]
    assert re.search(match, err[0]), err[0]


@pytest.mark.parametrize("argv, match", [
    (["sample", "--checkpoint", "missing.pt"], "checkpoint not found: missing.pt"),
    (["train", "--lr", "-1", "--out", "run"], "--lr must be a finite number > 0"),
], ids=["sample", "train"])
def test_cli_in_a_real_process_prints_one_line_and_no_traceback(argv, match, tmp_path):
    result = subprocess.run([sys.executable, "-m", "minidiff", *argv], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and match in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""

