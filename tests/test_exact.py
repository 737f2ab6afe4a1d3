"""minidiff.exact, the one exact oracle, against Monte Carlo and against its own identities.

The posterior mean E[x0 | x] is estimated with no closed form at all: draw many x0 from the data, weight each
by the Gaussian kernel N(x; c x0, sigma^2 I) (self-normalised importance sampling with the data as proposal),
and average. The closed-form denoiser must agree within a few standard errors of that estimate.
"""

import math

import pytest
import torch

import minidiff as md
from minidiff.exact import ExactModel, ExactScore, GaussianMixture

DATA = {
    "1-D elementwise mixture": GaussianMixture([-1.0, 1.0], [0.3, 0.4], [0.3, 0.7]),
    "2-D isotropic mixture": GaussianMixture([[1.2, 0.0], [-1.0, 1.5], [-1.5, -2.0]], [0.25, 0.4, 0.3],
                                             [0.5, 0.3, 0.2]),
    "3-D correlated Gaussian": GaussianMixture.gaussian([0.5, -0.3, 0.2], [[0.3, 0.1, 0.0], [0.1, 0.2, 0.05],
                                                                          [0.0, 0.05, 0.1]]),
    "2-D full-covariance mixture": GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], weights=[0.4, 0.6],
                                                   covs=[[[0.2, 0.1], [0.1, 0.1]], [[0.05, -0.02], [-0.02, 0.3]]]),
}
NOISE = [(0.95, math.sqrt(1 - 0.95**2)), (0.6, 0.8), (0.2, math.sqrt(1 - 0.04)), (1.0, 0.5)]   # (c, sigma)


def monte_carlo_posterior_mean(data, x, c, sigma, n=200_000, seed=0):
    """E[x0 | x] ~ sum_n w_n x0_n / sum_n w_n, w_n = N(x; c x0_n, sigma^2 I), x0_n ~ data; and its standard error."""
    x0 = data.sample((n, 1) if data.elementwise else n, torch.Generator().manual_seed(seed))   # [n, 1] or [n, D]
    log_w = -((x[:, None, :] - c * x0[None]) ** 2).sum(-1) / (2 * sigma**2)                    # [Q, n]
    w = torch.softmax(log_w, dim=1)
    mean = w @ x0                                                                                # [Q, D]
    # delta-method standard error of a self-normalised estimate: sqrt(sum_n w_n^2 (x0_n - mean)^2)
    se = ((w[..., None] ** 2) * (x0[None] - mean[:, None]) ** 2).sum(1).sqrt()
    return mean, se


@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("c, sigma", NOISE)
def test_denoiser_is_the_monte_carlo_posterior_mean(name, c, sigma):
    data = DATA[name]
    g = torch.Generator().manual_seed(1)
    x0 = data.sample((8, 1) if data.elementwise else 8, g)
    x = c * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)                # 8 noisy queries
    expected, se = monte_carlo_posterior_mean(data, x, c, sigma)
    got = data.denoise(x, c, sigma)
    assert ((got - expected).abs() <= 5 * se + 1e-4).all(), (got - expected, se)
    assert se.max() < 0.02                                                                       # the check has teeth
    # the denoiser of data moved by 0.1 is caught
    wrong = GaussianMixture(data.means + 0.1, data.stds if data.covs is None else None, data.weights, covs=data.covs)
    assert ((wrong.denoise(x, c, sigma) - expected).abs() > 5 * se + 1e-4).any()


@pytest.mark.parametrize("name", list(DATA))
def test_score_eps_and_denoiser_are_one_posterior(name):
    """Tweedie: score = (c E[x0|x] - x) / sigma^2 and E[z|x] = -sigma score; the score is grad log p."""
    data, (c, sigma) = DATA[name], NOISE[1]
    x = data.sample((6, 1) if data.elementwise else 6, torch.Generator().manual_seed(2)) * c + 0.3
    score = data.score(x, c, sigma)
    torch.testing.assert_close(score, (c * data.denoise(x, c, sigma) - x) / sigma**2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(data.eps(x, c, sigma), -sigma * score, rtol=1e-10, atol=1e-10)
    h = 1e-5
    for j in range(x.shape[-1]):                                           # central differences of log p
        step = torch.zeros_like(x)
        step[..., j] = h
        fd = (data.log_prob(x + step, c, sigma) - data.log_prob(x - step, c, sigma)) / (2 * h)
        fd = fd[..., j] if data.elementwise else fd                     # elementwise: log p per coordinate
        torch.testing.assert_close(fd, score[..., j], rtol=1e-6, atol=1e-6)
    # log p integrates to 1 (a 1-D or 2-D grid sum)
    if data.elementwise:
        grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)[:, None]
        assert torch.trapezoid(data.log_prob(grid, c, sigma).exp()[:, 0], grid[:, 0]).item() == pytest.approx(1, 1e-8)
    elif x.shape[-1] == 2:
        axis = torch.linspace(-7, 7, 701, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)             # [701, 701, 2]
        mass = data.log_prob(grid, c, sigma).exp().sum() * (axis[1] - axis[0]) ** 2
        assert mass.item() == pytest.approx(1, abs=1e-6)


def test_exact_eps_is_the_posterior_mean_of_the_noise():
    """Monte Carlo by binning: noisy samples binned by x_i; each bin's mean true eps is E[eps | x_i] at its centre."""
    schedule = md.NoiseSchedule.linear(T=1000)
    model = ExactModel(GaussianMixture([-1.0, 1.0], [0.3, 0.3], [0.3, 0.7]), schedule)
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


def test_gaussian_closed_form():
    """For N(m, s^2) data the eps-prediction is linear: sqrt(1 - a) (x - sqrt(a) m) / (a s^2 + 1 - a)."""
    schedule = md.NoiseSchedule.linear(T=1000)
    model = ExactModel(GaussianMixture([0.5], [0.3]), schedule)
    i = torch.tensor([0, 10, 250, 999])
    a = schedule.alphas_cumprod[i][:, None, None, None]
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (1 - a).sqrt() * (x - a.sqrt() * 0.5) / (a * 0.09 + 1 - a)
    torch.testing.assert_close(model(x, schedule.model_time(i)), expected, rtol=1e-12, atol=1e-12)
    assert model.nfe == 1


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_prediction_types_convert_to_the_same_eps(prediction_type):
    schedule = md.NoiseSchedule.cosine(T=100)
    data = DATA["1-D elementwise mixture"]
    t = schedule.model_time(torch.tensor([3, 40, 90]))
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = schedule.alpha_bar_at_time(t)[:, None, None, None]
    out = ExactModel(data, schedule, prediction_type)(x, t)
    _, eps = md.x0_eps_from_output(out, x, a, prediction_type)
    torch.testing.assert_close(eps, ExactModel(data, schedule)(x, t), rtol=1e-10, atol=1e-10)


def test_time_convention_below_the_first_step():
    """t = (i + 1) / T is step i; below it 1 - alpha_bar falls linearly to 0, so t = 0 is the clean data."""
    schedule = md.NoiseSchedule.linear(T=1000)
    i = torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(schedule.alpha_bar_at_time(schedule.model_time(i)), schedule.alphas_cumprod[i],
                               rtol=1e-12, atol=0)
    near = schedule.alpha_bar_at_time(torch.tensor([0.0, 5e-4, 1e-3 - 1e-12, 1e-3], dtype=torch.float64))
    first = 1 - schedule.alphas_cumprod[0].item()
    assert near[0] == 1.0 and near[1].item() == pytest.approx(1 - first / 2, abs=1e-15)
    assert near[2].item() == pytest.approx(near[3].item(), abs=1e-12)              # continuous at t = 1 / T
    model = ExactModel(GaussianMixture([0.5], [0.3]), schedule, "sample")
    x = torch.randn(5, 1, dtype=torch.float64)
    torch.testing.assert_close(model(x, torch.zeros(5, dtype=torch.float64)), x)   # clean: E[x0 | x] = x
    assert ExactModel(model.data, schedule)(x, torch.zeros(5)).abs().max() == 0    # and E[z | x] = 0


@pytest.mark.parametrize("sde", [md.VESDE(sigma=25.0), md.VPSDE(), md.SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_exact_score_uses_the_sde_kernel(sde):
    data = DATA["2-D isotropic mixture"]
    t = torch.tensor([1e-3, 0.3, 0.9], dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(3, dtype=torch.float64), t)
    score = ExactScore(data, sde)(x, t)
    for b in range(3):
        torch.testing.assert_close(score[b], data.score(x[b:b + 1], mean[b].item(), std[b].item())[0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixture([0.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.0, 1.0], [1.0, 1.0], [0.5, 0.6])
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([0.0, 1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture([[0.0, 1.0]], covs=torch.eye(3)[None])
    with pytest.raises(ValueError, match="prediction_type"):
        ExactModel(GaussianMixture([0.0], [1.0]), md.NoiseSchedule.linear(T=10), "score")
