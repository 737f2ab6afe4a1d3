"""The exact denoiser of Gaussian and Gaussian-mixture data: the network a perfect training run would give.

For data x0 ~ p(x0) = sum_k w_k N(m_k, Sigma_k) and the Gaussian corruption every diffusion model uses,

    x = c x0 + sigma z,   z ~ N(0, I)          DDPM:  c = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)
                                                SDEs:  (c, sigma) = sde.marginal_prob at time t

the noisy marginal is again a mixture, p(x) = sum_k w_k N(x; c m_k, C_k) with C_k = c^2 Sigma_k + sigma^2 I,
and every quantity a network is trained to predict has a closed form (Tweedie's formula):

    r_k(x)    = w_k N(x; c m_k, C_k) / sum_j w_j N(x; c m_j, C_j)      posterior responsibility of component k
    score(x)  = grad_x log p(x) = -sum_k r_k C_k^-1 (x - c m_k)
    E[x0 | x] = sum_k r_k (m_k + c Sigma_k C_k^-1 (x - c m_k))           the denoiser; = (x + sigma^2 score) / c
    E[z | x]  = -sigma score(x)                                           the eps-prediction target
    E[v | x]  = c E[z | x] - sigma E[x0 | x]                              v = c z - sigma x0 (Salimans & Ho 2022)
    u(x, t)   = E[z | x] - E[x0 | x]  with c = 1 - t, sigma = t            the flow-matching velocity (flow.py)

A sampler driven by these is left with its own error only, which is how the tests and
benchmarks/sampler_accuracy.py measure samplers, and the lesson examples/toy_2d.py draws.

Two layouts of the data (fixed by the shape of `means`):
    means [K]      "elementwise": every coordinate of x (any shape [B, ...]) is an independent draw
                   from the 1-D mixture sum_k w_k N(m_k, s_k^2).
    means [K, D]   "vector": x is [..., D], one draw from a D-dimensional mixture; each component has
                   covariance s_k^2 I (stds [K]) or a full Sigma_k (covs [K, D, D]).

The network wrappers, called like any minidiff network, model(x, t, context=None) (context is ignored):
    ExactModel(data, schedule, prediction_type)   discrete time: eps / x0 / v at the step the time t names
    ExactScore(data, sde)                         continuous time: grad log p_t(x) for the VE / VP / sub-VP SDEs
    ExactVelocity(data)                           the linear path x_t = (1 - t) x0 + t z: u(x, t) = E[z - x0 | x_t]
All count their calls in `nfe`. The time convention of ExactModel is NoiseSchedule.alpha_bar_at_time:
t = (i + 1) / T is step i (fractional i interpolates the log-SNR), and below the first step, t < 1 / T,
1 - alpha_bar falls linearly to 0 at t = 0, so t = 0 is the clean data (E[x0 | x] = x, E[z | x] = 0).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .schedule import PREDICTION_TYPES, NoiseSchedule, PredictionType

Number = Union[float, Tensor]


class GaussianMixture:
    """Data p(x0) = sum_k w_k N(m_k, Sigma_k), with its exact noisy marginals. See the module docstring.

    means:   [K] (elementwise layout) or [K, D] (vector layout)
    stds:    [K], component k's standard deviation per coordinate (Sigma_k = s_k^2 I); or
    covs:    [K, D, D], full covariances (vector layout only); exactly one of stds and covs
    weights: [K], summing to 1; equal weights when None
    All are stored as float64; every method computes in float64 and returns x's dtype.
    """

    def __init__(self, means, stds=None, weights=None, covs=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim not in (1, 2) or self.means.shape[0] < 1:
            raise ValueError(f"means must have shape [K] or [K, D] with K >= 1, got {tuple(self.means.shape)}")
        self.elementwise = self.means.ndim == 1
        K = self.means.shape[0]
        D = 1 if self.elementwise else self.means.shape[1]
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds ([K]) and covs ([K, D, D])")
        if stds is not None:
            self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
            if self.stds.shape != (K,) or not (self.stds > 0).all():
                raise ValueError(f"stds must be {K} positive numbers, got {stds!r}")
            self.lam = (self.stds**2)[:, None].expand(K, D)                     # eigenvalues of Sigma_k [K, D]
            self.U = None                                                       # eigenvectors: the identity
        else:
            if self.elementwise:
                raise ValueError("covs needs means of shape [K, D]; for 1-D elementwise data give stds")
            covs = torch.as_tensor(covs, dtype=torch.float64)
            if covs.shape != (K, D, D):
                raise ValueError(f"covs must have shape [K, D, D] = [{K}, {D}, {D}], got {tuple(covs.shape)}")
            self.lam, self.U = torch.linalg.eigh(covs)                          # Sigma_k = U_k diag(lam_k) U_k^T
            if not (self.lam > 0).all():
                raise ValueError("covs must be positive definite")
        self.covs = covs
        self.weights = (torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None
                        else torch.as_tensor(weights, dtype=torch.float64).reshape(-1))
        if self.weights.shape != (K,) or (self.weights <= 0).any() or abs(self.weights.sum().item() - 1) > 1e-6:
            raise ValueError(f"weights must be {K} positive numbers summing to 1, got {weights!r}")

    @classmethod
    def gaussian(cls, mean, cov) -> "GaussianMixture":
        """One Gaussian N(mean, cov) in D dimensions: mean [D], cov [D, D]."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        return cls(mean[None], covs=torch.as_tensor(cov, dtype=torch.float64)[None])

    @classmethod
    def ring(cls, k: int = 8, radius: float = 1.0, std: float = 0.08) -> "GaussianMixture":
        """K equally weighted isotropic 2-D Gaussians N(m_k, std^2 I), centres m_k evenly on a circle."""
        angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        return cls(radius * torch.stack([angles.cos(), angles.sin()], 1), [std] * k)      # means [K, 2]

    def nearest(self, x: Tensor):
        """(distance [N], index [N]) of each point x [N, D] to its nearest component mean (vector layout)."""
        return torch.cdist(x.double(), self.means.to(x.device)).min(1)

    def __repr__(self) -> str:
        layout = "elementwise" if self.elementwise else f"D={self.means.shape[1]}"
        return f"GaussianMixture(K={self.means.shape[0]}, {layout})"

    # ---------------------------------------------------------------- drawing
    def sample(self, shape, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draws from p, float64. Elementwise layout: `shape` is the whole sample shape. Vector layout:
        `shape` is the number of points n (or a batch shape); returns [n, D]."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        k = torch.multinomial(self.weights, math.prod(shape), replacement=True, generator=generator)
        if self.elementwise:
            z = torch.randn(k.shape, generator=generator, dtype=torch.float64)
            return (self.means[k] + self.stds[k] * z).reshape(shape)
        z = torch.randn(*k.shape, self.means.shape[1], generator=generator, dtype=torch.float64)   # [n, D]
        z = z * self.lam[k].sqrt()                                                # scaled in the eigenbasis
        if self.U is not None:
            z = torch.einsum("nde,ne->nd", self.U[k], z)                          # rotated back: U_k z
        return (self.means[k] + z).reshape(*shape, -1)

    # ---------------------------------------------------------------- the noisy marginal at (c, sigma)
    def _terms(self, x: Tensor, c: Number, sigma: Number):
        """Per-component pieces at x: log(w_k N(x; c m_k, C_k)) [..., K], d = x - c m_k in each component's
        eigenbasis [..., K, D], var = c^2 lam + sigma^2 [..., K, D] (C_k's eigenvalues), and c, sigma
        shaped to broadcast against them."""
        xd = x.to(torch.float64)                                                  # differentiable in x
        c, sigma = (_per_sample(v, xd) for v in (c, sigma))                       # [B, 1, ..., 1] or scalars
        if self.elementwise:
            xd, c, sigma = xd[..., None, None], c[..., None, None], sigma[..., None, None]  # [..., 1(K), 1(D)]
        else:
            xd, c, sigma = xd[..., None, :], c[..., None], sigma[..., None]      # [..., 1(K), D], [..., 1, 1]
        means, lam = self.means.to(xd.device), self.lam.to(xd.device)
        if self.elementwise:
            means = means[:, None]                                                # [K, 1]
        d = xd - c * means                                                        # [..., K, D]
        if self.U is not None:
            d = torch.einsum("...kd,kde->...ke", d, self.U.to(xd.device))        # U_k^T (x - c m_k)
        var = c**2 * lam + sigma**2                                               # [..., K, D]
        log_joint = (torch.log(self.weights.to(xd.device))
                     - 0.5 * (d**2 / var + torch.log(2 * math.pi * var)).sum(-1))  # [..., K]
        return log_joint, d, var, c, sigma

    def _rotate_back(self, y: Tensor) -> Tensor:
        """[..., K, D] in each component's eigenbasis -> the data basis (U_k y)."""
        return y if self.U is None else torch.einsum("...ke,kde->...kd", y, self.U.to(y.device))

    def _mix(self, log_joint: Tensor, per_component: Tensor, x: Tensor) -> Tensor:
        """sum_k r_k per_component_k -> x's shape and dtype."""
        r = torch.softmax(log_joint, dim=-1)[..., None]                           # responsibilities [..., K, 1]
        out = (r * per_component).sum(-2)                                         # [..., D]
        return (out[..., 0] if self.elementwise else out).to(x.dtype)

    def log_prob(self, x: Tensor, c: Number = 1.0, sigma: Number = 0.0) -> Tensor:
        """log p(x) of the noisy marginal at (c, sigma); the data itself at the defaults. Elementwise layout:
        [B, ...] -> [B, ...] per coordinate; vector layout: [..., D] -> [...]."""
        log_joint = self._terms(x, c, sigma)[0]
        return torch.logsumexp(log_joint, dim=-1).to(x.dtype)

    def score(self, x: Tensor, c: Number = 1.0, sigma: Number = 0.0) -> Tensor:
        """grad_x log p(x) = -sum_k r_k C_k^-1 (x - c m_k); x's shape. c, sigma: numbers or [B] per sample."""
        log_joint, d, var, _, _ = self._terms(x, c, sigma)
        return self._mix(log_joint, self._rotate_back(-d / var), x)

    def denoise(self, x: Tensor, c: Number, sigma: Number) -> Tensor:
        """E[x0 | x] = sum_k r_k (m_k + c Sigma_k C_k^-1 (x - c m_k)); x's shape. Finite at c = 0 (the prior's
        mean) and at sigma = 0 (x / c)."""
        log_joint, d, var, c, _ = self._terms(x, c, sigma)
        means = self.means.to(d.device)
        means = means[:, None] if self.elementwise else means                    # [K, D]
        return self._mix(log_joint, means + self._rotate_back(c * self.lam.to(d.device) * d / var), x)

    def eps(self, x: Tensor, c: Number, sigma: Number) -> Tensor:
        """E[z | x] = -sigma score(x): what an eps network should predict; x's shape. 0 at sigma = 0."""
        log_joint, d, var, _, sigma = self._terms(x, c, sigma)
        return self._mix(log_joint, self._rotate_back(sigma * d / var), x)

    def velocity(self, x: Tensor, t: Number) -> Tensor:
        """The marginal velocity of the linear path x_t = (1 - t) x0 + t z (flow.py): E[z - x0 | x_t = x], x's shape.

        t: a number or [B]. Equals (z - E[x0]) with c = 1 - t, sigma = t; finite on [0, 1]."""
        t = torch.as_tensor(t, dtype=torch.float64)
        c, sigma = 1 - t, t
        return (self.eps(x, c, sigma).double() - self.denoise(x, c, sigma).double()).to(x.dtype)


# -------------------------------------------------------------------- networks made of the oracle
class ExactModel(nn.Module):
    """The perfect discrete-time network for `data` under `schedule`: model(x, t, context=None) -> [B, ...].

    t [B] is the network time (i + 1) / T; alpha_bar(t) = schedule.alpha_bar_at_time(t), per sample.
    prediction_type "epsilon" returns E[z | x], "sample" E[x0 | x], "v_prediction" E[v | x].
    `nfe` counts the calls.
    """

    def __init__(self, data: GaussianMixture, schedule: NoiseSchedule, prediction_type: PredictionType = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.data, self.schedule, self.prediction_type, self.nfe = data, schedule, prediction_type, 0

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        self.nfe += 1
        alpha_bar = self.schedule.alpha_bar_at_time(t)                           # float64 [B] (or [])
        c, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction_type == "epsilon":
            return self.data.eps(x, c, sigma)
        if self.prediction_type == "sample":
            return self.data.denoise(x, c, sigma)
        v = _per_sample(c, x) * self.data.eps(x, c, sigma) - _per_sample(sigma, x) * self.data.denoise(x, c, sigma)
        return v.to(x.dtype)                                                       # v = c z - sigma x0


class ExactScore(nn.Module):
    """The perfect score network for `data` under an SDE: score_model(x, t, context=None) -> grad log p_t(x).

    t [B] (or a number) is SDE time in [0, 1]; (c, sigma) = sde.marginal_prob's mean coefficient and std.
    `nfe` counts the calls.
    """

    def __init__(self, data: GaussianMixture, sde):
        super().__init__()
        self.data, self.sde, self.nfe = data, sde, 0

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        self.nfe += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()
        c, sigma = self.sde.marginal_prob(torch.ones(t.shape[0], dtype=torch.float64), t)   # [B] each
        return self.data.score(x, c, sigma)


class ExactVelocity(nn.Module):
    """The perfect flow-matching network for `data`: model(x, t, context=None) -> E[z - x0 | x_t = x] (flow time t).

    `nfe` counts the calls.
    """

    def __init__(self, data: GaussianMixture):
        super().__init__()
        self.data, self.nfe = data, 0

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        self.nfe += 1
        return self.data.velocity(x, torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu())


def _per_sample(v: Number, like: Tensor) -> Tensor:
    """A number, a 0-d or 1-element tensor (one value for the batch) or a [B] tensor (one per sample) as a
    float64 tensor on like's device that broadcasts against like [B, ...]."""
    v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    if v.numel() == 1:
        return v.reshape(())
    return v.reshape(-1, *([1] * (like.ndim - 1)))
