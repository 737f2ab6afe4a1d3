"""The discrete-time noise schedule: the forward process q(x_i | x_0) and everything derived from it.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sections 2-3.

Symbols (used with these names throughout minidiff):
    T            number of diffusion steps; a step is indexed i = 0 .. T-1
    beta         beta[i]  = variance added at step i:  q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I)
    alpha        alpha[i] = 1 - beta[i]
    alpha_bar    alpha_bar[i] = prod_{j <= i} alpha[j]:  q(x_i | x_0) = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I)
    sigma        sqrt((1 - alpha_bar) / alpha_bar): the noise level of the same x_i in "variance exploding"
                 units, x_i / sqrt(alpha_bar_i) = x_0 + sigma_i * eps  (Karras et al. 2022)
    lambda_      log-SNR, log(alpha_bar / (1 - alpha_bar)) = -2 log sigma  (Lu et al. 2022)

A network sees discrete step i as the float t = (i + 1) / T, in (0, 1].

Tables are float64 tensors; samplers cast the numbers they use to the sample's dtype.
The conversions between the three things a network may predict (epsilon, x0, v) are small pure
functions at the bottom of this file, written for a broadcastable `alpha_bar`.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, Tuple, Union

import torch
from torch import Tensor

from .tensors import per_sample

Spacing = Literal["leading", "trailing", "linspace", "karras"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
SPACINGS = ("leading", "trailing", "linspace", "karras")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class NoiseSchedule:
    """A variance schedule beta_0 .. beta_{T-1} and the tables derived from it.

    Ho et al. 2020 (linear), Nichol & Dhariwal 2021 (cosine), Rombach et al. 2022 (scaled linear),
    Lin et al. 2023 (zero terminal SNR).

    Build one with a constructor: ``NoiseSchedule.linear(T=1000)``, ``.scaled_linear``, ``.cosine``,
    or ``.from_betas(betas)``. Every table is a float64 tensor of length T on the CPU.
    """

    def __init__(self, betas: Tensor, zero_terminal_snr: bool = False):
        try:
            betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"betas must be a 1-D sequence of numbers in (0, 1), got {betas!r} ({error})") from None
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor with T >= 1 entries, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise ValueError(
                f"betas must lie in the open interval (0, 1), got min {betas.min().item():.4g} "
                f"and max {betas.max().item():.4g}"
            )
        # In float64, 1 - beta rounds to 1 below beta ~ 1.1e-16 and alpha_bar underflows to 0 after enough
        # large betas: either makes sigma 0 or infinite and the samplers divide by zero.
        if (1.0 - betas == 1.0).any():
            raise ValueError(f"betas must be > 1.1e-16 (so that 1 - beta < 1 in float64), "
                             f"got min {betas.min().item():.4g}")
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        if alpha_bar[-1] == 0 or (alpha_bar[1:] >= alpha_bar[:-1]).any():     # 0, or stuck at a subnormal value
            raise ValueError(f"betas make alpha_bar underflow to 0 (T={betas.numel()}, max beta "
                             f"{betas.max().item():.4g}); use fewer steps T or smaller betas")
        if zero_terminal_snr and betas.numel() < 2:
            raise ValueError("zero_terminal_snr needs T >= 2 steps (it rescales between the first and the last)")
        self._config = {"betas": betas.tolist(), "zero_terminal_snr": bool(zero_terminal_snr)}
        if zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        self.zero_terminal_snr = zero_terminal_snr

        self.betas = betas                                         # beta_i
        self.alphas = 1.0 - betas                                  # alpha_i
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)    # alpha_bar_i
        self.alphas_cumprod_list = self.alphas_cumprod.tolist()    # the same as python floats, for sampler loops
        # alpha_bar_{i-1}, with alpha_bar_{-1} = 1: "before step 0" is clean data.
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # sigma_i and lambda_i; at a zero-terminal-SNR last step they are +inf and -inf.
        self.sigmas = (self.sqrt_one_minus_alphas_cumprod / self.sqrt_alphas_cumprod)
        self.log_snr = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)
        # Posterior q(x_{i-1} | x_i, x_0) = N(coef_x0 * x_0 + coef_xt * x_i, posterior_variance)  (Ho et al. Eq. 7)
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - ab_prev) / (1.0 - ab)
        self.posterior_mean_coef_x0 = betas * ab_prev.sqrt() / (1.0 - ab)
        self.posterior_mean_coef_xt = (1.0 - ab_prev) * self.alphas.sqrt() / (1.0 - ab)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020, Section 4)."""
        _check_T(T)
        _check_beta_range(beta_start, beta_end)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), zero_terminal_snr)

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """sqrt(beta) evenly spaced (the latent-diffusion / Stable Diffusion schedule)."""
        _check_T(T)
        _check_beta_range(beta_start, beta_end)
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
        return cls(root**2, zero_terminal_snr)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999,
               zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """alpha_bar(t) = cos^2(((t + s) / (1 + s)) pi/2) (Nichol & Dhariwal 2021, Eq. 17),
        betas clipped at max_beta.."""
        _check_T(T)
        if not s >= 0:
            raise ValueError(f"s must be >= 0, got {s}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        f = lambda t: torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        t = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = f(t) / f(torch.zeros((), dtype=torch.float64))
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]                # beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}
        return cls(betas.clamp(max=max_beta), zero_terminal_snr)

    @classmethod
    def course(cls, T: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """The DeepLearning.AI sprites course's table, exactly.

        The course builds T + 1 betas and a cumulative product over all of them, then overwrites its first
        entry with 1:

            b_t = (beta_end - beta_start) * linspace(0, 1, T + 1) + beta_start,   t = 0 .. T
            ab_t = exp(cumsum(log(1 - b_t)));  ab_t[0] = 1

        The course's step t = 1 .. T is minidiff's i = t - 1, so alphas_cumprod[i] = ab_t[i + 1]. The course's
        ab_t[1] = (1 - b_0)(1 - b_1) keeps the factor of b_0, so minidiff's first beta is 1 - (1 - b_0)(1 - b_1)
        (about 2e-4) and beta[i] = b_{i+1} after it. This is not ``linear(T, beta_start, beta_end)``, whose T
        betas are spaced over T points instead of T + 1 (its sigma is 35% larger at the first step).
        """
        _check_T(T)
        if not 0 <= beta_start < 1:  # b_0 = beta_start only enters ab_t[1]: 0 is allowed (every beta_i > 0)
            raise ValueError(f"beta_start must lie in [0, 1), got {beta_start}")
        if not 0 < beta_end < 1:
            raise ValueError(f"beta_end must lie in the open interval (0, 1), got {beta_end}")
        b = (beta_end - beta_start) * torch.linspace(0, 1, T + 1, dtype=torch.float64) + beta_start   # b_t, t = 0..T
        alpha_bar = torch.exp(torch.cumsum(torch.log(1 - b), dim=0))[1:]       # ab_t[t], t = 1..T
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return cls(1.0 - alpha_bar / alpha_bar_prev)                           # beta_i = 1 - ab_i / ab_{i-1}

    @classmethod
    def from_betas(cls, betas, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """Any betas you like: a sequence or 1-D tensor with values in (0, 1)."""
        return cls(betas, zero_terminal_snr)                                  # __init__ converts and checks

    # ---------------------------------------------------------------- basic facts
    @property
    def T(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.T}, beta[0]={self.betas[0].item():.4g}, "
                f"beta[T-1]={self.betas[-1].item():.4g}, alpha_bar[T-1]={self.alphas_cumprod[-1].item():.3g})")

    def to_config(self) -> dict:
        """A plain dict (betas as a list) from which ``NoiseSchedule.from_config`` rebuilds this schedule."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        return cls(torch.tensor(config["betas"], dtype=torch.float64), config.get("zero_terminal_snr", False))

    def model_time(self, i: Union[Tensor, int, float]) -> Tensor:
        """The network's time input for (possibly fractional) step index i: t = (i + 1) / T."""
        return (torch.as_tensor(i, dtype=torch.float64) + 1.0) / self.T

    def alpha_bar_at(self, i: Union[Tensor, float]) -> Tensor:
        """alpha_bar at a fractional step index, interpolating log-SNR linearly between table entries.

        Equals ``alphas_cumprod[i]`` at integer i. Used by samplers on a Karras sigma grid.
        """
        i = torch.as_tensor(i, dtype=torch.float64)
        if not ((i >= 0) & (i <= self.T - 1)).all():                                 # NaN fails too
            raise ValueError(f"step index must lie in [0, T-1] = [0, {self.T - 1}], got {i}")
        lo = i.floor().long().clamp(max=self.T - 1)
        hi = (lo + 1).clamp(max=self.T - 1)
        w = i - lo
        lam = (1 - w) * self.log_snr[lo] + w * self.log_snr[hi]
        # alpha_bar = sigmoid(lambda); exact table entries at integer i (also where lambda is -inf).
        return torch.where(w == 0, self.alphas_cumprod[lo], torch.sigmoid(lam))

    def alpha_bar_at_time(self, t: Union[Tensor, float]) -> Tensor:
        """alpha_bar at the network's time t in [0, 1] (any shape), float64 on the CPU.

        t = (i + 1) / T is step i: `alpha_bar_at(t T - 1)` for t in [1/T, 1]. Below the first step,
        t in [0, 1/T), 1 - alpha_bar falls linearly from 1 - alpha_bar[0] to 0 at t = 0, as it does for
        the VP SDE: continuous at t = 1/T, and t = 0 is clean data (alpha_bar = 1). Rounding below 0
        (a float32 t - 1/T) counts as 0.
        """
        i = torch.as_tensor(t).detach().to("cpu", torch.float64) * self.T - 1          # fractional step index
        below = 1 - (i + 1).clamp(min=0) * (1 - self.alphas_cumprod[0])                # t < 1/T: linear in t
        return torch.where(i < 0, below, self.alpha_bar_at(i.clamp(min=0)))

    def step_index_from_sigma(self, sigma: Tensor) -> Tensor:
        """The fractional step index i whose noise level is sigma (inverse of `alpha_bar_at`), float64."""
        neg_log_snr = -self.log_snr[torch.isfinite(self.log_snr)]                 # increasing in i
        target = 2 * torch.as_tensor(sigma, dtype=torch.float64).log()            # -lambda_ = 2 log sigma
        hi = torch.searchsorted(neg_log_snr, target).clamp(1, neg_log_snr.numel() - 1)
        lo = hi - 1
        w = (target - neg_log_snr[lo]) / (neg_log_snr[hi] - neg_log_snr[lo])
        return lo + w.clamp(0, 1)

    # ---------------------------------------------------------------- forward process
    def add_noise(self, x0: Tensor, noise: Tensor, i: Tensor) -> Tensor:
        """Sample q(x_i | x_0) in closed form: x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) noise  (Ho Eq. 4).

        x0, noise: [B, ...]; i: int64 [B] (or a python int for the whole batch). Returns [B, ...].
        """
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
        alpha_bar = self._gather(self.alphas_cumprod, i, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def velocity(self, x0: Tensor, noise: Tensor, i: Tensor) -> Tensor:
        """The v-prediction target v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0  (Salimans & Ho 2022, Sec. 4)."""
        alpha_bar = self._gather(self.alphas_cumprod, i, x0)
        return v_from_x0_eps(x0, noise, alpha_bar)

    def q_posterior(self, x0: Tensor, x_i: Tensor, i: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{i-1} | x_i, x_0)  (Ho et al. Eqs. 6-7). Shapes [B, ...] and broadcastable."""
        coef_x0 = self._gather(self.posterior_mean_coef_x0, i, x0)
        coef_xt = self._gather(self.posterior_mean_coef_xt, i, x0)
        variance = self._gather(self.posterior_variance, i, x0)
        return coef_x0 * x0 + coef_xt * x_i, variance

    # ---------------------------------------------------------------- sampling grids
    def timesteps(self, steps: int, spacing: Spacing = "leading") -> Tensor:
        """`steps` step indices in descending order, the grid a sampler visits.

        "leading"  : i = k * (T // steps), k = 0..steps-1       (DDIM; linear(1000).timesteps(50) = [980, ..., 20, 0])
        "trailing" : i = round(T - k * T / steps) - 1          (starts at T-1; Lin et al. 2023, Table 2)
        "linspace" : i = round(linspace(0, T-1, steps))
        "karras"   : FRACTIONAL indices (float64) at the noise levels of Karras et al. 2022, Eq. 5 (rho = 7):
                     sigma_k = (sigma_max^(1/rho) + k/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
                     dense at low noise, where small data details are decided.
        The int64 grids are all table entries; the "karras" grid is read through `alpha_bar_at`.
        """
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= self.T:
            raise ValueError(f"steps must be an integer in [1, T] = [1, {self.T}], got {steps!r}")
        steps = int(steps)                                                   # numpy integers too
        if spacing == "leading":
            grid = torch.arange(steps, dtype=torch.int64) * (self.T // steps)
        elif spacing == "trailing":
            grid = torch.round(torch.arange(self.T, 0, -self.T / steps, dtype=torch.float64)).long() - 1
            grid = grid[:steps]
        elif spacing == "linspace":
            grid = torch.linspace(0, self.T - 1, steps, dtype=torch.float64).round().long()
        elif spacing == "karras":
            rho, sigma_min, sigma_max = 7.0, self.sigmas[0].item(), self.sigmas[-1].item()
            if not math.isfinite(sigma_max):                           # zero terminal SNR: start one step lower
                sigma_max = self.sigmas[-2].item()
            if sigma_max <= sigma_min and steps > 1:
                raise ValueError(f"spacing 'karras' needs two distinct noise levels; this schedule has one, so "
                                 f"steps must be 1, got {steps}")
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            grid = self.step_index_from_sigma(sigmas)
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        return grid.sort(descending=True).values

    # ---------------------------------------------------------------- helpers
    def _gather(self, table: Tensor, i, like: Tensor) -> Tensor:
        """table[i] as `like`'s dtype and device, shaped [B, 1, 1, ...] to broadcast over `like` [B, ...]."""
        i = torch.as_tensor(i, device="cpu")
        if i.dtype.is_floating_point:
            raise ValueError(f"step index i must be an integer tensor, got dtype {i.dtype}")
        if i.ndim == 0:
            i = i.expand(like.shape[0] if like.ndim > 0 else 1)
        if i.ndim != 1 or (like.ndim > 0 and i.shape[0] != like.shape[0]):
            raise ValueError(f"step index i must have shape [B] = [{like.shape[0]}], got {tuple(i.shape)}")
        if ((i < 0) | (i >= self.T)).any():
            raise ValueError(f"step index i must lie in [0, T-1] = [0, {self.T - 1}], got min {i.min()} max {i.max()}")
        values = table[i].to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)
        return per_sample(values, like)


# -------------------------------------------------------------------- construction checks
def _check_T(T) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so its last value is 0 and its first unchanged (Lin et al. 2023, Algorithm 1).

    The last beta becomes exactly 1: x_{T-1} is pure noise, the SNR there is zero.
    """
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    rescaled = 1.0 - alphas
    # The constructor's (0, 1) check is bypassed for the one beta that is 1 by design.
    return rescaled.clamp(min=torch.finfo(torch.float64).tiny)


# -------------------------------------------------------------------- parameterisations
# x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps ;  v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0.
# `alpha_bar` is anything that broadcasts against x_t (a python float, or a [B, 1, 1, 1] tensor).

def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar) -> Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)  (Ho et al. Eq. 15)."""
    return (x_t - _sqrt(1 - alpha_bar) * eps) / _sqrt(alpha_bar)


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
    return (x_t - _sqrt(alpha_bar) * x0) / _sqrt(1 - alpha_bar)


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha_bar) -> Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0  (Salimans & Ho 2022)."""
    return _sqrt(alpha_bar) * eps - _sqrt(1 - alpha_bar) * x0


def x0_eps_from_v(x_t: Tensor, v: Tensor, alpha_bar) -> Tuple[Tensor, Tensor]:
    """x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v ;  eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v."""
    a, s = _sqrt(alpha_bar), _sqrt(1 - alpha_bar)
    return a * x_t - s * v, s * x_t + a * v


def x0_eps_from_output(output: Tensor, x_t: Tensor, alpha_bar,
                       prediction_type: PredictionType) -> Tuple[Tensor, Tensor]:
    """Turn a network's raw output into the pair (x0_pred, eps_pred), whatever it was trained to predict."""
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, output, alpha_bar), output
    if prediction_type == "sample":
        return output, eps_from_x0(x_t, output, alpha_bar)
    if prediction_type == "v_prediction":
        return x0_eps_from_v(x_t, output, alpha_bar)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _sqrt(value):
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)
