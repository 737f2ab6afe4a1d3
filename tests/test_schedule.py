"""NoiseSchedule against formulas written out independently here."""

import math

import pytest
import torch

import minidiff as md


def test_linear_matches_formula():
    s = md.NoiseSchedule.linear(T=1000, beta_start=1e-4, beta_end=0.02)
    betas = [1e-4 + (0.02 - 1e-4) * k / 999 for k in range(1000)]
    torch.testing.assert_close(s.betas, torch.tensor(betas, dtype=torch.float64), rtol=0, atol=1e-15)
    ab, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        ab.append(prod)
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor(ab, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s.T == 1000 and s.betas.dtype == torch.float64 and s.alphas_cumprod.dtype == torch.float64


def test_scaled_linear_matches_formula():
    s = md.NoiseSchedule.scaled_linear(T=100, beta_start=0.00085, beta_end=0.012)
    expected = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * k / 99) ** 2 for k in range(100)]
    torch.testing.assert_close(s.betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_cosine_matches_formula_and_clips():
    T, s_ = 1000, 0.008
    s = md.NoiseSchedule.cosine(T=T, s=s_, max_beta=0.999)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    expected = [min(1 - f(k + 1) / f(k), 0.999) for k in range(T)]
    torch.testing.assert_close(s.betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert s.betas.max().item() == pytest.approx(0.999, abs=0)      # the last beta is clipped
    assert (s.betas[:-10] < 0.999).all()
    # alpha_bar follows f(t)/f(0) before clipping kicks in
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)


@pytest.mark.parametrize("make", [md.NoiseSchedule.linear, md.NoiseSchedule.scaled_linear, md.NoiseSchedule.cosine])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(make):
    ab = make(T=1000).alphas_cumprod
    assert (ab[1:] < ab[:-1]).all()
    assert (ab > 0).all() and (ab <= 1).all()


def test_from_betas_roundtrip_and_config():
    s = md.NoiseSchedule.linear(T=50)
    s2 = md.NoiseSchedule.from_betas(s.betas.tolist())
    torch.testing.assert_close(s2.alphas_cumprod, s.alphas_cumprod, rtol=0, atol=0)
    s3 = md.NoiseSchedule.from_config(md.NoiseSchedule.linear(T=50, zero_terminal_snr=True).to_config())
    assert s3.alphas_cumprod[-1].item() == 0.0


def test_zero_terminal_snr():
    base = md.NoiseSchedule.linear(T=1000)
    z = md.NoiseSchedule.linear(T=1000, zero_terminal_snr=True)
    assert z.alphas_cumprod[-1].item() == 0.0 and z.betas[-1].item() == 1.0
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert (z.betas[:-1] > 0).all() and (z.betas[:-1] < 1).all()


def test_add_noise_matches_iterating_single_steps():
    """q(x_i|x_0) in closed form == applying q(x_j|x_{j-1}) i+1 times (empirical mean and variance)."""
    s = md.NoiseSchedule.linear(T=200, beta_start=1e-3, beta_end=0.05)
    g = torch.Generator().manual_seed(0)
    n, i, x0 = 200_000, 120, 0.8
    x = torch.full((n,), x0, dtype=torch.float64)
    for j in range(i + 1):
        x = math.sqrt(1 - s.betas[j].item()) * x + math.sqrt(s.betas[j].item()) * torch.randn(n, generator=g,
                                                                                               dtype=torch.float64)
    closed = s.add_noise(torch.full((n, 1), x0, dtype=torch.float64),
                         torch.randn(n, 1, generator=g, dtype=torch.float64), torch.full((n,), i))
    ab = s.alphas_cumprod[i].item()
    for samples in (x, closed):
        assert samples.mean().item() == pytest.approx(math.sqrt(ab) * x0, abs=0.006)
        assert samples.var().item() == pytest.approx(1 - ab, abs=0.008)


def test_add_noise_per_sample_steps_and_dtype():
    s = md.NoiseSchedule.linear(T=10)
    x0, noise = torch.ones(3, 2, 4, 4), torch.zeros(3, 2, 4, 4)
    out = s.add_noise(x0, noise, torch.tensor([0, 5, 9]))
    assert out.dtype == torch.float32 and out.shape == x0.shape
    torch.testing.assert_close(out[:, 0, 0, 0], s.sqrt_alphas_cumprod[[0, 5, 9]].float())


def test_posterior_matches_gaussian_conjugacy():
    """q(x_{i-1}|x_i,x_0) from Bayes' rule on q(x_{i-1}|x_0) and q(x_i|x_{i-1}), computed independently."""
    s = md.NoiseSchedule.cosine(T=100)
    x0 = torch.tensor([[0.3], [-0.7], [0.9]], dtype=torch.float64)
    x_i = torch.tensor([[0.1], [1.2], [-0.4]], dtype=torch.float64)
    i = torch.tensor([1, 40, 99])
    mean, var = s.q_posterior(x0, x_i, i)
    for k, step in enumerate(i.tolist()):
        ab_prev, a, b = s.alphas_cumprod[step - 1].item(), s.alphas[step].item(), s.betas[step].item()
        precision = 1 / (1 - ab_prev) + a / b
        m = (math.sqrt(ab_prev) * x0[k, 0].item() / (1 - ab_prev) + math.sqrt(a) * x_i[k, 0].item() / b) / precision
        assert var[k, 0].item() == pytest.approx(1 / precision, rel=1e-9)
        assert mean[k, 0].item() == pytest.approx(m, rel=1e-9)
    # at i = 0 the posterior is a point mass on x0
    mean0, var0 = s.q_posterior(x0, x_i, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    torch.testing.assert_close(var0, torch.zeros_like(var0))


def test_parameterisation_round_trips():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    alpha_bar = torch.tensor([0.99, 0.5, 0.1, 1e-3], dtype=torch.float64)[:, None]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    torch.testing.assert_close(md.x0_from_eps(x_t, eps, alpha_bar), x0)
    torch.testing.assert_close(md.eps_from_x0(x_t, x0, alpha_bar), eps)
    v = md.v_from_x0_eps(x0, eps, alpha_bar)
    x0_v, eps_v = md.x0_eps_from_v(x_t, v, alpha_bar)
    torch.testing.assert_close(x0_v, x0)
    torch.testing.assert_close(eps_v, eps)
    for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        a, b = md.x0_eps_from_output(out, x_t, alpha_bar, kind)
        torch.testing.assert_close(a, x0)
        torch.testing.assert_close(b, eps)


def test_timesteps_spacings():
    s = md.NoiseSchedule.linear(T=1000)
    assert s.timesteps(50).tolist() == list(range(980, -1, -20))
    trailing = s.timesteps(50, "trailing")
    assert trailing[0].item() == 999 and trailing[-1].item() == 19 and trailing.dtype == torch.int64
    lin = s.timesteps(10, "linspace")
    assert lin[0].item() == 999 and lin[-1].item() == 0 and len(set(lin.tolist())) == 10
    assert s.timesteps(1000).tolist() == list(range(999, -1, -1))
    k = s.timesteps(20, "karras")
    assert k.dtype == torch.float64 and (k[1:] < k[:-1]).all()
    assert k[0].item() == pytest.approx(999, abs=1e-6) and k[-1].item() == pytest.approx(0, abs=1e-6)
    # the karras grid's noise levels follow Karras et al. Eq. 5
    sig = (1 / s.alpha_bar_at(k) - 1).sqrt()
    smin, smax = s.sigmas[0].item(), s.sigmas[-1].item()
    expected = [(smax ** (1 / 7) + j / 19 * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7 for j in range(20)]
    torch.testing.assert_close(sig, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_alpha_bar_at_integer_and_between():
    s = md.NoiseSchedule.linear(T=100)
    torch.testing.assert_close(s.alpha_bar_at(torch.arange(100.0, dtype=torch.float64)), s.alphas_cumprod)
    mid = s.alpha_bar_at(10.5).item()
    assert s.alphas_cumprod[11].item() < mid < s.alphas_cumprod[10].item()


def test_course_schedule_is_the_courses_table():
    """alphas_cumprod[i] == the course's ab_t[i + 1], built independently the way the course builds it."""
    T, beta1, beta2 = 500, 1e-4, 0.02
    b_t = (beta2 - beta1) * torch.linspace(0, 1, T + 1, dtype=torch.float64) + beta1
    a_t = 1 - b_t
    ab_t = torch.cumsum(a_t.log(), dim=0).exp()
    ab_t[0] = 1
    schedule = md.NoiseSchedule.course(T=T, beta_start=beta1, beta_end=beta2)
    assert schedule.T == T
    torch.testing.assert_close(schedule.alphas_cumprod, ab_t[1:], rtol=0, atol=1e-15)
    torch.testing.assert_close(schedule.betas[1:], b_t[2:], rtol=0, atol=1e-15)      # beta_i = b_{i+1} after the first
    linear = md.NoiseSchedule.linear(T=T, beta_start=beta1, beta_end=beta2)
    assert (schedule.alphas_cumprod - linear.alphas_cumprod).abs().max() > 1e-3   # a different table


def test_presets_use_the_course_schedule():
    from minidiff.presets import PRESETS, build_schedule
    for name in ("course", "long", "quick"):
        schedule = build_schedule(PRESETS[name]["schedule"])
        torch.testing.assert_close(schedule.alphas_cumprod, md.NoiseSchedule.course().alphas_cumprod)
