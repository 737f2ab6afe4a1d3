"""Score-based generative modelling with SDEs: the VE, VP and sub-VP SDEs (their samplers: sde_samplers.py).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations" (ICLR 2021). "Eq. n" below is that paper's equation n.

Symbols (used with these names throughout):
    t          SDE time in [0, 1]: t = 0 is the data, t = 1 the prior
    f, g       drift f(x, t) and diffusion g(t) of the forward SDE  dx = f(x, t) dt + g(t) dw     (Eq. 5)
    score      grad_x log p_t(x), what a score model returns: score_model(x, t, context)
    mean, std  the perturbation kernel p_0t(x(t) | x(0)) = N(mean, std^2 I), in closed form (App. B)
    t_min      the smallest time a sampler visits or the loss draws (noise is `z`; `eps` names noise only)

The reverse-time SDE  dx = [f - g^2 score] dt + g dw_bar  (Eq. 6) generates data from the prior; the
probability-flow ODE  dx/dt = f - 1/2 g^2 score  (Eq. 13) has the same marginals and no noise.

Shapes: x is [B, ...] and t is [B] (a python float or 0-d tensor is broadcast to the batch). The
per-sample scalars g and std come back shaped [B, 1, ..., 1], so they broadcast against x;
`marginal_std(t)` returns [B].

The samplers (Euler–Maruyama, predictor–corrector, probability-flow ODE) and `sde_sample` live in
sde_samplers.py, the likelihood in likelihood.py, the ODE solvers in ode.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType, x0_eps_from_output
from .tensors import per_sample, randn

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

    def x0_from_score(self, x: Tensor, t: Time, score: Tensor) -> Tensor:
        """E[x(0) | x(t) = x] from the score (Tweedie's formula): (x + std^2 score) / c, mean = c x(0)."""
        c, std = self.marginal_prob(torch.ones_like(x), t)
        return (x + std**2 * score) / c

    def langevin_alpha(self, t: Time, dt: float) -> Tensor:
        """The factor alpha_i in the Langevin corrector's step size, [B] (Algorithms 4-5): 1 for VE."""
        t = _check_time(t)
        return torch.ones_like(t)

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """z ~ N(0, prior_std^2 I) of the given shape (drawn on the generator's device, then moved to `device`)."""
        return self.prior_std * randn(tuple(shape), generator, device, dtype)

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
        return torch.zeros_like(x), per_sample(g, x)

    def marginal_std(self, t):
        t = _check_time(t)
        # c^2 (r^(2t) - 1) / (2 ln r), with expm1 so that small t keeps its precision
        return self.scale * torch.sqrt(torch.expm1(2 * t * self.log_rate) / (2 * self.log_rate))

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        return x0, per_sample(self.marginal_std(t), x0)           # mean x0, variance std(t)^2  (App. B)

    def discretize(self, x, t, dt):
        # The SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z  (Eq. 8): the exact increment
        t = _check_time(t, x)
        var_increment = self.marginal_std(t) ** 2 - self.marginal_std((t - dt).clamp(min=0)) ** 2
        return torch.zeros_like(x), per_sample(var_increment.clamp(min=0).sqrt(), x)


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
        beta = per_sample(self.beta(t), x)
        return -0.5 * beta * x, beta.sqrt()

    def marginal_std(self, t):
        t = _check_time(t)
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))     # sqrt(1 - e^{-int beta})

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        mean = per_sample(torch.exp(self.log_mean_coeff(t)), x0) * x0   # App. B
        return mean, per_sample(self.marginal_std(t), x0)

    def discretize(self, x, t, dt):
        # The DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z  (Eq. 10), with beta_i = beta(t) dt
        t = _check_time(t, x)
        beta_step = per_sample(self.beta(t) * dt, x)
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
        beta = per_sample(self.beta(t), x)
        shrink = per_sample(-torch.expm1(4 * self.log_mean_coeff(t)), x)   # 1 - e^{-2 int beta}
        return -0.5 * beta * x, torch.sqrt(beta * shrink)

    def marginal_std(self, t):
        t = _check_time(t)
        return -torch.expm1(2 * self.log_mean_coeff(t))                   # 1 - e^{-int beta}

    def marginal_prob(self, x0, t):
        t = _check_time(t, x0)
        mean = per_sample(torch.exp(self.log_mean_coeff(t)), x0) * x0    # App. B
        return mean, per_sample(self.marginal_std(t), x0)

    def langevin_alpha(self, t, dt):
        return 1 - self.beta(_check_time(t)) * dt                        # as for the VP SDE (Algorithm 5)


SDE_CLASSES = {"VESDE": VESDE, "VPSDE": VPSDE, "SubVPSDE": SubVPSDE}


def sde_from_config(config: dict) -> SDE:
    """Rebuild an SDE from ``sde.to_config()``, e.g. {"class": "VESDE", "kwargs": {"sigma": 25.0}}."""
    from .flow import RectifiedFlow  # the linear path of flow models (flow.py)
    classes = {**SDE_CLASSES, "RectifiedFlow": RectifiedFlow}
    name = config.get("class") if isinstance(config, dict) else None
    if name not in classes:
        raise ValueError(f"config['class'] must be one of {tuple(classes)}, got {config!r}")
    try:
        return classes[name](**config.get("kwargs", {}))
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
        for name in ("num_classes", "null_id", "null_context"):      # what guidance and training ask of the model
            if hasattr(eps_model, name):
                setattr(self, name, getattr(eps_model, name))

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar at SDE time t, float64 [B] on the CPU."""
        return self.schedule.alpha_bar_at_time(_check_time(t))             # t < 1/T: linear to 1 at t = 0

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        t = _check_time(t, x)
        alpha_bar = per_sample(self.alpha_bar(t).to(device=x.device, dtype=x.dtype), x)
        output = self.eps_model(x, t, context)                             # t_net = (i + 1) / T = t
        _, eps = x0_eps_from_output(output, x, alpha_bar, self.prediction_type)
        return -eps / torch.sqrt(1 - alpha_bar)                            # grad log p_t = -E[eps | x] / sqrt(1 - ab)


def as_score_model(eps_model, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon") -> ScoreFromEps:
    """Wrap a DDPM eps (or x0 / v) network so the VP SDE and ODE samplers can use it; see ScoreFromEps."""
    return ScoreFromEps(eps_model, schedule, prediction_type)


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


def check_t_min(t_min: float, eps: Optional[float] = None, where: str = "this function") -> float:
    """t_min checked to lie in (0, 1); `eps`, its old name (deprecated), wins with a DeprecationWarning."""
    if eps is not None:
        warnings.warn(f"{where}(eps=...) is deprecated and will be removed in the next release: the smallest "
                      f"SDE time is now called t_min (eps names noise only)", DeprecationWarning, stacklevel=3)
        t_min = eps
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in the open interval (0, 1), got {t_min}")
    return t_min
