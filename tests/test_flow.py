"""Flow matching on the linear path, checked against the exact velocity of Gaussian and mixture data."""

import numpy as np
import pytest
import torch

import minidiff as md
from minidiff import ode
from minidiff.cli import main
from minidiff.exact import ExactModel, ExactScore, ExactVelocity, GaussianMixture
from minidiff.flow import (
    EpsFromVelocity,
    RectifiedFlow,
    VelocityFromEps,
    flow_log_likelihood,
    flow_sample,
    flow_time_of_alpha_bar,
    flow_timesteps,
    shift_time,
)

M, S0 = 0.5, 0.3                                      # 1-D Gaussian data N(M, S0^2), elementwise


def test_exact_velocity_of_a_gaussian_is_the_closed_form():
    data = GaussianMixture([M], [S0])
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[None].repeat(3, 1)       # [3, 9]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    tc = t[:, None]
    var = (1 - tc) ** 2 * S0**2 + tc**2                                           # Var x_t
    r = x - (1 - tc) * M
    expected = tc / var * r - (M + (1 - tc) * S0**2 / var * r)                   # E[z | x] - E[x0 | x]
    assert torch.allclose(ExactVelocity(data)(x, t), expected, atol=1e-12)


def test_exact_velocity_of_a_mixture_matches_its_score():
    """u = -(x + t score) / (1 - t) for the linear path, with the score from autograd of log p_t."""
    data = GaussianMixture.ring(k=4, radius=1.0, std=0.2)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0.05, 0.4, 0.95):
        x_ = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(data.log_prob(x_, 1 - t, t).sum(), x_)
        assert torch.allclose(data.velocity(x, t), -(x + t * score) / (1 - t), atol=1e-10)
        score_sde = ExactScore(data, RectifiedFlow())(x, torch.full((16,), t, dtype=torch.float64))
        assert torch.allclose(score_sde, score, atol=1e-10)                       # RectifiedFlow is an SDE too


def test_flow_loss_is_smallest_at_the_exact_velocity():
    data = GaussianMixture([-0.5, 0.5], [0.2, 0.2])
    x0 = data.sample((4096, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    flow = RectifiedFlow("uniform")
    exact = ExactVelocity(data)
    losses = [md.flow_loss(lambda x, t, c, k=k: k * exact(x, t), x0, flow, generator=torch.Generator().manual_seed(1))
              for k in (0.9, 1.0, 1.1)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_time_sampling_and_shift():
    g = torch.Generator().manual_seed(0)
    t = RectifiedFlow("logit_normal").sample_time(20000, g)
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02
    assert t.std() < RectifiedFlow("uniform").sample_time(20000, g).std()        # mass moved to the middle
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_time(grid, 1.0), grid)
    shifted = shift_time(grid, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > grid[1:-1]).all() and (shifted.diff() > 0).all()
    assert flow_timesteps(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="time_sampling"):
        RectifiedFlow("cosine")
    with pytest.raises(ValueError, match="shift"):
        flow_timesteps(4, shift=0.0)


@pytest.mark.parametrize("sampler", ["euler", "heun", "midpoint"])
def test_flow_samplers_recover_a_gaussian_mixture(sampler):
    data = GaussianMixture([-0.6, 0.6], [0.15, 0.15], weights=[0.3, 0.7])
    x = flow_sample(ExactVelocity(data), None, (4000, 1, 2, 2), sampler=sampler,
                    steps=100 if sampler == "euler" else 20, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).flatten()
    assert abs((x > 0).double().mean().item() - 0.7) < 0.02                        # the mode weights
    right = x[x > 0]
    assert abs(right.mean().item() - 0.6) < 0.01 and abs(right.std().item() - 0.15) < 0.01


def test_measured_orders_euler_1_heun_and_midpoint_2():
    """Against the flow map of mixture data, solved by adaptive RK45 to 1e-11 (on one Gaussian, whose velocity
    is linear in x, midpoint's leading error term vanishes and it measures order 3)."""
    data = GaussianMixture([-0.5, 0.5], [0.3, 0.3])
    exact_velocity = ExactVelocity(data)
    x1 = torch.randn(64, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference, _ = ode.rk45(lambda t, y: exact_velocity(y, torch.full((64,), t, dtype=torch.float64)), x1, 1.0, 0.0,
                            rtol=1e-11, atol=1e-11)
    for sampler, order in (("euler", 1), ("heun", 2), ("midpoint", 2)):
        steps = [16, 32, 64, 128]
        errors = [(flow_sample(exact_velocity, None, x1.shape, sampler=sampler, steps=n, x_T=x1) - reference)
                  .abs().max().item() for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert abs(slope - order) < 0.2, (sampler, slope, errors)


def test_likelihood_through_the_flow_ode_is_the_exact_gaussian_likelihood():
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    data = GaussianMixture.gaussian([0.3, -0.2], cov)
    x = data.sample(6, generator=torch.Generator().manual_seed(0))                 # [6, 2]
    logp = flow_log_likelihood(ExactVelocity(data), x, trace="exact", rtol=1e-8, atol=1e-8)
    assert torch.allclose(logp, data.log_prob(x), atol=1e-5)


def test_flow_euler_is_ddim_and_eps_converts_to_velocity_and_back():
    """Euler on the grid t_k = sqrt(1 - ab_k) / (sqrt(ab_k) + sqrt(1 - ab_k)) is DDIM on ab_k (flow.py docstring)."""
    data = GaussianMixture([-0.5, 0.4], [0.2, 0.3])
    schedule = md.NoiseSchedule.linear(T=1000)
    eps_model = ExactModel(data, schedule, "epsilon")
    x_T = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ddim = md.sample(eps_model, schedule, x_T.shape, sampler="ddim", steps=10, spacing="trailing", x_T=x_T,
                     progress=False)
    ab = schedule.alphas_cumprod[schedule.timesteps(10, spacing="trailing")]
    ts = flow_time_of_alpha_bar(torch.cat([ab, torch.ones(1, dtype=torch.float64)]))   # ..., 0
    scale = 1 / (ab[0].sqrt() + (1 - ab[0]).sqrt())                                     # x_flow = x_vp * scale
    flow = flow_sample(VelocityFromEps(eps_model, schedule), None, x_T.shape, timesteps=ts, x_T=x_T * scale)
    assert torch.allclose(flow, ddim, atol=1e-10, rtol=0)
    # the two wrappers are each other's inverse, and the exact eps model maps to the exact velocity
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t_net = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    back = EpsFromVelocity(VelocityFromEps(eps_model, schedule), schedule)(x, t_net)
    assert torch.allclose(back, eps_model(x, t_net), atol=1e-10)
    t_flow = flow_time_of_alpha_bar(schedule.alpha_bar_at_time(t_net))
    assert torch.allclose(VelocityFromEps(eps_model, schedule)(x, t_flow), ExactVelocity(data)(x, t_flow), atol=1e-9)
    assert torch.allclose(EpsFromVelocity(ExactVelocity(data), schedule)(x, t_net), eps_model(x, t_net), atol=1e-10)


def test_guidance_is_the_same_linear_combination():
    class Net(torch.nn.Module):
        null_id = 2

        def forward(self, x, t, context=None):
            return x * (1 + context.to(x.dtype)).view(-1, 1, 1, 1)

    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    context = torch.tensor([0, 1])
    guided = flow_sample(Net(), None, x_T.shape, steps=1, x_T=x_T, context=context, guidance_scale=2.0)
    v = 2 * Net()(x_T, None, context) - Net()(x_T, None, torch.full_like(context, 2))
    assert torch.allclose(guided, x_T - v)


def test_flow_model_trains_saves_loads_and_samples_through_the_cli(tmp_path, capsys):
    from minidiff.checkpoint import build_model
    net = build_model("ContextUnet", in_channels=3, n_feat=8, n_cfeat=5, height=8)
    images = torch.rand(8, 3, 8, 8) * 2 - 1
    labels = torch.nn.functional.one_hot(torch.arange(8) % 5, 5).float()
    dataset = torch.utils.data.TensorDataset(images, labels)
    config = md.TrainConfig(objective="flow", steps=2, batch_size=4, out_dir=str(tmp_path / "run"), progress=False,
                            sample_steps=2, samples_per_class=1, device="cpu")
    md.Trainer(net, dataset, config, sde=RectifiedFlow(shift=2.0)).fit()
    checkpoint = md.load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert checkpoint["sde"]["class"] == "RectifiedFlow" and checkpoint["train_config"]["objective"] == "flow"
    model, process = md.load_pipeline(str(tmp_path / "run" / "checkpoint.pt"))
    assert isinstance(process, RectifiedFlow) and process.shift == 2.0
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--n", "2", "--steps", "3",
                 "--sampler", "heun", "--out", str(out), "--device", "cpu"]) == 0
    assert out.exists()
    folder = tmp_path / "pretrained"
    md.save_pretrained(model, process, folder)
    assert main(["sample", "--checkpoint", str(folder), "--n", "2", "--out", str(tmp_path / "p.png"),
                 "--device", "cpu"]) == 0
    assert main(["sample", "--checkpoint", str(folder), "--sampler", "ddim", "--n", "1",
                 "--out", str(tmp_path / "q.png"), "--device", "cpu"]) == 2                # flow samplers only
    with pytest.raises(ValueError, match="RectifiedFlow"):
        md.Trainer(net, dataset, md.TrainConfig(objective="flow", steps=1, batch_size=4, progress=False),
                   schedule=md.NoiseSchedule.linear(T=10))


def test_minidiff_train_a_flow_run_then_sample_it(tmp_path):
    """The CLI path end to end: a run description whose "sde" is a RectifiedFlow trains with objective "flow"."""
    import json
    config = {"preset": "smoke", "sde": {"class": "RectifiedFlow", "kwargs": {"time_sampling": "uniform"}},
              "train": {"steps": 2, "sample_every": 0}, "data": {"n": 16}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.json"), "--out", str(out), "--no-progress"]) == 0
    checkpoint = md.load_checkpoint(str(out / "checkpoint.pt"))
    assert checkpoint["train_config"]["objective"] == "flow" and checkpoint["sde"]["class"] == "RectifiedFlow"
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "grid.png"), "--gif", str(tmp_path / "path.gif"), "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").exists() and (tmp_path / "path.gif").exists()
