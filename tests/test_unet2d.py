"""BasicUNet (the course's toy, with corrupt and naive_sample) and the configurable UNet2D."""

import pytest
import torch

from minidiff.nn.attention import CrossAttention
from minidiff.nn.basic_unet import BasicUNet, corrupt, naive_sample
from minidiff.nn.unet2d import AttentionBlock, ScaleShiftResnetBlock, UNet2D

COURSE_UNET2D_PARAMETERS = 1_707_009  # diffusers' UNet2DModel at the course's config, as the course prints it
BUTTERFLY = dict(in_channels=3, block_out_channels=(64, 128, 128, 256),
                 block_types=("plain", "plain", "attention", "attention"))  # the course's 32x32 RGB net


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- BasicUNet
def test_basic_unet_parameter_count_is_the_courses():
    assert n_params(BasicUNet()) == 309_057


def test_basic_unet_shapes_ignores_t_and_checks_input():
    torch.manual_seed(0)
    net = BasicUNet()
    x = torch.rand(2, 1, 28, 28)
    y = net(x)
    assert y.shape == (2, 1, 28, 28)
    assert torch.equal(net(x, torch.rand(2)), y)  # t is accepted and ignored
    assert BasicUNet(3, 3)(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(2, 1, 30, 30))


def test_corrupt_endpoints_and_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(corrupt(x, 0.0, noise), x)
    assert torch.allclose(corrupt(x, 1.0, noise), noise)
    half = corrupt(x, torch.tensor([0.0, 0.5, 0.5, 1.0]), noise)
    assert torch.allclose(half[1], 0.5 * (x[1] + noise[1]))
    drawn = corrupt(x, 1.0, generator=g)  # pure noise, uniform over [-1, 1)
    assert drawn.min() >= -1 and drawn.max() < 1 and drawn.min() < -0.5 and drawn.max() > 0.5
    course = corrupt((x + 1) / 2, 1.0, generator=g, value_range=(0.0, 1.0))  # the course's [0, 1)
    assert course.min() >= 0 and course.max() < 1
    # the [0, 1] and [-1, 1] versions are the same mix: 2 * corrupt01 - 1 == corrupt in [-1, 1]
    a = torch.rand(4)
    assert torch.allclose(2 * corrupt((x + 1) / 2, a, (noise + 1) / 2) - 1, corrupt(x, a, noise), atol=1e-6)
    with pytest.raises(ValueError, match="amount"):
        corrupt(x, torch.rand(3))


def test_naive_sample_moves_one_over_n_minus_i_and_lands_on_the_prediction():
    class Constant(torch.nn.Module):  # predicts the same image whatever the input
        def __init__(self):
            super().__init__()
            self.target = torch.nn.Parameter(torch.full((1, 1, 4, 4), 0.25))

        def forward(self, x, t=None, context=None):
            return self.target.expand_as(x)

    start = torch.zeros(2, 1, 4, 4)
    x, xs, preds = naive_sample(Constant(), (2, 1, 4, 4), n_steps=4, x=start)
    assert len(xs) == len(preds) == 4
    assert torch.allclose(x, torch.full_like(x, 0.25))  # the last step (mix 1) returns the prediction
    assert torch.allclose(xs[1], torch.full_like(x, 0.25 / 4))  # step 0 moved 1/4 of the way
    assert torch.allclose(xs[2], torch.full_like(x, 0.25 / 2))  # then 1/3 of the rest: half way
    g = torch.Generator().manual_seed(0)
    x, xs, _ = naive_sample(BasicUNet(), (2, 1, 8, 8), n_steps=2, generator=g, value_range=(0.0, 1.0))
    assert xs[0].min() >= 0 and xs[0].max() < 1 and x.shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------------------------- UNet2D
def test_unet2d_course_config_parameter_count():
    net = UNet2D()  # the course's: 28x28 grey, (32, 64, 64), attention at the two lower levels
    n_attention = sum(isinstance(m, AttentionBlock) for m in net.modules())
    assert n_params(net) == 1_704_897
    assert abs(n_params(net) - COURSE_UNET2D_PARAMETERS) / COURSE_UNET2D_PARAMETERS < 0.02
    # The whole difference: CrossAttention has no q/k/v biases (3 * 64 in each of the 11 attention blocks).
    assert n_attention == 11
    assert n_params(net) + n_attention * 3 * 64 == COURSE_UNET2D_PARAMETERS


def test_unet2d_shapes_at_documented_sizes():
    torch.manual_seed(0)
    net = UNet2D()
    assert net(torch.randn(2, 1, 28, 28), torch.rand(2)).shape == (2, 1, 28, 28)
    big = UNet2D(**BUTTERFLY)
    attention_biases = sum(3 * m.channels for m in big.modules() if isinstance(m, AttentionBlock))
    assert n_params(big) == 18_529_795 and n_params(big) + attention_biases == 18_536_323  # diffusers' count
    assert big(torch.randn(1, 3, 32, 32), torch.rand(1)).shape == (1, 3, 32, 32)
    assert UNet2D(3, out_channels=6, block_out_channels=(8,), block_types=("plain",), norm_groups=4)(
        torch.randn(1, 3, 5, 7), 0.5).shape == (1, 6, 5, 7)  # one level: any size, t broadcast


def test_unet2d_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet2D(3, block_out_channels=(8, 16, 16), block_types=("plain", "attention", "plain"),
                 norm_groups=4, num_class_embeds=3, time_scale_shift=True, dropout=0.1)
    net(torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 3])).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert any(isinstance(m, ScaleShiftResnetBlock) for m in net.modules())


def test_unet2d_time_and_class_conditioning_and_null_id():
    torch.manual_seed(0)
    net = UNet2D(1, block_out_channels=(8, 16), block_types=("plain", "attention"), norm_groups=4,
                 num_class_embeds=10).eval()
    assert net.null_id == 10
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    for m in net.modules():  # a fresh conv_out is small; make the output depend visibly on emb
        if isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, std=3.0)
    y3 = net(x, t, torch.tensor([3, 3]))
    assert not torch.allclose(y3, net(x, t, torch.tensor([7, 7])))  # the class changes the output
    assert not torch.allclose(y3, net(x, torch.full((2,), 0.9), torch.tensor([3, 3])))  # so does t
    assert torch.equal(net(x, t), net(x, t, torch.tensor([10, 10])))  # None = the null id
    with pytest.raises(ValueError, match="context ids must lie in 0..10"):
        net(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="context must be int64 class ids"):
        net(x, t, torch.zeros(2, 10))
    with pytest.raises(ValueError, match="without num_class_embeds"):
        UNet2D(1, block_out_channels=(8,), block_types=("plain",), norm_groups=4)(x, t, torch.tensor([0, 1]))


def test_unet2d_attention_fast_and_reference_paths_agree():
    torch.manual_seed(0)
    block = AttentionBlock(16, groups=4, head_dim=8)
    assert isinstance(block.attn, CrossAttention) and block.attn.heads == 2
    x = torch.randn(2, 16, 6, 6)
    assert torch.allclose(block(x), block(x, reference=True), atol=1e-5)


def test_unet2d_bad_config_and_input_raise_named_errors():
    with pytest.raises(ValueError, match="block_types must have one entry per level"):
        UNet2D(block_out_channels=(32, 64), block_types=("plain",))
    with pytest.raises(ValueError, match="block_types entries must be one of"):
        UNet2D(block_types=("plain", "attn", "attention"))
    with pytest.raises(ValueError, match="norm_groups=32 must divide"):
        UNet2D(block_out_channels=(32, 48, 64))
    with pytest.raises(ValueError, match="attention_head_dim=8"):
        UNet2D(block_out_channels=(4, 12), block_types=("plain", "attention"), norm_groups=4)
    with pytest.raises(ValueError, match="layers_per_block"):
        UNet2D(layers_per_block=0)
    net = UNet2D(1, block_out_channels=(8, 8, 8), norm_groups=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="divisible by 2\\^\\(levels - 1\\) = 4"):
        net(torch.randn(1, 1, 10, 10), torch.rand(1))
    with pytest.raises(ValueError, match="t must hold one time per sample"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))


def test_unet2d_few_adam_steps_reduce_the_loss_on_a_fixed_rgb_batch():
    torch.manual_seed(0)
    net = UNet2D(3, block_out_channels=(16, 32), block_types=("plain", "attention"), layers_per_block=1,
                 norm_groups=8, attention_head_dim=None)
    x, t, target = torch.randn(4, 3, 32, 32), torch.rand(4), torch.randn(4, 3, 32, 32)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.mse_loss(net(x, t), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.97 * losses[0]


def test_unet2d_dropout_is_off_in_eval_and_works_with_md_sample():
    import minidiff as md

    torch.manual_seed(0)
    net = UNet2D(1, block_out_channels=(8, 8), block_types=("plain", "attention"), norm_groups=4, dropout=0.5,
                 num_class_embeds=2)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    schedule = md.NoiseSchedule.linear(T=20)
    out = md.sample(net, schedule, (2, 1, 8, 8), sampler="ddim", steps=3, context=torch.tensor([0, 1]),
                    guidance_scale=2.0, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
