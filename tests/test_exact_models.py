"""Exact denoisers for data whose noisy marginals are known in closed form (used by the sampler tests).

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


def test_exact_eps_is_the_posterior_mean_of_the_noise():
    """Check the closed form against Monte Carlo: bin noisy samples by x_i and average their true eps."""
    import minidiff as md

    schedule = md.NoiseSchedule.linear(T=1000)
    model = ExactGaussianMixtureEps(schedule, [-1.0, 1.0], [0.3, 0.3], [0.3, 0.7])
    g = torch.Generator().manual_seed(0)
    n, i = 400_000, 300
    component = (torch.rand(n, generator=g) < 0.7).double() * 2 - 1            # -1 or +1, weights 0.3 / 0.7
    x0 = component + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    x_i = schedule.add_noise(x0[:, None], eps[:, None], torch.full((n,), i))[:, 0]
    edges = torch.linspace(-1.5, 1.5, 13, dtype=torch.float64)
    t = schedule.model_time(torch.full((1,), i))
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x_i >= lo) & (x_i < hi)
        centre = x_i[inside].mean()
        predicted = model(centre.reshape(1, 1), t)[0, 0]
        # the bin is narrow (0.25) against the marginal's std (~1): its mean eps is the posterior mean at the centre
        assert abs(eps[inside].mean().item() - predicted.item()) < 0.02
