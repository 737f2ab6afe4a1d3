"""Exact denoisers for data whose noisy marginals are known in closed form.

For data x0 ~ sum_k w_k N(m_k, s_k^2) (per coordinate), the marginal of x_i = sqrt(a) x0 + sqrt(1 - a) eps
(a = alpha_bar_i) is sum_k w_k N(sqrt(a) m_k, a s_k^2 + 1 - a), and the optimal epsilon prediction is
    E[eps | x_i] = sum_k r_k(x_i) sqrt(1 - a) (x_i - sqrt(a) m_k) / (a s_k^2 + 1 - a)
with r_k the posterior responsibility of component k. A sampler driven by it must reproduce the data.
"""

import math

import torch


class ExactGaussianMixtureEps:
    """model(x, t, context=None) -> E[eps | x_i] for 1-component or K-component Gaussian data."""

    def __init__(self, schedule, means, stds, weights=None):
        self.schedule = schedule
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        k = self.means.numel()
        self.weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None \
            else torch.as_tensor(weights, dtype=torch.float64)

    def alpha_bar(self, t):
        i = float(t[0]) * self.schedule.T - 1                    # t = (i + 1) / T
        return float(self.schedule.alpha_bar_at(min(max(i, 0.0), self.schedule.T - 1)))

    def __call__(self, x, t, context=None):
        a = self.alpha_bar(t)
        xd = x.double().unsqueeze(-1)                                  # [..., 1] against [K]
        var = a * self.stds**2 + (1 - a)                               # [K]
        log_p = torch.log(self.weights) - 0.5 * (xd - math.sqrt(a) * self.means) ** 2 / var - 0.5 * torch.log(var)
        r = torch.softmax(log_p, dim=-1)                               # responsibilities [..., K]
        eps = (r * math.sqrt(1 - a) * (xd - math.sqrt(a) * self.means) / var).sum(-1)
        return eps.to(x.dtype)
