"""Score-based generative modelling with SDEs: the VE, VP and sub-VP SDEs and their samplers.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations" (ICLR 2021). "Eq. n" below is that paper's equation n.

Symbols (used with these names throughout):
    t          SDE time in [0, 1]: t = 0 is the data, t = 1 the prior
    f, g       drift f(x, t) and diffusion g(t) of the forward SDE  dx = f(x, t) dt + g(t) dw     (Eq. 5)
    score      grad_x log p_t(x), what a score model returns: score_model(x, t, context)
    mean, std  the perturbation kernel p_0t(x(t) | x(0)) = N(mean, std^2 I), in closed form (App. B)
    eps        the smallest time a sampler visits or the loss draws (never the noise: noise is `z`)

The reverse-time SDE  dx = [f - g^2 score] dt + g dw_bar  (Eq. 6) generates data from the prior; the
probability-flow ODE  dx/dt = f - 1/2 g^2 score  (Eq. 13) has the same marginals and no noise.

Shapes: x is [B, ...] and t is [B] (a python float or 0-d tensor is broadcast to the batch). The
per-sample scalars g and std come back shaped [B, 1, ..., 1], so they broadcast against x;
`marginal_std(t)` returns [B].

The samplers (Euler–Maruyama, predictor–corrector, probability-flow ODE) are plain functions with one
signature, chosen by name in SDE_SAMPLERS; `sde_sample` is the entry point. The likelihood lives in
likelihood.py, the ODE solvers in ode.py.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .guidance import guided_output
from .ode import heun, rk45
from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType, x0_eps_from_output

Time = Union[Tensor, float]


# ==================================================================== the SDEs
class SDE:
    """A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, 1] with a Gaussian prior N(0, prior_std^2 I).

    Subclasses give `sde`, `marginal_std`, `marginal_prob` and `prior_std`; everything a sampler
    needs beyond that is written once here.
    """

    prior_std: float

    def sde(self, x: Tensor, t: Time) -> Tuple[Tensor, Tensor]:
        """(drift f(x, t) [B, ...], diffusion g(t) [B, 1, ...])."""
        raise NotImplementedError

    def marginal_std(self, t: Time) -> Tensor:
        """std(t) of the perturbation kernel, [B]: what score networks divide their output by."""
        raise NotImplementedError

    def marginal_prob(self, x0: Tensor, t: Time) -> Tuple[Tensor, Tensor]:
        """(mean [B, ...], std [B, 1, ...]) of p_0t(x(t) | x(0) = x0), in closed form."""
        raise NotImplementedError

    def discretize(self, x: Tensor, t: Time, dt: float) -> Tuple[Tensor, Tensor]:
        """One forward step from t - dt to t as x_t = x + f_step + G_step z; returns (f_step, G_step).

        This default is Euler–Maruyama (f dt, g sqrt(dt)); VE and VP override it with the exact Markov
        chains the SDEs are the limits of. The reverse-diffusion predictor undoes this step (App. E).
        """
        f, g = self.sde(x, t)
        return f * dt, g * math.sqrt(dt)

    def reverse(self, x: Tensor, t: Time, score: Tensor) -> Tuple[Tensor, Tensor]:
        """(drift, diffusion) of the reverse-time SDE, to be integrated with dt < 0."""
        f, g = self.sde(x, t)
        return f - g**2 * score, g                                   # Eq. 6

    def probability_flow(self, x: Tensor, t: Time, score: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE."""
        f, g = self.sde(x, t)
        return f - 0.5 * g**2 * score                                # Eq. 13

    def langevin_alpha(self, t: Time, dt: float) -> Tensor:
        """The factor alpha_i in the Langevin corrector's step size, [B] (Algorithms 4-5): 1 for VE."""
        t = _check_time(t)
        return torch.ones_like(t)

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """z ~ N(0, prior_std^2 I) of the given shape (drawn on the generator's device, then moved to `device`)."""
        return self.prior_std * _randn(tuple(shape), generator, device, dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) per sample: [B, ...] -> [B]."""
        D = z[0].numel()
        var = self.prior_std**2
        return -0.5 * D * math.log(2 * math.pi * var) - z.flatten(1).pow(2).sum(1) / (2 * var)

    def to_config(self) -> dict:
        """A JSON-able dict from which `sde_from_config` rebuilds this SDE."""
        return {"class": type(self).__name__, "kwargs": dict(self._kwargs)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self._kwargs.items())})"


class VESDE(SDE):
    """Variance exploding SDE, dx = sqrt(d[sigma^2(t)]/dt) dw: no drift, growing noise (Eq. 9).

    ``VESDE(sigma=25.0)`` is the seed tutorial's dx = sigma^t dw, so g(t) = sigma^t and
    std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)).
    ``VESDE.geometric(sigma_min=0.01, sigma_max=50.0)`` is Song et al.'s NCSN++ SDE (App. C):
    sigma(t) = sigma_min (sigma_max / sigma_min)^t and g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)).
    Both are g(t) = c r^t with std(t)^2 = int_0^t g^2 = c^2 (r^(2t) - 1) / (2 ln r): the tutorial has
    r = sigma, c = 1; the geometric one r = sigma_max / sigma_min, c = sigma_min sqrt(2 ln r), which
    gives std(t)^2 = sigma(t)^2 - sigma_min^2 (App. B). (Song et al.'s code drops the - sigma_min^2.)
    """

    def __init__(self, sigma: Optional[float] = None, *, sigma_min: Optional[float] = None,
                 sigma_max: Optional[float] = None):
        if sigma_min is None and sigma_max is None:                # the tutorial's SDE (default sigma = 25)
            sigma = 25.0 if sigma is None else float(sigma)
            if not (math.isfinite(sigma) and sigma > 1):
                raise ValueError(f"sigma must be a finite number > 1 (g(t) = sigma^t must grow), got {sigma}")
            self.log_rate, self.scale = math.log(sigma), 1.0     # ln r, c
            self._kwargs = {"sigma": sigma}
        else:                                                      # the geometric SDE of Song et al.
            if sigma is not None or sigma_min is None or sigma_max is None:
                raise ValueError("give either sigma (the tutorial's VE SDE) or both sigma_min and sigma_max (the "
                                 f"geometric one), got sigma={sigma}, sigma_min={sigma_min}, sigma_max={sigma_max}")
            sigma_min, sigma_max = float(sigma_min), float(sigma_max)
            if not (0 < sigma_min < sigma_max < math.inf):
                raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
            self.log_rate = math.log(sigma_max / sigma_min)
            self.scale = sigma_min * math.sqrt(2 * self.log_rate)
            self._kwargs = {"sigma_min": sigma_min, "sigma_max": sigma_max}
        self.prior_std = self.marginal_std(torch.tensor([1.0], dtype=torch.float64)).item()

    @classmethod
    def geometric(cls, sigma_min: float = 0.01, sigma_max: float = 50.0) -> "VESDE":
        """Song et al.'s VE SDE with sigma(t) = sigma_min (sigma_max / sigma_min)^t (App. C)."""
        return cls(sigma_min=sigma_min, sigma_max=sigma_max)

    def sde(self, x, t):
        t = _check_time(t, x)
        g = self.scale * torch.exp(t * self.log_rate)              # g(t) = c r^t
        return torch.zeros_like(x), _per_sample(g, x)

    def marginal_std(self, t):
        t = _check_time(t)
        # c^2 (r^(2t) - 1) / (2 ln r), with expm1 so that small t keeps its precision
        return self.scale * torch.sqrt(torch.expm1(2 * t * self.log_rate) / (2 * self.log_rate))

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        return x0, _per_sample(self.marginal_std(t), x0)           # mean x0, variance std(t)^2  (App. B)

    def discretize(self, x, t, dt):
        # The SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z  (Eq. 8): the exact increment
        t = _check_time(t, x)
        var_increment = self.marginal_std(t) ** 2 - self.marginal_std((t - dt).clamp(min=0)) ** 2
        return torch.zeros_like(x), _per_sample(var_increment.clamp(min=0).sqrt(), x)


class VPSDE(SDE):
    """Variance preserving SDE, dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw  (Eq. 11): the continuous DDPM.

    beta(t) = beta_min + t (beta_max - beta_min) is the limit of DDPM's linear schedule with
    beta_i = beta(i / T) / T as T grows (App. C); `VPSDE.from_schedule` builds the matching SDE.
    """

    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = _check_betas(beta_min, beta_max)
        self._kwargs = {"beta_min": self.beta_min, "beta_max": self.beta_max}

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> "VPSDE":
        """The VP SDE whose beta(t) runs through T beta_0 .. T beta_{T-1} (exact in the limit for linear schedules)."""
        T = schedule.T
        return cls(beta_min=schedule.betas[0].item() * T, beta_max=schedule.betas[-1].item() * T)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log of the kernel's mean factor, -1/2 int_0^t beta(s) ds."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        t = _check_time(t, x)
        beta = _per_sample(self.beta(t), x)
        return -0.5 * beta * x, beta.sqrt()

    def marginal_std(self, t):
        t = _check_time(t)
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))     # sqrt(1 - e^{-int beta})

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        mean = _per_sample(torch.exp(self.log_mean_coeff(t)), x0) * x0   # App. B
        return mean, _per_sample(self.marginal_std(t), x0)

    def discretize(self, x, t, dt):
        # The DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z  (Eq. 10), with beta_i = beta(t) dt
        t = _check_time(t, x)
        beta_step = _per_sample(self.beta(t) * dt, x)
        return (torch.sqrt(1 - beta_step) - 1) * x, beta_step.sqrt()

    def langevin_alpha(self, t, dt):
        return 1 - self.beta(_check_time(t)) * dt                        # alpha_i = 1 - beta_i  (Algorithm 5)


class SubVPSDE(SDE):
    """Sub-VP SDE, dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - e^{-2 int_0^t beta})) dw  (Eq. 12).

    Same drift and beta(t) as the VP SDE, but a variance (1 - e^{-int beta})^2 that stays below the
    VP one at every t; Song et al. report better likelihoods with it.
    """

    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = _check_betas(beta_min, beta_max)
        self._kwargs = {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log of the kernel's mean factor, -1/2 int_0^t beta(s) ds (as for the VP SDE)."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        t = _check_time(t, x)
        beta = _per_sample(self.beta(t), x)
        shrink = _per_sample(-torch.expm1(4 * self.log_mean_coeff(t)), x)   # 1 - e^{-2 int beta}
        return -0.5 * beta * x, torch.sqrt(beta * shrink)

    def marginal_std(self, t):
        t = _check_time(t)
        return -torch.expm1(2 * self.log_mean_coeff(t))                   # 1 - e^{-int beta}

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        mean = _per_sample(torch.exp(self.log_mean_coeff(t)), x0) * x0    # App. B
        return mean, _per_sample(self.marginal_std(t), x0)

    def langevin_alpha(self, t, dt):
        return 1 - self.beta(_check_time(t)) * dt                        # as for the VP SDE (Algorithm 5)


SDE_CLASSES = {"VESDE": VESDE, "VPSDE": VPSDE, "SubVPSDE": SubVPSDE}


def sde_from_config(config: dict) -> SDE:
    """Rebuild an SDE from ``sde.to_config()``, e.g. {"class": "VESDE", "kwargs": {"sigma": 25.0}}."""
    name = config.get("class") if isinstance(config, dict) else None
    if name not in SDE_CLASSES:
        raise ValueError(f"config['class'] must be one of {tuple(SDE_CLASSES)}, got {config!r}")
    try:
        return SDE_CLASSES[name](**config.get("kwargs", {}))
    except TypeError as error:
        raise ValueError(f"config['kwargs'] does not fit {name}: {error}") from None


# ==================================================================== DDPM network -> score model
class ScoreFromEps(nn.Module):
    """A discrete-time DDPM network seen as a score model: score = -eps / sqrt(1 - alpha_bar(t)).

    SDE time t in (0, 1] is the fractional step i = t T - 1; the network is called with its own time
    input (i + 1) / T, which is t itself, and alpha_bar(t) interpolates the schedule's table
    (NoiseSchedule.alpha_bar_at). Below the first step (t < 1 / T) 1 - alpha_bar falls linearly to 0
    at t = 0, as it does for the VP SDE. Sample it with ``VPSDE.from_schedule(schedule)``.
    """

    def __init__(self, eps_model, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.eps_model, self.schedule, self.prediction_type = eps_model, schedule, prediction_type
        for name in ("num_classes", "null_context"):                 # what guidance asks of the model
            if hasattr(eps_model, name):
                setattr(self, name, getattr(eps_model, name))

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar at SDE time t, float64 [B] on the CPU."""
        T = self.schedule.T
        i = _check_time(t).detach().to("cpu", torch.float64) * T - 1       # fractional step index
        first = 1 - self.schedule.alphas_cumprod[0]                        # 1 - alpha_bar_0
        below = 1 - (i + 1).clamp(min=0) * first                           # t < 1/T: linear in t
        return torch.where(i < 0, below, self.schedule.alpha_bar_at(i.clamp(min=0)))

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        t = _check_time(t, x)
        alpha_bar = _per_sample(self.alpha_bar(t).to(device=x.device, dtype=x.dtype), x)
        output = self.eps_model(x, t, context)                             # t_net = (i + 1) / T = t
        _, eps = x0_eps_from_output(output, x, alpha_bar, self.prediction_type)
        return -eps / torch.sqrt(1 - alpha_bar)                            # grad log p_t = -E[eps | x] / sqrt(1 - ab)


def as_score_model(eps_model, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon") -> ScoreFromEps:
    """Wrap a DDPM eps (or x0 / v) network so the VP SDE and ODE samplers can use it; see ScoreFromEps."""
    return ScoreFromEps(eps_model, schedule, prediction_type)


# ==================================================================== samplers
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
        t, h = _batch_time(ts[k], x), ts[k] - ts[k + 1]
        drift, g = sde.reverse(x, t, score(x, t))
        x = x - drift * h                                                  # dt = -h: time runs backwards
        if k < last:
            x = x + g * math.sqrt(h) * _randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(ts[k + 1], x)
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
        t, h = _batch_time(ts[k], x), ts[k] - ts[k + 1]
        for _ in range(corrector_steps):                                   # Langevin corrector
            s = score(x, t)
            z = _randn(x.shape, generator, x.device, x.dtype)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp(min=1e-30)
            step = _per_sample(2 * sde.langevin_alpha(t, h) * (snr * ratio) ** 2, x)
            x = x + step * s + torch.sqrt(2 * step) * z
        f, G = sde.discretize(x, t, h)                                     # reverse-diffusion predictor
        x = x - f + G**2 * score(x, t)
        if k < last:
            x = x + G * _randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(ts[k + 1], x)
    return x


def probability_flow(score, sde: SDE, x: Tensor, ts: Sequence[float], generator=None, callback=None,
                     progress=False, ode_solver: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5,
                     **_) -> Tensor:
    """Solve the probability-flow ODE (Eq. 13) from ts[0] to ts[-1]: adaptive RK45 (which ignores the
    grid in between) or fixed-step Heun on the grid."""

    def drift(t: float, y: Tensor) -> Tensor:
        t_batch = _batch_time(t, y)
        return sde.probability_flow(y, t_batch, score(y, t_batch))

    if ode_solver == "rk45":
        x, _ = rk45(drift, x, ts[0], ts[-1], rtol=rtol, atol=atol, callback=callback, progress=progress)
    else:
        x, _ = heun(drift, x, ts, callback=callback, progress=progress)
    return x


Method = Literal["euler_maruyama", "pc", "ode"]
SDE_SAMPLERS = {"euler_maruyama": euler_maruyama, "pc": predictor_corrector, "ode": probability_flow}
ODE_SOLVERS = ("rk45", "heun")


def sde_sample(score_model, sde: SDE, shape: Sequence[int], method: Method = "euler_maruyama", steps: int = 500,
               eps: float = 1e-3, context: Optional[Tensor] = None, x_T: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, progress: bool = True, *,
               guidance_scale: Optional[float] = None, uncond_context: Optional[Tensor] = None,
               snr: float = 0.16, corrector_steps: int = 1, ode_solver: str = "rk45",
               rtol: float = 1e-5, atol: float = 1e-5, return_trajectory: bool = False,
               return_info: bool = False, device=None):
    """Draw samples [B, ...] = shape by running `sde` backwards from its prior at t = 1 to t = eps.

    method: "euler_maruyama" (steps steps), "pc" (steps predictor steps, each after `corrector_steps`
        Langevin steps with signal-to-noise ratio `snr`), or "ode" (the probability-flow ODE, with
        ode_solver "rk45" to tolerances rtol/atol, which ignores `steps`, or "heun" with `steps` steps).
        Options of the other methods are ignored.
    score_model(x, t, context) returns the score; x_T replaces the prior draw; guidance_scale turns on
    classifier-free guidance (see guidance.py for the null context; or pass uncond_context).
    Returns x. With return_trajectory=True or return_info=True, returns (x, info), info a dict with
    "nfe" (score-model calls; a guided call of 2B counts once) and, for return_trajectory, "x" (CPU
    tensors: x at t = 1 and after every step, or every accepted RK45 step) and "t" (their times).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if method not in SDE_SAMPLERS:
        raise ValueError(f"method must be one of {tuple(SDE_SAMPLERS)}, got {method!r}")
    if ode_solver not in ODE_SOLVERS:
        raise ValueError(f"ode_solver must be one of {ODE_SOLVERS}, got {ode_solver!r}")
    _check_int("steps", steps, minimum=1)
    _check_int("corrector_steps", corrector_steps, minimum=0)
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in the open interval (0, 1), got {eps}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape must be [B, ...] with at least two positive integer sizes, got {shape}")
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    if x_T is not None and not torch.isfinite(x_T).all():
        raise ValueError("x_T must be finite: it holds NaN or inf")
    if context is not None and (context.ndim == 0 or context.shape[0] != shape[0]):
        raise ValueError(f"context must have batch size {shape[0]}, got shape {tuple(context.shape)}")
    if guidance_scale is not None:
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if context is None:
            raise ValueError("guidance_scale needs a context (the condition to guide towards)")

    device = device if device is not None else (x_T.device if x_T is not None else _model_device(score_model))
    x = x_T.to(device) if x_T is not None else sde.prior_sample(shape, generator, device)
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64).tolist()  # descending, ts[0] = 1, ts[-1] = eps
    score = GuidedScore(score_model, context, guidance_scale, uncond_context)
    info = {"nfe": 0, "x": [x.detach().cpu()], "t": [ts[0]]} if return_trajectory else {"nfe": 0}

    def record(t: float, x_t: Tensor) -> None:
        info["x"].append(x_t.detach().cpu())
        info["t"].append(t)

    was_training = getattr(score_model, "training", False)
    if was_training:
        score_model.eval()                                                 # dropout off while sampling
    try:
        with torch.no_grad():
            x = SDE_SAMPLERS[method](score, sde, x, ts, generator=generator,
                                     callback=record if return_trajectory else None, progress=progress,
                                     snr=snr, corrector_steps=corrector_steps, ode_solver=ode_solver,
                                     rtol=rtol, atol=atol)
    finally:
        if was_training:
            score_model.train()
    if not torch.isfinite(x).all():                                        # one cheap check, at the end
        raise FloatingPointError(f"sde_sample method {method!r} with steps={steps} produced NaN or inf (the score "
                                 f"model's output is not finite, the steps are too coarse, or {x.dtype} overflowed)")
    info["nfe"] = score.nfe
    return (x, info) if return_trajectory or return_info else x


# ==================================================================== helpers
def _check_time(t: Time, like: Optional[Tensor] = None) -> Tensor:
    """t as a float tensor [B] (like's batch, dtype and device when given), checked to lie in [0, 1]."""
    if like is not None:
        t = torch.as_tensor(t, dtype=like.dtype if like.is_floating_point() else None, device=like.device)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must have shape [B] = [{like.shape[0]}], got {tuple(t.shape)}")
    else:
        t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    # The range check reads the values back: done for CPU tensors only, so CUDA sampling loops do not wait
    # on the GPU every call and torch.compile can trace through (the samplers make valid times themselves).
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got min {t.min().item():.6g} and max {t.max().item():.6g}")
    return t


def _check_betas(beta_min: float, beta_max: float) -> Tuple[float, float]:
    beta_min, beta_max = float(beta_min), float(beta_max)
    if not (0 <= beta_min < beta_max < math.inf):
        raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    return beta_min, beta_max


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1], to broadcast against like [B, ...]."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _batch_time(t: float, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), t, dtype=like.dtype, device=like.device)


def _randn(shape, generator: Optional[torch.Generator], device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise, drawn on the generator's device (for reproducibility) and moved to `device`."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")
