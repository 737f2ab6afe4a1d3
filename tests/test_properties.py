"""Property-based tests (hypothesis): schedules, timestep grids, sampler shape handling, conversions.

Every property runs on MAX_EXAMPLES drawn cases, derandomized (the same cases on every run, so a
failure reproduces), with no deadline (the machine may be busy). Properties:
  * any valid schedule (linear / scaled_linear / cosine / from_betas, with or without zero terminal
    SNR) has alpha_bar strictly decreasing in (0, 1] (ending at exactly 0 with zero terminal SNR),
    or is refused with a ValueError that names betas;
  * every grid `timesteps(steps, spacing)` is strictly descending, inside [0, T - 1], int64 (float64
    for "karras"), with the documented end points;
  * `sample` and `sde_sample` return exactly the requested shape (any rank 2-5, any sizes, non-square),
    finite, for every sampler, spacing, step count and prediction type, with and without guidance;
  * the eps / x0 / v conversions invert each other, and add_noise is the closed form for any rank.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidiff as md
from minidiff.exact import ExactModel, ExactScore, GaussianMixture
from minidiff.schedule import PREDICTION_TYPES, SPACINGS

MAX_EXAMPLES = 50
PROPERTY = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
SAMPLING = settings(PROPERTY, max_examples=40)

beta = st.floats(min_value=1e-6, max_value=0.9, allow_nan=False)


def _check_schedule(s: md.NoiseSchedule, zero_terminal_snr: bool) -> None:
    ab = s.alphas_cumprod
    assert s.betas.dtype == ab.dtype == torch.float64 and ab.shape == (s.T,)
    assert torch.all(ab[1:] < ab[:-1]), "alpha_bar must be strictly decreasing"
    assert torch.all(ab <= 1) and ab[0] > 0
    if zero_terminal_snr:
        assert ab[-1] == 0 and ab[-2] > 0
    else:
        assert ab[-1] > 0
        assert torch.isfinite(s.sigmas).all() and torch.isfinite(s.log_snr).all()
    finite = s.posterior_variance[1:]                                  # step 0's posterior variance is 0
    assert torch.all(finite >= 0) and torch.isfinite(finite).all()


def log_alpha_bar(build, T, a, b) -> float:
    """log alpha_bar_{T-1} = sum log(1 - beta_i), computed without underflow."""
    if build == md.NoiseSchedule.linear:
        betas = torch.linspace(a, b, T, dtype=torch.float64)
    else:
        betas = torch.linspace(math.sqrt(a), math.sqrt(b), T, dtype=torch.float64) ** 2
    return torch.log1p(-betas).sum().item()


@PROPERTY
@given(kind=st.sampled_from(["linear", "scaled_linear"]), T=st.integers(1, 2000), a=beta, b=beta,
       zero_terminal_snr=st.booleans())
def test_linear_schedules_are_valid_or_refused(kind, T, a, b, zero_terminal_snr):
    build = getattr(md.NoiseSchedule, kind)
    if zero_terminal_snr and T == 1:
        with pytest.raises(ValueError, match="zero_terminal_snr needs T >= 2"):
            build(T=T, beta_start=a, beta_end=b, zero_terminal_snr=True)
        return
    try:
        s = build(T=T, beta_start=a, beta_end=b, zero_terminal_snr=zero_terminal_snr)
    except ValueError as error:
        assert "betas" in str(error) and "underflow" in str(error)           # the only refusal for these ranges
        assert log_alpha_bar(build, T, a, b) < math.log(1e-300)              # and only where alpha_bar vanishes
        return
    assert log_alpha_bar(build, T, a, b) > math.log(5e-324)
    assert s.T == T
    _check_schedule(s, zero_terminal_snr)


@PROPERTY
@given(T=st.integers(1, 2000), s=st.floats(0.0, 0.5), max_beta=st.floats(0.01, 0.999), zero_terminal_snr=st.booleans())
def test_cosine_schedules_are_valid(T, s, max_beta, zero_terminal_snr):
    zero_terminal_snr = zero_terminal_snr and T >= 2
    schedule = md.NoiseSchedule.cosine(T=T, s=s, max_beta=max_beta, zero_terminal_snr=zero_terminal_snr)
    assert schedule.betas.max() <= max_beta + 1e-12 or zero_terminal_snr
    _check_schedule(schedule, zero_terminal_snr)


@PROPERTY
@given(betas=st.lists(st.floats(1e-8, 0.999), min_size=1, max_size=60))
def test_any_betas_in_the_open_interval_make_a_valid_schedule(betas):
    s = md.NoiseSchedule.from_betas(betas)
    _check_schedule(s, False)
    assert torch.equal(md.NoiseSchedule.from_config(s.to_config()).alphas_cumprod, s.alphas_cumprod)


@PROPERTY
@given(data=st.data(), T=st.integers(1, 1200), spacing=st.sampled_from(SPACINGS), zero_terminal_snr=st.booleans())
def test_timestep_grids_are_descending_unique_and_in_range(data, T, spacing, zero_terminal_snr):
    zero_terminal_snr = zero_terminal_snr and T >= 2                         # (T = 1 is refused, see below)
    s = md.NoiseSchedule.linear(T=T, zero_terminal_snr=zero_terminal_snr)
    steps = data.draw(st.integers(1, T), label="steps")
    if spacing == "karras" and zero_terminal_snr and T == 2 and steps == 2:
        with pytest.raises(ValueError, match="spacing 'karras' needs two distinct noise levels"):
            s.timesteps(steps, spacing)                              # one usable level: refused, not repeated
        return
    grid = s.timesteps(steps, spacing)
    assert grid.shape == (steps,)
    assert torch.all(grid[1:] < grid[:-1]), "strictly descending, so no step repeats"
    assert grid.min() >= 0 and grid.max() <= T - 1
    if spacing == "karras":
        assert grid.dtype == torch.float64 and torch.isfinite(grid).all()
        top = T - 2 if zero_terminal_snr else T - 1                          # zero SNR: start one step lower
        assert grid[0] == pytest.approx(top, abs=1e-6)                       # steps = 1: just the top
        assert steps == 1 or grid[-1] == pytest.approx(0.0, abs=1e-9)
        assert all(0 < float(s.alpha_bar_at(i)) <= 1 for i in grid[: min(steps, 5)])
        return
    assert grid.dtype == torch.int64
    if spacing == "leading":
        assert grid[-1] == 0 and torch.all(grid % (T // steps) == 0)
    elif spacing == "trailing":
        assert grid[0] == T - 1
    else:
        assert grid[-1] == 0 and (steps == 1 or grid[0] == T - 1)


# ------------------------------------------------------------------------------------------ samplers' shapes
SCHEDULE = md.NoiseSchedule.linear(T=50, beta_end=0.2)          # alpha_bar down to ~1e-3: the full noise range
EPS_MODEL = ExactModel(GaussianMixture([0.5, -0.5], [0.2, 0.3]), SCHEDULE)


def shapes(min_rank=2, max_rank=5):
    return st.integers(min_rank, max_rank).flatmap(
        lambda rank: st.tuples(st.integers(1, 3), *[st.integers(1, 5) for _ in range(rank - 1)]))


@SAMPLING
@given(shape=shapes(), sampler=st.sampled_from(sorted(md.SAMPLERS)), spacing=st.sampled_from(SPACINGS),
       steps=st.integers(1, 6), prediction_type=st.sampled_from(PREDICTION_TYPES),
       guidance=st.one_of(st.none(), st.floats(0.0, 5.0)), eta=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_sample_returns_the_requested_shape_finite(shape, sampler, spacing, steps, prediction_type, guidance, eta,
                                                   seed):
    context = torch.randn(shape[0], 2) if guidance is not None else None
    x, trajectory = md.sample(EPS_MODEL, SCHEDULE, shape, sampler=sampler, steps=steps, spacing=spacing,
                              prediction_type=prediction_type, context=context, guidance_scale=guidance,
                              generator=torch.Generator().manual_seed(seed), return_trajectory=True, progress=False,
                              eta=eta if sampler == "ddim" else 0.0)
    assert tuple(x.shape) == shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert len(trajectory["x"]) == steps + 1 and all(tuple(f.shape) == shape for f in trajectory["x"])


@SAMPLING
@given(shape=shapes(max_rank=4), sde=st.sampled_from(["ve", "vp", "subvp"]),
       method=st.sampled_from(["euler_maruyama", "pc", "ode"]), steps=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_sde_sample_returns_the_requested_shape_finite(shape, sde, method, steps, seed):
    sde = {"ve": md.VESDE(sigma=25.0), "vp": md.VPSDE(), "subvp": md.SubVPSDE()}[sde]

    exact_score = ExactScore(GaussianMixture([0.0], [1.0]), sde)      # data N(0, I): p_t = N(0, m^2 + std^2)
    if method == "pc" and not isinstance(sde, md.VESDE):
        steps += 25                                                  # VP's predictor needs beta(t) dt < 1
    x = md.sde_sample(exact_score, sde, shape, method=method, steps=steps, ode_solver="heun", progress=False,
                      generator=torch.Generator().manual_seed(seed))
    assert tuple(x.shape) == shape and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------------ conversions
alpha_bars = st.floats(1e-4, 1 - 1e-4)


@PROPERTY
@given(shape=shapes(1, 4), alpha_bar=alpha_bars, seed=st.integers(0, 2**31))
def test_conversions_invert_each_other(shape, alpha_bar, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
    tol = dict(rtol=1e-9, atol=1e-9 / math.sqrt(alpha_bar * (1 - alpha_bar)))
    torch.testing.assert_close(md.x0_from_eps(x_t, eps, alpha_bar), x0, **tol)
    torch.testing.assert_close(md.eps_from_x0(x_t, x0, alpha_bar), eps, **tol)
    v = md.v_from_x0_eps(x0, eps, alpha_bar)
    x0_back, eps_back = md.x0_eps_from_v(x_t, v, alpha_bar)
    torch.testing.assert_close(x0_back, x0, **tol)
    torch.testing.assert_close(eps_back, eps, **tol)
    for prediction_type, output in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        x0_pred, eps_pred = md.x0_eps_from_output(output, x_t, alpha_bar, prediction_type)
        torch.testing.assert_close(x0_pred, x0, **tol)
        torch.testing.assert_close(eps_pred, eps, **tol)


@PROPERTY
@given(shape=shapes(1, 5), T=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_add_noise_is_the_closed_form_for_any_rank(shape, T, seed):
    s = md.NoiseSchedule.linear(T=T)
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    i = torch.randint(0, T, (shape[0],), generator=g)
    x_i = s.add_noise(x0, noise, i)
    ab = s.alphas_cumprod[i].float().reshape(-1, *[1] * (len(shape) - 1))
    assert x_i.shape == x0.shape and x_i.dtype == x0.dtype
    torch.testing.assert_close(x_i, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    v = s.velocity(x0, noise, i)
    torch.testing.assert_close(v, ab.sqrt() * noise - (1 - ab).sqrt() * x0)
