"""Samplers driven by EXACT denoisers (minidiff.exact) must reproduce the data distribution."""

import pytest
import torch

import minidiff as md
from minidiff.exact import ExactModel, GaussianMixture

SCHEDULE = md.NoiseSchedule.linear(T=1000)
MU, SD = 0.5, 0.5


def standard_normal(n, seed=0, dtype=torch.float64):
    """x_T with exactly zero mean and unit std, so a deterministic sampler's output std is its exact gain."""
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return (x - x.mean()) / x.std()


# --------------------------------------------------------------------------- stochastic samplers, Gaussian data
@pytest.mark.parametrize("sampler, steps, kwargs", [
    ("ddpm", None, {}),                                   # all 1000 steps, beta variance (the course)
    ("ddpm", None, {"variance": "posterior"}),
    ("ddim", 1000, {"eta": 1.0}),
])
def test_stochastic_samplers_recover_gaussian(sampler, steps, kwargs):
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x = md.sample(model, SCHEDULE, (20_000, 1), sampler=sampler, steps=steps, progress=False,
                  generator=torch.Generator().manual_seed(0), **kwargs)
    # sampling error of 20k draws: std(mean) = 0.0035, std(std) = 0.0025
    assert x.mean().item() == pytest.approx(MU, abs=0.015)
    assert x.std().item() == pytest.approx(SD, rel=0.03)


# --------------------------------------------------------------------------- deterministic samplers: accuracy and order
@pytest.mark.parametrize("sampler, spacing, steps, tolerance", [
    ("ddim", "leading", 50, 0.045),       # first order: measured |std error| 0.034 at 50 steps
    ("dpmpp_2m", "karras", 20, 0.03),     # measured 0.021
    ("euler", "karras", 50, 0.045),       # measured 0.037
    ("heun", "karras", 20, 0.03),         # 39 network calls; measured 0.025
    ("heun", "linspace", 20, 0.015),      # measured 0.010
])
def test_ode_samplers_recover_gaussian_at_their_budget(sampler, spacing, steps, tolerance):
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x = md.sample(model, SCHEDULE, (4096, 1), sampler=sampler, steps=steps, spacing=spacing,
                  x_T=standard_normal(4096), progress=False, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(MU, abs=2e-3)
    assert abs(x.std().item() - SD) < tolerance


@pytest.mark.parametrize("sampler, spacing, order", [
    ("ddim", "leading", 1), ("euler", "karras", 1), ("heun", "linspace", 2), ("dpmpp_2m", "karras", 2)])
def test_convergence_order(sampler, spacing, order):
    """Doubling the steps divides the error by ~2 (first order) or ~4 (second order)."""
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    errors = []
    for steps in (40, 80):
        x = md.sample(model, SCHEDULE, (1024, 1), sampler=sampler, steps=steps, spacing=spacing,
                      x_T=standard_normal(1024), progress=False, dtype=torch.float64)
        errors.append(abs(x.std().item() - SD))
    ratio = errors[0] / errors[1]
    lo, hi = (1.6, 2.5) if order == 1 else (3.0, 6.0)
    assert lo < ratio < hi, f"error ratio {ratio:.2f} for errors {errors}"


# --------------------------------------------------------------------------- two-component mixture
@pytest.mark.parametrize("sampler, steps, spacing", [
    ("ddpm", None, "leading"), ("ddim", 50, "leading"), ("dpmpp_2m", 20, "karras"),
    ("euler", 50, "karras"), ("heun", 20, "linspace")])
def test_samplers_recover_mixture_weights(sampler, steps, spacing):
    model = ExactModel(GaussianMixture([-1.0, 1.0], [0.2, 0.2], [0.3, 0.7]), SCHEDULE)
    x = md.sample(model, SCHEDULE, (10_000, 1), sampler=sampler, steps=steps, spacing=spacing, progress=False,
                  generator=torch.Generator().manual_seed(1))
    right = x[x > 0]
    # weight: binomial std of 10k draws is 0.0046
    assert (x > 0).float().mean().item() == pytest.approx(0.7, abs=0.02)
    assert right.mean().item() == pytest.approx(1.0, abs=0.02)
    assert right.std().item() == pytest.approx(0.2, rel=0.08)


# --------------------------------------------------------------------------- exact identities
def test_ddim_eta1_every_step_equals_ddpm_posterior_variance():
    s = md.NoiseSchedule.linear(T=100, beta_start=1e-3, beta_end=0.05)
    model = ExactModel(GaussianMixture([-1.0, 1.0], [0.3, 0.3]), s)
    x_T = torch.randn(512, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = md.sample(model, s, x_T.shape, "ddim", steps=100, eta=1.0, x_T=x_T, progress=False,
                  generator=torch.Generator().manual_seed(4))
    b = md.sample(model, s, x_T.shape, "ddpm", variance="posterior", x_T=x_T, progress=False,
                  generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ddim_eta0_is_deterministic_and_lands_on_clean_x0():
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    a, traj = md.sample(model, SCHEDULE, x_T.shape, "ddim", steps=25, x_T=x_T, return_trajectory=True,
                        progress=False, generator=torch.Generator().manual_seed(1))
    b = md.sample(model, SCHEDULE, x_T.shape, "ddim", steps=25, x_T=x_T, progress=False,
                  generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert len(traj["x"]) == 26 and len(traj["x0_pred"]) == 25 and traj["nfe"] == 25
    torch.testing.assert_close(traj["x"][-1], traj["x0_pred"][-1])   # alpha_bar_next = 1: x = x0_pred


def test_ddim_inversion_round_trip():
    """x0 -> x_T -> x0 through the DDIM ODE; the error is first order in the step size."""
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x0 = MU + SD * torch.randn(256, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errors = []
    for steps in (100, 200):
        x_T = md.ddim_invert(model, SCHEDULE, x0, steps=steps)
        # the exact flow maps N(MU, SD^2) onto N(~0, 1): x_T's std is x0's std / SD
        assert x_T.std().item() == pytest.approx(x0.std().item() / SD, rel=0.01)
        back = md.sample(model, SCHEDULE, x0.shape, "ddim", steps=steps, x_T=x_T, progress=False)
        errors.append((back - x0).abs().max().item())
    assert errors[0] < 0.06                                                # measured 0.048
    assert 1.7 < errors[0] / errors[1] < 2.3


def test_ddim_inversion_on_the_karras_grid():
    """The karras grid has fractional step indices: inversion reads them through alpha_bar_at."""
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x0 = MU + SD * torch.randn(256, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_T = md.ddim_invert(model, SCHEDULE, x0, steps=100, spacing="karras")
    back = md.sample(model, SCHEDULE, x0.shape, "ddim", steps=100, spacing="karras", x_T=x_T, progress=False)
    assert (back - x0).abs().max().item() < 0.1                            # measured 0.080


def test_prediction_types_give_the_same_samples():
    s, data = SCHEDULE, GaussianMixture([MU], [SD])
    eps_model = ExactModel(data, s)
    as_x0, as_v = ExactModel(data, s, "sample"), ExactModel(data, s, "v_prediction")

    x_T = standard_normal(128)
    ref = md.sample(eps_model, s, x_T.shape, "dpmpp_2m", steps=10, x_T=x_T, progress=False)
    for model, kind in ((as_x0, "sample"), (as_v, "v_prediction")):
        out = md.sample(model, s, x_T.shape, "dpmpp_2m", steps=10, x_T=x_T, prediction_type=kind, progress=False)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_same_generator_same_samples():
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    runs = [md.sample(model, SCHEDULE, (8, 1), "ddpm", steps=50, progress=False,
                      generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_ddpm_without_extra_noise_collapses():
    """The course's demo: dropping z in every step gives (nearly) one image, the data mean."""
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    x = md.sample(model, SCHEDULE, (2000, 1), "ddpm", add_noise=False, progress=False,
                  generator=torch.Generator().manual_seed(0))
    assert x.std().item() < 0.05 * SD and x.mean().item() == pytest.approx(MU, abs=0.01)


# --------------------------------------------------------------------------- guidance
class ShiftByContext(torch.nn.Module):
    """A conditional 'network': context c shifts the data mean; c = 0 is the unconditional model."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.calls = []

    def forward(self, x, t, context=None):
        self.calls.append(x.shape[0])
        a = float(self.schedule.alpha_bar_at(float(t[0]) * self.schedule.T - 1))
        mean = context[:, :1] if context is not None else torch.zeros_like(x[:, :1])
        return (1 - a) ** 0.5 * (x - a**0.5 * mean) / (a * 0.25 + 1 - a)


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_guidance_zero_is_unconditional_one_is_conditional(w):
    model = ShiftByContext(SCHEDULE)
    x_T = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
    context = torch.full((16, 1), 2.0)
    guided = md.sample(model, SCHEDULE, x_T.shape, "ddim", steps=10, x_T=x_T, context=context,
                       guidance_scale=w, progress=False)
    assert model.calls[0] == 32                                           # cond + uncond in one batch
    plain = md.sample(model, SCHEDULE, x_T.shape, "ddim", steps=10, x_T=x_T,
                      context=context if w == 1.0 else torch.zeros_like(context), progress=False)
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


def test_guidance_above_one_extrapolates():
    model = ShiftByContext(SCHEDULE)
    x_T = torch.zeros(4, 1)
    out = md.sample(model, SCHEDULE, x_T.shape, "ddim", steps=20, x_T=x_T, context=torch.ones(4, 1),
                    guidance_scale=3.0, progress=False)
    assert out.mean().item() > 2.0                                        # pushed past the conditional mean 1.0


def test_sampling_switches_dropout_off_and_restores_mode():
    model = ShiftByContext(SCHEDULE)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    model.train()
    md.sample(model, SCHEDULE, (2, 1), "ddim", steps=3, progress=False)
    assert seen == [False, False, False] and model.training


def test_clipping_and_dynamic_thresholding_bound_x0():
    model = ExactModel(GaussianMixture([3.0], [0.1]), SCHEDULE)             # data far outside [-1, 1]
    x = md.sample(model, SCHEDULE, (64, 1), "ddim", steps=10, clip_x0=True, progress=False,
                  generator=torch.Generator().manual_seed(0))
    assert x.abs().max().item() <= 1.0 + 1e-6
    x = md.sample(model, SCHEDULE, (64, 1), "ddim", steps=10, dynamic_threshold=0.9, progress=False,
                  generator=torch.Generator().manual_seed(0))
    assert x.abs().max().item() <= 1.0 + 1e-6


def test_heun_nfe_and_trajectory_lengths():
    model = ExactModel(GaussianMixture([MU], [SD]), SCHEDULE)
    _, traj = md.sample(model, SCHEDULE, (4, 1), "heun", steps=10, return_trajectory=True, progress=False)
    assert traj["nfe"] == 19 and len(traj["x"]) == 11
