"""DPM-Solver++(2M) against the published update, written out here from Lu et al. 2022, Algorithm 2.

The reference works in the "variance exploding" units of the paper's Eq. 9 form (x / alpha, sigma / alpha,
t = -lambda), not in minidiff's variance-preserving arrangement, so the two computations share no code:
first order on the first step only, second order on every later step, x0_pred on the final step to sigma = 0.
"""

import math

import pytest
import torch

import minidiff as md
from minidiff.exact import ExactModel, GaussianMixture

SCHEDULE = md.NoiseSchedule.linear(T=1000)


def published_dpmpp_2m(model, schedule, grid, x):
    """Algorithm 2 in VE units: with s = sqrt((1 - alpha_bar) / alpha_bar) and t = -log s (= -lambda),
    y = x / sqrt(alpha_bar) follows y_next = (s_next / s) y - (exp(-h) - 1) D, h = t_next - t."""
    alpha_bars = [float(schedule.alpha_bar_at(float(i))) for i in grid] + [1.0]
    y = x / math.sqrt(alpha_bars[0])
    x0_older, h_older = None, None
    for k, i in enumerate(grid):
        a, a_next = alpha_bars[k], alpha_bars[k + 1]
        eps = model(y * math.sqrt(a), torch.full((x.shape[0],), (float(i) + 1) / schedule.T, dtype=x.dtype))
        s = math.sqrt((1 - a) / a)
        x0 = y - s * eps                                          # Tweedie: x0 = x_ve - s eps
        if a_next == 1.0:
            y = x0                                                # the final step lands on the denoised sample
        else:
            s_next = math.sqrt((1 - a_next) / a_next)
            h = -math.log(s_next) + math.log(s)
            if x0_older is None:
                D = x0
            else:
                r = h_older / h
                D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_older
            y = (s_next / s) * y - (math.exp(-h) - 1) * D
            h_older = h
        x0_older = x0
    return y                                                      # alpha_bar = 1 at the end: y is x


@pytest.mark.parametrize("spacing", ["trailing", "leading", "karras"])
@pytest.mark.parametrize("steps", [3, 10])
def test_dpmpp_2m_is_the_published_algorithm(spacing, steps):
    model = ExactModel(GaussianMixture([-1.0, 0.5], [0.2, 0.4], [0.3, 0.7]), SCHEDULE)
    x_T = torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None]
    grid = SCHEDULE.timesteps(steps, spacing=spacing).tolist()
    expected = published_dpmpp_2m(model, SCHEDULE, grid, x_T)
    got = md.sample(model, SCHEDULE, x_T.shape, "dpmpp_2m", steps=steps, spacing=spacing, x_T=x_T, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
