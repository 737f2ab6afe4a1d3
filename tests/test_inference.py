"""minidiff.nn.inference: the inference rewrites give the same outputs as the network they rewrite."""

import pytest
import torch
from torch import nn

from minidiff.nn import ContextUnet, fold_batchnorm, for_inference
from minidiff.nn.inference import ChannelsLastGELU


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (a fresh one is ~identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=gen))
                m.bias.data.copy_(torch.randn(c, generator=gen))
    return model


@pytest.mark.parametrize("conv_bias, affine", [(True, True), (False, True), (True, False)])
def test_fold_batchnorm_equals_conv_then_batchnorm(conv_bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=conv_bias)
    norm = _randomise_batchnorms(nn.BatchNorm2d(8, affine=affine)).eval()
    x = torch.randn(4, 6, 9, 9)
    fused = fold_batchnorm(conv, norm)
    torch.testing.assert_close(fused(x), norm(conv(x)), rtol=1e-5, atol=1e-5)
    assert fused is not conv and fused.bias is not None


def test_fold_batchnorm_rejects_mismatches():
    with pytest.raises(ValueError, match="output channels"):
        fold_batchnorm(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))


def test_for_inference_context_unet_matches_eval_mode_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = _randomise_batchnorms(ContextUnet(3, 16, 5, 16)).train()
    fast = for_inference(model)
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 18
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0
    assert not fast.training and all(type(m) is not nn.GELU for m in fast.modules())

    x, t = torch.randn(6, 3, 16, 16), torch.rand(6)
    c = nn.functional.one_hot(torch.arange(6) % 5, 5).float()
    with torch.no_grad():
        expected = model.eval()(x, t, c)
        torch.testing.assert_close(fast(x, t, c), expected, rtol=1e-4, atol=1e-4)
        fast_cl = fast.to(memory_format=torch.channels_last)
        torch.testing.assert_close(fast_cl(x.contiguous(memory_format=torch.channels_last), t, c), expected,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_gelu_is_gelu(approximate, dtype):
    """Same values (the contiguous kernel may round the tanh form's last bit differently), same layout."""
    x = torch.randn(3, 8, 5, 5).to(dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = ChannelsLastGELU(approximate=approximate)(x_cl)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    expected = nn.GELU(approximate=approximate)(x)
    tolerance = 1e-6 if dtype == torch.float32 else 0.008                           # bf16: one ulp
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)
    assert torch.equal(ChannelsLastGELU(approximate=approximate)(x), expected)     # NCHW input: plain GELU
