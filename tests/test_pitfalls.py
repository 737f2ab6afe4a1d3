"""Each mistake of examples/pitfalls.py: the right version passes a check where the mistaken one fails."""

import math
import os
import sys

import torch

import minidiff as md
from minidiff.exact import ExactModel, GaussianMixture

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import pitfalls  # noqa: E402


def _gaussian_samples(model, schedule, n=4000, **options):
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return md.sample(model, schedule, (n, 1), x_T=x_T, generator=torch.Generator().manual_seed(1),
                     progress=False, **options)


def test_no_noise_collapses_the_sample_std():
    schedule = md.NoiseSchedule.linear(T=500)
    model = ExactModel(GaussianMixture(means=[0.0], stds=[0.5]), schedule)
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    right = pitfalls.sample_ddpm(model, schedule, x_T, add_noise=True).std().item()
    wrong = pitfalls.sample_ddpm(model, schedule, x_T, add_noise=False).std().item()
    assert abs(right / 0.5 - 1) < 0.05                      # the data's std
    assert wrong / 0.5 < 0.2                                # collapsed


def test_random_shortcut_is_random_and_unsaved():
    torch.manual_seed(0)
    right = md.nn.ResidualConvBlock(3, 8, is_res=True).eval()
    wrong = pitfalls.CourseResidualConvBlock(3, 8).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(right(x), right(x))
        assert not torch.allclose(wrong(x), wrong(x))       # two calls, two different random convs
    assert "shortcut.weight" in right.state_dict()
    assert not any("shortcut" in key for key in wrong.state_dict())
    reloaded = pitfalls.CourseResidualConvBlock(3, 8).eval()
    reloaded.load_state_dict(wrong.state_dict())
    with torch.no_grad():                                   # a saved-and-reloaded model is not the same model
        assert not torch.allclose(reloaded(x), wrong(x))


def _attention_module_qkv(d=16, heads=1):
    torch.manual_seed(0)
    module = md.nn.CrossAttention(d, context_dim=12, heads=heads).eval()
    x, context = torch.randn(2, 5, d), torch.randn(2, 7, 12)
    return module, x, context, module.to_q(x), module.to_k(context), module.to_v(context)


def test_attention_softmax_axis():
    module, x, context, q, k, v = _attention_module_qkv()
    with torch.no_grad():
        expected = module(x, context, reference=True)
        fast = module(x, context)
        for softmax_dim, should_match in ((-1, True), (-2, False)):
            out, attn = pitfalls.attention(q, k, v, softmax_dim=softmax_dim)
            rows_sum_to_one = torch.allclose(attn.sum(-1), torch.ones(2, 5), atol=1e-5)
            matches = torch.allclose(module.to_out(out), expected, atol=1e-5)
            assert rows_sum_to_one is should_match and matches is should_match
        assert torch.allclose(fast, expected, atol=1e-5)


def test_attention_without_scale_collapses_entropy():
    uniform = math.log(16)
    right_small, right_large = pitfalls.attention_entropy(8, True), pitfalls.attention_entropy(512, True)
    wrong_small, wrong_large = pitfalls.attention_entropy(8, False), pitfalls.attention_entropy(512, False)
    assert right_large > 0.6 * uniform and abs(right_large - right_small) < 0.25 * uniform
    assert wrong_large < 0.15 * uniform < wrong_small       # near one-hot at large d only
    _, _, _, q, k, v = _attention_module_qkv(d=16)
    out_scaled, _ = pitfalls.attention(q, k, v, scale=True)
    out_unscaled, _ = pitfalls.attention(q, k, v, scale=False)
    assert not torch.allclose(out_scaled, out_unscaled, atol=1e-4)


def test_clipping_latents_distorts_them():
    schedule = md.NoiseSchedule.linear(T=1000)
    model = ExactModel(GaussianMixture(means=[0.0], stds=[2.0]), schedule)          # latents with std 2
    right = _gaussian_samples(model, schedule, sampler="ddim", steps=50).std().item()
    wrong = _gaussian_samples(model, schedule, sampler="ddim", steps=50, clip_x0=True).std().item()
    assert abs(right / 2 - 1) < 0.06 and wrong < 1.2
    z = 2.0 * torch.randn(500, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    right_error = pitfalls.roundtrip_error(model, schedule, z, clip_x0=False)
    wrong_error = pitfalls.roundtrip_error(model, schedule, z, clip_x0=True)
    assert right_error < 0.1 < 0.5 < wrong_error


def test_ema_weights_beat_raw_weights_on_a_noisy_toy():
    h = pitfalls.train_noisy(steps=400)
    raw, ema = sum(h["raw_loss"][-200:]) / 200, sum(h["ema_loss"][-200:]) / 200
    assert ema < 0.4 * raw


def test_grid_off_by_one_biases_the_sample_std():
    schedule = md.NoiseSchedule.linear(T=1000)
    model = ExactModel(GaussianMixture(means=[0.0], stds=[0.1]), schedule)
    right = _gaussian_samples(model, schedule, sampler="ddpm").std().item() / 0.1
    wrong = _gaussian_samples(pitfalls.OffByOneTime(model, schedule.T), schedule, sampler="ddpm").std().item() / 0.1
    # Same x_T and the same noise for both runs, so their difference is the bias alone (about +2%; the
    # sampling error of each std, about 1%, is shared).
    assert abs(right - 1) < 0.03
    assert wrong - right > 0.015


def test_pitfalls_example_smoke(tmp_path):
    import numpy as np
    from PIL import Image
    pitfalls.main(["--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"])
    for name in pitfalls.MISTAKES:
        pixels = np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.float64)
        assert np.isfinite(pixels).all() and pixels.std() > 0
    text = (tmp_path / "pitfalls.md").read_text()
    assert all(f"## {name}" in text for name in pitfalls.MISTAKES)
