"""Score SDEs, their samplers and the likelihood, checked against closed forms.

For Gaussian data N(mu, Sigma) every SDE here is linear, so p_t = N(m(t) mu, m(t)^2 Sigma + std(t)^2 I)
and its score are exact; for a Gaussian mixture each component moves the same way. Driving the
samplers with these exact scores isolates the samplers' own errors. Seeds are fixed, so every
check is deterministic; each tolerance is a few times the error observed (written beside it).
"""

import json
import math

import pytest
import torch

from minidiff.exact import ExactModel, ExactScore, GaussianMixture
from minidiff.likelihood import dequantize_8bit, log_likelihood
from minidiff.losses import dsm_loss
from minidiff.ode import dopri5_step, heun, rk45
from minidiff.schedule import NoiseSchedule
from minidiff.sde import VESDE, VPSDE, SubVPSDE, as_score_model, sde_from_config
from minidiff.sde_samplers import sde_sample

SDES = {
    "ve": lambda: VESDE(sigma=25.0),
    "ve_geometric": lambda: VESDE.geometric(sigma_min=0.01, sigma_max=50.0),
    "vp": lambda: VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: SubVPSDE(beta_min=0.1, beta_max=20.0),
}
METHODS = {  # method name -> the sde_sample options used in the distribution tests
    "em": dict(method="euler_maruyama", steps=500),
    "pc": dict(method="pc", steps=200, corrector_steps=1, snr=0.16),
    "ode_rk45": dict(method="ode", ode_solver="rk45"),
    "ode_heun": dict(method="ode", ode_solver="heun", steps=100),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kernel(sde, t):
    """(m(t), std(t)) as float64 [B, 1]: p_0t(x | x0) = N(m x0, std^2 I)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    mean, std = sde.marginal_prob(torch.ones(t.shape[0], 1, dtype=torch.float64), t)
    return mean, std


# -------------------------------------------------------------------- exact scores (minidiff.exact)
GAUSS = GaussianMixture.gaussian([0.5] * 4, 0.3**2 * torch.eye(4))      # N(0.5, 0.3^2) per dim, D = 4
MIXTURE = GaussianMixture([[1.2, 0.0], [-1.0, 1.5], [-1.5, -2.25]], [0.25] * 3, [0.5, 0.3, 0.2])   # mean 0


def log_p(data, sde, x, t):
    """log p_t(x) of the data at SDE time t (a number): [B, D] -> [B], float64."""
    m, std = kernel(sde, t)
    return data.log_prob(x.double(), m.item(), std.item())


def gaussian_flow(data, sde, x, t_from, t_to):
    """The exact probability-flow map of one Gaussian N(mu, U diag(lam) U^T) from t_from to t_to: affine,
    scaling each eigen-direction by sqrt(var_to / var_from), var = m^2 lam + std^2. Returns (x_to, ratio [1, D])."""
    mu, lam, U = data.means[0], data.lam[0], data.U[0]
    m0, s0 = kernel(sde, t_from)
    m1, s1 = kernel(sde, t_to)
    ratio = ((m1**2 * lam + s1**2) / (m0**2 * lam + s0**2)).sqrt()           # [1, D]
    return m1 * mu + ((x.double() - m0 * mu) @ U * ratio) @ U.T, ratio


def model_logp(data, sde, x, eps):
    """log-density at x of the model 'prior at t = 1 pushed through the exact flow to t = eps'."""
    z, ratio = gaussian_flow(data, sde, x, eps, 1.0)
    return sde.prior_logp(z) + torch.log(ratio).sum()


def nearest_component(data, x):
    return ((x[:, None, :] - data.means[None].to(x)) ** 2).sum(-1).argmin(1)


# -------------------------------------------------------------------- the SDEs themselves
def test_marginal_prob_matches_the_closed_forms():
    t = torch.tensor([0.0, 1e-3, 0.3, 0.7, 1.0], dtype=torch.float64)
    x0 = torch.full((5, 3), 2.0, dtype=torch.float64)
    mean, std = VESDE(sigma=25.0).marginal_prob(x0, t)
    assert torch.equal(mean, x0)
    torch.testing.assert_close(std.flatten(), torch.sqrt((25.0 ** (2 * t) - 1) / (2 * math.log(25.0))))
    mean, std = VESDE.geometric(0.01, 50.0).marginal_prob(x0, t)
    sigma_t = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(std.flatten(), torch.sqrt(sigma_t**2 - 0.01**2))
    integral_beta = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)                      # int_0^t beta(s) ds
    mean, std = VPSDE(0.1, 20.0).marginal_prob(x0, t)
    torch.testing.assert_close(mean, x0 * torch.exp(-0.5 * integral_beta)[:, None])
    torch.testing.assert_close(std.flatten(), torch.sqrt(1 - torch.exp(-integral_beta)))
    mean, std = SubVPSDE(0.1, 20.0).marginal_prob(x0, t)
    torch.testing.assert_close(mean, x0 * torch.exp(-0.5 * integral_beta)[:, None])
    torch.testing.assert_close(std.flatten(), 1 - torch.exp(-integral_beta))
    # the seed tutorial's numbers: std(1) for sigma = 25
    assert VESDE(25.0).prior_std == pytest.approx(math.sqrt(624 / (2 * math.log(25))), rel=1e-9)


@pytest.mark.parametrize("name", SDES)
def test_marginal_variance_is_the_integral_of_the_sde(name):
    """For dx = a(t) x dt + g(t) dw: m(t) = exp(int_0^t a), std(t)^2 = int_0^t g(s)^2 (m(t)/m(s))^2 ds (quadrature)."""
    sde = SDES[name]()
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)
    ones = torch.ones(s.shape[0], 1, dtype=torch.float64)
    drift, g = sde.sde(ones, s)
    a, g2 = drift.flatten(), g.flatten() ** 2                  # f(x, t) = a(t) x for all three SDEs
    log_m = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(a, s)])
    for t_index in (2000, 10000, 20000):                       # t = 0.1, 0.5, 1
        t = s[t_index]
        m, std = kernel(sde, t)
        var = torch.trapezoid(g2[: t_index + 1] * torch.exp(2 * (log_m[t_index] - log_m[: t_index + 1])),
                              s[: t_index + 1])
        assert m.item() == pytest.approx(math.exp(log_m[t_index]), rel=1e-6)
        assert std.item() ** 2 == pytest.approx(var.item(), rel=1e-4)


@pytest.mark.parametrize("name", SDES)
def test_marginal_prob_matches_monte_carlo_of_the_forward_sde(name):
    """Simulate dx = f dt + g dw by Euler–Maruyama (1000 steps, 20000 paths) from data N(0.5, 0.3^2)."""
    sde = SDES[name]()
    gen = torch.Generator().manual_seed(0)
    n, steps = 20000, 1000
    x = 0.5 + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    for k in range(steps):
        t = torch.full((n,), k / steps, dtype=torch.float64)
        f, g = sde.sde(x, t)
        x = x + f / steps + g * math.sqrt(1 / steps) * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        if k + 1 in (100, 500, 1000):
            m, std = kernel(sde, (k + 1) / steps)
            expected_std = torch.sqrt(m**2 * 0.3**2 + std**2).item()
            # standard errors: mean std/141, std std/200; tolerances 4 s.e. plus 1% for the time step
            assert x.mean().item() == pytest.approx(0.5 * m.item(), abs=4 * expected_std / 141)
            assert x.std().item() == pytest.approx(expected_std, rel=4 / 200 + 0.01)


def test_discretisations_are_the_markov_chains_of_the_sdes():
    """VE: the SMLD increments telescope to std(1)^2 exactly; VP: the DDPM chain's mean factor -> m(1)."""
    for sde in (VESDE(25.0), VESDE.geometric()):
        x = torch.ones(1, 1, dtype=torch.float64)
        total = sum(sde.discretize(x, torch.tensor([(k + 1) / 100], dtype=torch.float64), 0.01)[1].item() ** 2
                    for k in range(100))
        assert total == pytest.approx(sde.prior_std**2, rel=1e-9)
    # VP: the chain's mean factor prod_k sqrt(1 - beta(t_k) dt) -> m(1) = exp(-1/2 int beta), with a
    # first-order error sum beta_k^2 / 4 (observed 3.3% at N = 1000, 0.33% at N = 10000)
    vp, m_1 = VPSDE(), kernel(VPSDE(), 1.0)[0].item()
    errors = []
    for steps in (1000, 10000):
        t = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps          # one chain step per batch entry
        f, _ = vp.discretize(torch.ones(steps, 1, dtype=torch.float64), t, 1 / steps)
        errors.append(abs(torch.prod(1 + f).item() / m_1 - 1))
    assert errors[1] < 5e-3 and errors[0] / errors[1] == pytest.approx(10, rel=0.05)


def test_vp_sde_matches_the_linear_schedule_in_the_many_steps_limit():
    T = 1000
    schedule = NoiseSchedule.linear(T=T, beta_start=0.1 / T, beta_end=20.0 / T)
    vp = VPSDE.from_schedule(schedule)
    assert (vp.beta_min, vp.beta_max) == pytest.approx((0.1, 20.0))
    i = torch.arange(T)
    m, std = kernel(vp, (i + 1).double() / T)
    # alpha_bar_i vs m(t)^2 at t = (i + 1) / T: observed max difference 8.1e-4
    assert (m.flatten() ** 2 - schedule.alphas_cumprod).abs().max() < 1e-3
    assert (std.flatten() ** 2 - (1 - schedule.alphas_cumprod)).abs().max() < 1e-3


def test_prior_sample_and_prior_logp():
    for name, make in SDES.items():
        sde = make()
        z = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0))
        assert z.shape == (20000, 2) and z.dtype == torch.float32
        assert z.std().item() == pytest.approx(sde.prior_std, rel=0.02), name
        again = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0))
        assert torch.equal(z, again)
        z = z[:5].double()
        expected = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum(1)
        torch.testing.assert_close(sde.prior_logp(z), expected)


def test_shapes_of_per_sample_scalars():
    x = torch.randn(3, 2, 4, 4)
    t = torch.rand(3)
    for sde in (make() for make in SDES.values()):
        drift, g = sde.sde(x, t)
        mean, std = sde.marginal_prob(x, t)
        assert drift.shape == mean.shape == x.shape
        assert g.shape == std.shape == (3, 1, 1, 1)
        assert sde.marginal_std(t).shape == (3,)
        torch.testing.assert_close(sde.marginal_std(t), std.flatten())
        assert sde.sde(x, 0.5)[1].shape == (3, 1, 1, 1)          # a float t is broadcast to the batch


@pytest.mark.parametrize("name", SDES)
def test_config_round_trip(name):
    sde = SDES[name]()
    config = json.loads(json.dumps(sde.to_config()))
    rebuilt = sde_from_config(config)
    assert type(rebuilt) is type(sde) and rebuilt.to_config() == sde.to_config()
    t = torch.linspace(0, 1, 7)
    torch.testing.assert_close(rebuilt.marginal_std(t), sde.marginal_std(t))


# -------------------------------------------------------------------- the ODE solvers
def test_ode_solvers_have_their_orders():
    """On dy/dt = -2 t y (y = exp(-t^2)): a Dormand–Prince step has local error O(h^6) and error estimate
    O(h^5) (halving h divides them by ~64 and ~32: observed 90 and 35); Heun's global error is O(h^2)
    (observed ratio 4.2); adaptive RK45 reaches 1e-7 forwards and backwards in time."""
    f = lambda t, y: -2 * t * y
    exact = lambda t: math.exp(-t**2)
    errors, estimates = [], []
    for h in (0.05, 0.025):
        y = torch.full((1, 1), exact(0.3), dtype=torch.float64)
        y_new, error, k7 = dopri5_step(f, 0.3, y, f(0.3, y), h)
        errors.append(abs(y_new.item() - exact(0.3 + h)))
        estimates.append(abs(error.item()))
        torch.testing.assert_close(k7, f(0.3 + h, y_new))                  # first-same-as-last
    assert errors[0] / errors[1] > 40 and 20 < estimates[0] / estimates[1] < 50
    heun_errors = [abs(heun(f, torch.ones(1, 1, dtype=torch.float64), torch.linspace(0, 2, n + 1).tolist())[0].item()
                       - exact(2.0)) for n in (50, 100)]
    assert 3.5 < heun_errors[0] / heun_errors[1] < 4.5
    y, nfe = rk45(f, torch.ones(3, 1, dtype=torch.float64), 0.0, 2.0, rtol=1e-9, atol=1e-9)
    assert (y - exact(2.0)).abs().max() < 1e-7 and nfe < 1000                # observed 2.6e-10, 314
    y, _ = rk45(f, torch.full((3, 1), exact(2.0), dtype=torch.float64), 2.0, 0.0, rtol=1e-9, atol=1e-9)
    assert (y - 1.0).abs().max() < 1e-7                                      # observed 1.1e-8


# -------------------------------------------------------------------- samplers on exact scores
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SDES)
def test_samplers_recover_gaussian_data(name, method):
    """4000 samples of N(0.5, 0.3^2) in D = 4 from the exact score; mean and std per dimension within 0.02.

    The target is p_eps. The ODE is deterministic, so it maps the prior N(0, prior_std^2) to
    N(m_eps mu - ratio m_1 mu, (ratio prior_std)^2), ratio = std_eps / std_1 of p_t: for the tutorial VE
    (sigma = 25) the prior lacks the data mean 0.5 and the ODE samples' mean is 0.015 low. The SDE
    samplers forget the prior much faster (factor ratio^2), so their target is p_eps itself.
    Observed errors over the 16 cases: at most 0.0096 (mean) and 0.0087 (std).
    """
    sde, eps = SDES[name](), 1e-3
    x = sde_sample(ExactScore(GAUSS, sde), sde, (4000, 4), t_min=eps, generator=torch.Generator().manual_seed(1),
                   progress=False, **METHODS[method])
    m_eps, s_eps = kernel(sde, eps)
    m_1, s_1 = kernel(sde, 1.0)
    var_eps, var_1 = m_eps**2 * 0.09 + s_eps**2, m_1**2 * 0.09 + s_1**2
    target_mean, target_std = (m_eps * 0.5).item(), var_eps.sqrt().item()
    if METHODS[method]["method"] == "ode":
        ratio = (var_eps / var_1).sqrt().item()
        target_mean, target_std = target_mean - ratio * m_1.item() * 0.5, ratio * sde.prior_std
    assert (x.mean(0) - target_mean).abs().max() < 0.02
    assert (x.std(0) - target_std).abs().max() < 0.02


def test_a_wrong_score_fails_the_gaussian_check():
    """The check above has power: the score of N(0.5, 0.33^2) (10% too wide) gives a std error > 0.02 (0.033)."""
    sde = VPSDE()
    wrong = GaussianMixture([[0.5] * 4], [0.33])
    x = sde_sample(ExactScore(wrong, sde), sde, (4000, 4), steps=500, generator=torch.Generator().manual_seed(1),
                   progress=False)
    assert (x.std(0) - 0.3).abs().max() > 0.02


@pytest.mark.parametrize("name", SDES)
def test_ode_solvers_follow_the_exact_flow(name):
    """From the same x_T, RK45 and Heun land where the exact (affine) probability flow does."""
    sde, eps = SDES[name](), 1e-3
    x_T = sde.prior_sample((256, 4), generator=torch.Generator().manual_seed(0))
    exact, _ = gaussian_flow(GAUSS, sde, x_T, 1.0, eps)
    score = ExactScore(GAUSS, sde)
    x, info = sde_sample(score, sde, x_T.shape, method="ode", t_min=eps, x_T=x_T, progress=False, return_info=True)
    assert (x.double() - exact).abs().max() < 5e-4           # observed <= 7.4e-5
    assert info["nfe"] < 200                        # observed 62 (VE), 80 (VP), 74 (sub-VP), 116 (geometric VE)
    loose, _ = sde_sample(score, sde, x_T.shape, method="ode", t_min=eps, x_T=x_T, progress=False, rtol=1e-2,
                          atol=1e-2, return_info=True)
    assert (loose.double() - exact).abs().max() > (x.double() - exact).abs().max()
    x = sde_sample(score, sde, x_T.shape, method="ode", ode_solver="heun", steps=100, t_min=eps, x_T=x_T,
                   progress=False)
    assert (x.double() - exact).abs().max() < 2e-2           # observed <= 6.9e-3 (geometric VE)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SDES)
def test_samplers_recover_mixture_weights(name, method):
    """2-D three-component mixture, 4000 samples: weights within 0.03 (observed <= 0.011), component
    stds within 0.035 (observed <= 0.016)."""
    sde, mixture = SDES[name](), MIXTURE
    x = sde_sample(ExactScore(mixture, sde), sde, (4000, 2), generator=torch.Generator().manual_seed(1),
                   progress=False, **METHODS[method])
    k = nearest_component(mixture, x)
    fractions = torch.bincount(k, minlength=3).float() / x.shape[0]
    assert (fractions - mixture.weights).abs().max() < 0.03
    for j in range(3):
        assert ((x[k == j] - mixture.means[j].float()).std(0) - mixture.stds[j]).abs().max() < 0.035


# -------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("name", SDES)
def test_log_likelihood_exact_trace_matches_the_closed_form(name):
    """Per sample within 2e-3 bits/dim (observed <= 3e-5) of the model's exact density: the prior pushed
    through the exact flow. Where the prior matches p_1 (VP, sub-VP) that is the data density within 0.02."""
    sde, eps = SDES[name](), 1e-5
    x = GAUSS.sample(256, torch.Generator().manual_seed(2)).float()
    bpd, info = log_likelihood(ExactScore(GAUSS, sde), sde, x, trace="exact", t_min=eps, return_info=True)
    D = x.shape[1]
    model_bpd = -model_logp(GAUSS, sde, x, eps) / (D * math.log(2))
    assert bpd.shape == (256,) and info["nfe"] > 0
    assert (bpd - model_bpd).abs().max() < 2e-3
    if name in ("vp", "subvp"):
        data_bpd = -log_p(GAUSS, sde, x, eps) / (D * math.log(2))
        assert (bpd - data_bpd).abs().max() < 0.02            # observed 7.9e-3
    # Rademacher probes are exact when the Jacobian is diagonal (isotropic data)
    rademacher = log_likelihood(ExactScore(GAUSS, sde), sde, x, trace="rademacher", t_min=eps,
                                generator=torch.Generator().manual_seed(3))
    assert (rademacher - model_bpd).abs().max() < 2e-3


@pytest.mark.parametrize("trace", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(trace):
    """Correlated Gaussian (D = 4), 8 points x 1024 probes under the VP SDE: the average error is within
    0.05 bits/dim (standard error ~0.009; observed -0.019 / -0.016) while single estimates scatter by ~0.75."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    data = GaussianMixture.gaussian([0.5, -0.3, 0.2, 0.0], A @ A.T / 4 + 0.05 * torch.eye(4, dtype=torch.float64))
    sde = VPSDE()
    x = data.sample(8, gen).float().repeat_interleave(1024, dim=0)
    exact = -model_logp(data, sde, x, 1e-5) / (4 * math.log(2))
    bpd = log_likelihood(ExactScore(data, sde), sde, x, trace=trace, generator=torch.Generator().manual_seed(1))
    error = bpd.double() - exact
    assert abs(error.mean().item()) < 0.05
    assert error.std().item() > 0.3
    assert (log_likelihood(ExactScore(data, sde), sde, x[::1024], trace="exact") - exact[::1024]).abs().max() < 2e-3


@pytest.mark.parametrize("name", SDES)
def test_log_likelihood_of_a_mixture(name):
    """Exact trace vs the mixture's own log-density at t = eps: per sample within 0.02 bits/dim (observed
    <= 2e-3). The tutorial VE's prior N(0, 96.9) ignores the mixture's variance (~1.5), which moves
    single samples by up to 0.05-0.1 bits/dim; for it only the mean over samples is held to 0.02 (observed 2e-4)."""
    sde, mixture = SDES[name](), MIXTURE
    x = mixture.sample(300, torch.Generator().manual_seed(4)).float()
    bpd = log_likelihood(ExactScore(mixture, sde), sde, x, trace="exact")
    error = bpd.double() + log_p(mixture, sde, x, 1e-5) / (2 * math.log(2))
    assert (error.mean().abs() if name == "ve" else error.abs().max()) < 0.02


def test_dequantisation():
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (6, 1, 2, 2), generator=gen, dtype=torch.uint8)
    x = k.float() / 127.5 - 1
    u = dequantize_8bit(x, torch.Generator().manual_seed(1))
    assert torch.equal(u, dequantize_8bit(k, torch.Generator().manual_seed(1)))
    lower = 2 * k.float() / 256 - 1
    assert ((u >= lower) & (u <= lower + 2 / 256)).all()
    k_many = torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8)
    offsets = (dequantize_8bit(k_many, gen) + 1) * 128 - k_many.float()         # U(0, 1) within each bin
    assert abs(offsets.mean().item() - 0.5) < 0.02 and abs(offsets.var().item() - 1 / 12) < 0.01
    sde = VPSDE()
    score = ExactScore(GaussianMixture([[0.0] * 4], [0.5]), sde)

    def flat_score(x, t, context=None):                       # the Gaussian's score, for [B, 1, 2, 2] images
        return score(x.flatten(1), t).reshape(x.shape)

    bpd = log_likelihood(flat_score, sde, x, trace="exact", dequantize=True, generator=torch.Generator().manual_seed(1))
    continuous = log_likelihood(flat_score, sde, u, trace="exact")
    torch.testing.assert_close(bpd, continuous + 7.0)


# -------------------------------------------------------------------- DDPM network -> score model
def test_as_score_model_on_an_exact_eps_model_gives_the_exact_score():
    schedule = NoiseSchedule.linear(T=1000)
    i = torch.tensor([0, 1, 10, 250, 500, 998, 999])
    t = (i + 1).double() / schedule.T
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = GaussianMixture([0.5], [0.3])
    score = as_score_model(ExactModel(data, schedule), schedule)(x, t)
    ab = schedule.alphas_cumprod[i][:, None]
    torch.testing.assert_close(score, -(x - ab.sqrt() * 0.5) / (ab * 0.09 + 1 - ab), rtol=1e-10, atol=1e-10)
    x0_model = ExactModel(data, schedule, prediction_type="sample")           # the same model, predicting x0
    torch.testing.assert_close(as_score_model(x0_model, schedule, prediction_type="sample")(x, t), score)
    # below the first step, 1 - alpha_bar falls linearly to 0: finite, and continuous at t = 1/T
    bridge = as_score_model(lambda x, t, c=None: torch.ones_like(x), schedule)
    near = bridge.alpha_bar(torch.tensor([1e-5, 1e-3 - 1e-12, 1e-3], dtype=torch.float64))
    assert near[0] == pytest.approx(1 - 1e-2 * 1e-4) and near[1] == pytest.approx(near[2].item(), abs=1e-12)


def test_a_ddpm_eps_model_sampled_by_the_vp_samplers():
    """An exact DDPM eps model (linear schedule, T = 1000), bridged, sampled by EM and the ODE: N(0.5, 0.3^2)
    within 0.03 (observed mean/std errors <= 0.01)."""
    schedule = NoiseSchedule.linear(T=1000)
    score = as_score_model(ExactModel(GaussianMixture([0.5], [0.3]), schedule), schedule)
    sde = VPSDE.from_schedule(schedule)
    for method in ("euler_maruyama", "ode"):
        x = sde_sample(score, sde, (4000, 4), method=method, steps=500, generator=torch.Generator().manual_seed(1),
                       progress=False)
        assert (x.mean(0) - 0.5).abs().max() < 0.03 and (x.std(0) - 0.3).abs().max() < 0.03, method


# -------------------------------------------------------------------- the loss
def test_dsm_loss_closed_forms():
    sde, gen, D = VPSDE(), torch.Generator().manual_seed(0), 4
    # point-mass data x0 = c: the model that returns the kernel's own score has loss exactly 0
    c = torch.full((512, D), 0.7)

    def kernel_score(x, t, context=None):
        m, std = sde.marginal_prob(c, t)
        return -(x - m) / std**2

    assert dsm_loss(kernel_score, c, sde, generator=gen).item() == pytest.approx(0.0, abs=1e-6)
    weighted = dsm_loss(kernel_score, c, sde, likelihood_weighting=True, generator=gen).item()
    assert weighted == pytest.approx(0.0, abs=1e-4)
    # a zero score: E sum z^2 = D (standard error 0.02)
    zero = lambda x, t, context=None: torch.zeros_like(x)
    assert dsm_loss(zero, torch.zeros(20000, D), sde, generator=gen).item() == pytest.approx(D, abs=0.1)
    # with likelihood weighting: E_t[g^2 / std^2] D by quadrature; t ~ U(0.01, 1) keeps the 1/t tail of
    # g^2 / std^2 tame (standard error 0.7%)
    t = torch.linspace(1e-2, 1, 200001, dtype=torch.float64)
    weight = (sde.sde(torch.ones(t.shape[0], 1, dtype=torch.float64), t)[1].flatten() / sde.marginal_std(t)) ** 2
    expected = D * torch.trapezoid(weight, t).item() / (1 - 1e-2)
    loss = dsm_loss(zero, torch.zeros(20000, D), sde, t_min=1e-2, likelihood_weighting=True, generator=gen).item()
    assert loss == pytest.approx(expected, rel=0.03)
    # Gaussian data with the exact score: the irreducible loss D E_t[m^2 s^2 / (m^2 s^2 + std^2)]
    # (standard error 1.2% with 40000 samples)
    t = torch.linspace(1e-5, 1, 200001, dtype=torch.float64)
    m, std = kernel(sde, t)
    expected = D * torch.trapezoid((m**2 * 0.09 / (m**2 * 0.09 + std**2)).flatten(), t).item() / (1 - 1e-5)
    loss = dsm_loss(ExactScore(GAUSS, sde), GAUSS.sample(40000, gen).float(), sde, generator=gen).item()
    assert loss == pytest.approx(expected, rel=0.05)


def test_dsm_loss_trains_a_score():
    """A linear score model -a(t) (x - b(t)) fitted by the loss moves towards the exact score's slope."""
    sde, gen = VESDE(25.0), torch.Generator().manual_seed(0)
    log_scale = torch.zeros(1, requires_grad=True)

    def model(x, t, context=None):                                  # score = -exp(log_scale) x / std^2
        return -torch.exp(log_scale) * x / sde.marginal_std(t)[:, None] ** 2

    opt = torch.optim.Adam([log_scale], lr=0.05)
    x0 = torch.zeros(256, 2)                                        # point mass at 0: the exact scale is 1
    log_scale.data.fill_(1.0)
    for _ in range(100):
        loss = dsm_loss(model, x0, sde, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(log_scale.item()) < 0.1


# -------------------------------------------------------------------- guidance, trajectories, bookkeeping
class _ConditionalScore(torch.nn.Module):
    """Class c has data N(mu_c, 0.3^2); the null class (id num_classes) the 50/50 mixture's Gaussian fit."""

    num_classes = 2

    def __init__(self, sde):
        super().__init__()
        self.calls = []
        self.scores = [ExactScore(GaussianMixture([mu], [std]), sde) for mu, std in ((-1.0, 0.3), (1.0, 0.3),
                                                                                      (0.0, 1.09**0.5))]
        self.linear = torch.nn.Linear(1, 1)                          # gives the module a parameter and a device

    def forward(self, x, t, context):
        self.calls.append((x.shape[0], context.clone(), self.training))
        scores = torch.stack([score(x, t) for score in self.scores])             # [3, B, D]: every class's
        return scores[context, torch.arange(x.shape[0])]                          # [B, D]: each sample's own


def test_classifier_free_guidance():
    sde = VPSDE()
    model = _ConditionalScore(sde)
    labels = torch.tensor([0, 1] * 1000)
    x, info = sde_sample(model, sde, (2000, 2), method="ode", context=labels, guidance_scale=1.0,
                         generator=torch.Generator().manual_seed(0), progress=False, return_info=True)
    batch, context, training = model.calls[0]
    assert batch == 4000 and torch.equal(context[2000:], torch.full((2000,), 2))   # one batch: cond + null
    assert len(model.calls) == info["nfe"]
    # w = 1 is the conditional model: each class recovers its own mean
    assert (x[labels == 0].mean() + 1).abs() < 0.03 and (x[labels == 1].mean() - 1).abs() < 0.03
    # w = 3 pushes past it: guided score = s_u + 3 (s_c - s_u), checked at one point
    from minidiff.sde_samplers import GuidedScore
    guided = GuidedScore(model, labels[:4], guidance_scale=3.0)
    xs, ts = torch.randn(4, 2), torch.full((4,), 0.5)
    s_c, s_u = model(xs, ts, labels[:4]), model(xs, ts, torch.full((4,), 2))
    torch.testing.assert_close(guided(xs, ts), s_u + 3.0 * (s_c - s_u))
    # float contexts use zeros as the null context, or an explicit uncond_context
    seen = []
    float_model = lambda x, t, c: seen.append(c) or torch.zeros_like(x)
    sde_sample(float_model, sde, (3, 2), steps=2, context=torch.ones(3, 5), guidance_scale=2.0, progress=False)
    assert torch.equal(seen[0][3:], torch.zeros(3, 5))
    seen.clear()
    sde_sample(float_model, sde, (3, 2), steps=2, context=torch.ones(3, 5), guidance_scale=2.0,
               uncond_context=torch.full((3, 5), -1.0), progress=False)
    assert torch.equal(seen[0][3:], torch.full((3, 5), -1.0))


def test_trajectories_nfe_generators_and_eval_mode():
    sde = VESDE(25.0)
    model = _ConditionalScore(sde)
    model.train()
    labels = torch.tensor([0, 1, 0])
    for method, options, nfe in [("euler_maruyama", {}, 20), ("pc", {"corrector_steps": 2}, 60),
                                 ("ode", {"ode_solver": "heun"}, 40)]:
        x, info = sde_sample(model, sde, (3, 2), method=method, steps=20, t_min=1e-3, context=labels,
                             generator=torch.Generator().manual_seed(0), progress=False, return_trajectory=True,
                             **options)
        assert info["nfe"] == nfe and len(info["x"]) == len(info["t"]) == 21
        assert info["t"][0] == 1.0 and info["t"][-1] == pytest.approx(1e-3)
        assert info["x"][-1].device.type == "cpu" and torch.equal(info["x"][-1], x)
        again = sde_sample(model, sde, (3, 2), method=method, steps=20, context=labels,
                           generator=torch.Generator().manual_seed(0), progress=False, **options)
        assert torch.equal(again, x)
    other = sde_sample(model, sde, (3, 2), steps=20, context=labels, generator=torch.Generator().manual_seed(1),
                       progress=False)
    assert not torch.equal(other, x)
    assert model.training and not any(training for _, _, training in model.calls)   # eval while sampling
    x, info = sde_sample(model, sde, (3, 2), method="ode", context=labels, progress=False, return_info=True)
    assert "x" not in info and info["nfe"] > 0
    x = sde_sample(model, sde, (3, 2), steps=5, context=labels, x_T=torch.zeros(3, 2, dtype=torch.float64),
                   progress=False)
    assert x.dtype == torch.float64


def test_last_step_adds_no_noise():
    """With a zero score the VE reverse SDE is pure noise, so a noiseless last step leaves x unchanged."""
    ve, zero = VESDE(25.0), lambda x, t, c=None: torch.zeros_like(x)
    for method in ("euler_maruyama", "pc"):
        x, info = sde_sample(zero, ve, (4, 3), method=method, steps=10, corrector_steps=0, progress=False,
                             generator=torch.Generator().manual_seed(0), return_trajectory=True)
        assert torch.equal(x, info["x"][-2]) and not torch.equal(info["x"][-2], info["x"][-3])


def test_old_eps_keyword_still_works_with_a_deprecation_warning():
    """`eps=` was the minimum SDE time's old name: for one release it still works, and warns."""
    from minidiff.train_config import TrainConfig

    ve, zero = VESDE(25.0), lambda x, t, c=None: torch.zeros_like(x)
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    new = sde_sample(zero, ve, (2, 4), "ode", 4, t_min=0.1, x_T=x_T, progress=False, ode_solver="heun")
    with pytest.warns(DeprecationWarning, match=r"sde_sample\(eps=...\) is deprecated.*t_min"):
        old = sde_sample(zero, ve, (2, 4), "ode", 4, eps=0.1, x_T=x_T, progress=False, ode_solver="heun")
    assert torch.equal(old, new)
    with pytest.warns(DeprecationWarning, match=r"log_likelihood\(eps=...\)"):
        old = log_likelihood(ExactScore(GAUSS, ve), ve, x_T, trace="exact", eps=0.1)
    torch.testing.assert_close(old, log_likelihood(ExactScore(GAUSS, ve), ve, x_T, trace="exact", t_min=0.1))
    with pytest.warns(DeprecationWarning, match=r"dsm_loss\(eps=...\)"):
        old = dsm_loss(zero, x_T, ve, eps=0.5, generator=torch.Generator().manual_seed(0))
    assert old.item() == dsm_loss(zero, x_T, ve, t_min=0.5, generator=torch.Generator().manual_seed(0)).item()
    with pytest.warns(DeprecationWarning, match="dsm_eps is now dsm_t_min"):
        assert TrainConfig.from_dict({"dsm_eps": 0.01}).dsm_t_min == 0.01
    with pytest.raises(ValueError, match=r"t_min must lie in the open interval"), pytest.warns(DeprecationWarning):
        sde_sample(zero, ve, (2, 4), eps=0.0, progress=False)


@pytest.mark.parametrize("method, options, calls_per_step", [("euler_maruyama", {}, 1), ("pc", {}, 2),
                                                             ("ode", {"ode_solver": "heun"}, 3)])
def test_sde_sample_callback_gets_each_step_like_sample(method, options, calls_per_step):
    """callback(info) after every step: step numbers in order, times from 1 down to t_min, x the running
    sample, x0_pred Tweedie's E[x(0) | x(t)] from the score at t (for the exact score: the exact posterior mean)."""
    ve = VESDE(25.0)
    exact, steps, seen = ExactScore(GAUSS, ve), 6, []
    x, info = sde_sample(exact, ve, (5, 4), method=method, steps=steps, generator=torch.Generator().manual_seed(0),
                         progress=False, callback=seen.append, return_trajectory=True, **options)
    assert [d["step"] for d in seen] == list(range(steps))
    assert set(seen[0]) == {"step", "t", "t_next", "x", "x0_pred"}
    assert seen[0]["t"] == 1.0 and seen[-1]["t_next"] == pytest.approx(1e-3)
    assert all(a["t_next"] == b["t"] for a, b in zip(seen, seen[1:]))
    assert torch.equal(seen[-1]["x"], x) and all(torch.equal(d["x"], t) for d, t in zip(seen, info["x"][1:]))
    assert len(info["x"]) == steps + 1 and info["nfe"] == calls_per_step * steps
    if method == "pc":
        return                                                             # x0_pred is at x after the corrector
    before = info["x"][2]                                                  # x at t = seen[2]["t"]
    t = torch.full((5,), seen[2]["t"], dtype=torch.float64)
    c, std = ve.marginal_prob(torch.ones(5, dtype=torch.float64), t)
    torch.testing.assert_close(seen[2]["x0_pred"].double(), GAUSS.denoise(before.double(), c, std.flatten()),
                               rtol=1e-4, atol=1e-4)                        # float32 sampling, float64 oracle
