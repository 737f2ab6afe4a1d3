"""The exact-score accuracy benchmark: every sampler driven by the true eps/score of 1-D Gaussian and
Gaussian-mixture data, so the error left is the sampler's own, and its log-log slope against NFE is
the sampler's order of accuracy. The quick run takes a few seconds; the orders it fits are exact
properties of the deterministic samplers (no Monte-Carlo noise), measured 0.98-1.02 for ddim/euler
and 2.06-2.26 for heun/dpmpp_2m."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: `benchmarks`

import minidiff as md  # noqa: E402
from benchmarks import sampler_accuracy as sa  # noqa: E402

FIRST_ORDER = (0.8, 1.3)       # ddim (eta = 0), euler
SECOND_ORDER = (1.6, 2.6)      # heun, dpmpp_2m


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampler_accuracy")
    assert sa.main(["--quick", "--out", str(out)]) == 0
    with open(out / "sampler_accuracy.json") as f:
        return out, json.load(f)


@pytest.mark.parametrize("dataset", ["gaussian", "mixture"])
@pytest.mark.parametrize("label, expected", [("ddim", FIRST_ORDER), ("euler", FIRST_ORDER),
                                             ("heun", SECOND_ORDER), ("dpmpp_2m", SECOND_ORDER)])
def test_fitted_order_of_the_deterministic_samplers(quick, dataset, label, expected):
    run = next(r for r in quick[1]["results"][dataset]["runs"] if r["label"] == label)
    assert run["fit"]["meaningful"], run["fit"]
    assert expected[0] <= run["fit"]["order"] <= expected[1], run["fit"]
    w1 = [r["w1"] for r in run["rows"]]
    assert w1[-1] < w1[-2] < w1[-3]                                           # converging over the fitted range
    assert all(r["mean_se"] is None for r in run["rows"])                    # deterministic: no Monte-Carlo error


def test_files_and_keys(quick):
    out, report = quick
    assert {"settings", "results"} <= set(report)
    assert {"command", "n", "n_stochastic", "seed", "seconds", "quick"} <= set(report["settings"])
    assert set(report["results"]) == {"gaussian", "mixture"}
    for data in report["results"].values():
        assert {"data", "noise_floor", "runs"} <= set(data)
        assert [r["label"] for r in data["runs"]] == [r.label for r in sa.RUNS]
        for run in data["runs"]:
            assert {"order", "nfe_range", "points", "meaningful"} <= set(run["fit"])
            assert run["rows"], run["label"]
            for row in run["rows"]:
                assert {"steps", "nfe", "mean_err", "std_err", "w1", "weight_err", "mean_se", "std_se"} <= set(row)
                assert math.isfinite(row["w1"]) and row["nfe"] >= row["steps"]
    text = (out / "sampler_accuracy.md").read_text()
    assert "Fitted order of accuracy" in text and "| heun |" in text
    from PIL import Image
    with Image.open(out / "sampler_accuracy.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 400


def test_nfe_counts_match_the_samplers():
    """The exact models count their calls: heun uses 2 steps - 1, pc 2 per step, the rest 1 per step."""
    schedule, data = md.NoiseSchedule.linear(T=1000), sa.GAUSSIAN
    sde = md.VPSDE.from_schedule(schedule)
    expected = {"ddim": 10, "euler": 10, "heun": 19, "dpmpp_2m": 10, "ddpm": 10, "ddim eta=1": 10,
                "sde euler_maruyama": 10, "sde pc": 40}                      # at 10 steps, pc at its least, 20
    for run in sa.RUNS:
        _, nfe, _ = sa.draw(run, data, max(10, run.min_steps), 64, 0, schedule, sde)
        assert nfe == expected[run.label], run.label


def test_exact_model_and_quantiles():
    """The exact eps of a Gaussian is linear; the quantile grid inverts the CDF; a perfect sample has W1 = 0."""
    law = sa.MIXTURE
    grid = law.quantile_grid(1000)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    torch.testing.assert_close(law.cdf(grid), u, atol=1e-12, rtol=0)
    assert sa.errors(grid, law, 0.0)["w1"] < 1e-12
    assert abs(sa.errors(grid, law, 0.0)["weight_err"]) <= 1 / 1000
    schedule = md.NoiseSchedule.linear(T=1000)
    model = md.exact.ExactModel(sa.GAUSSIAN.oracle(), schedule)
    alpha_bar = float(schedule.alphas_cumprod[499])
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    eps = model(x, torch.full((5,), 500 / 1000, dtype=torch.float64))
    # E[eps | x] = sqrt(1 - a) (x - sqrt(a) m) / (a s^2 + 1 - a) for data N(m, s^2)
    expected = math.sqrt(1 - alpha_bar) * (x - math.sqrt(alpha_bar) * 0.5) / (alpha_bar * 0.25 + 1 - alpha_bar)
    torch.testing.assert_close(eps, expected, atol=1e-12, rtol=0)
