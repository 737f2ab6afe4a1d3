"""The networks: shapes at every documented size, gradients, parameter counts, fixed course bugs.

Bad constructor and forward arguments are in test_bad_input.py.
"""

import math

import pytest
import torch

from minidiff.nn import (
    AutoEncoder,
    ConditionalScoreUNet,
    ContextTokens,
    ContextUnet,
    Dense,
    EmbedFC,
    GaussianFourierProjection,
    LatentScoreUNet,
    ResidualConvBlock,
    ResidualScoreUNet,
    ResnetBlock,
    ScoreUNet,
    SinusoidalEmbedding,
    UnetDown,
    UnetUp,
    edge_loss,
    reconstruction_loss,
)


class StandInVESDE:
    """A minimal SDE for the score nets: VE marginal std sqrt((sigma^(2t) - 1) / (2 ln sigma))."""

    def __init__(self, sigma=25.0):
        self.sigma = sigma

    def marginal_std(self, t):
        return torch.sqrt((self.sigma ** (2 * t) - 1.0) / (2 * math.log(self.sigma)))


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- default configs and their counts

DEFAULT_COUNTS = [
    (ContextUnet, {}, 1_481_027),
    (ScoreUNet, {}, 1_115_297),
    (ResidualScoreUNet, {}, 1_022_849),
    (ConditionalScoreUNet, {}, 2_209_921),
    (LatentScoreUNet, {}, 2_160_516),
    (AutoEncoder, {}, 42_629),
    (AutoEncoder, {"variational": True}, 44_937),
]


@pytest.mark.parametrize("cls, kwargs, count", DEFAULT_COUNTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_default_parameter_count_matches_docstring(cls, kwargs, count):
    assert n_params(cls(**kwargs)) == count
    assert f"{count:,}" in cls.__doc__, f"{cls.__name__}'s docstring must state {count:,}"


def test_context_unet_28x28_count_in_docstring():
    assert n_params(ContextUnet(in_channels=1, n_feat=64, n_cfeat=10, height=28)) == 2_020_225
    assert "2,020,225" in ContextUnet.__doc__


# ---------------------------------------------------------------- shapes at every documented size, batch 1


@pytest.mark.parametrize(
    "model, x_shape, context",
    [
        (ContextUnet(), (1, 3, 16, 16), None),  # the course's sprites
        (ContextUnet(), (1, 3, 16, 16), torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])),
        (ContextUnet(in_channels=1, n_cfeat=10, height=28), (1, 1, 28, 28), torch.eye(10)[:1]),  # digits
        (ContextUnet(n_feat=16, height=32), (1, 3, 32, 32), None),
        (ScoreUNet(), (1, 1, 28, 28), None),  # the tutorial's MNIST size
        (ScoreUNet(in_channels=3), (1, 3, 16, 16), None),  # sprites: padded to 20x20 inside
        (ScoreUNet(in_channels=3), (1, 3, 32, 32), None),
        (ResidualScoreUNet(), (1, 1, 28, 28), None),
        (ResidualScoreUNet(in_channels=3), (1, 3, 16, 16), None),
        (ConditionalScoreUNet(), (1, 1, 28, 28), torch.tensor([3])),
        (ConditionalScoreUNet(), (1, 1, 28, 28), None),
        (ConditionalScoreUNet(in_channels=3, num_classes=5), (1, 3, 16, 16), torch.tensor([4])),
        (ConditionalScoreUNet(context_dim=32), (1, 1, 28, 28), torch.randn(1, 6, 32)),  # token sequence
        (LatentScoreUNet(), (1, 4, 10, 10), torch.tensor([7])),  # latents of 28x28 digits
        (LatentScoreUNet(num_classes=5), (1, 4, 4, 4), None),  # latents of 16x16 sprites
    ],
)
def test_output_shape_equals_input_shape(model, x_shape, context):
    x = torch.randn(x_shape)
    with torch.no_grad():
        out = model.eval()(x, torch.full((x_shape[0],), 0.5), context)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "in_channels, size, latent",
    [(1, 28, (4, 10, 10)), (3, 16, (4, 4, 4)), (3, 32, (4, 12, 12))],
)
@pytest.mark.parametrize("variational", [False, True])
def test_autoencoder_shapes_and_range(in_channels, size, latent, variational):
    ae = AutoEncoder(in_channels=in_channels, variational=variational).eval()
    x = torch.rand(1, in_channels, size, size) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (1, *latent) == (1, *ae.latent_shape(size))
    x_hat = ae.decode(z)
    assert x_hat.shape == x.shape
    assert x_hat.min() >= -1 and x_hat.max() <= 1  # [-1, 1], the minidiff image range
    out = ae(x)
    if variational:
        x_hat2, kl = out
        assert kl.shape == (1,) and (kl >= 0).all()
    else:
        x_hat2 = out
    torch.testing.assert_close(x_hat2, x_hat)  # eval: forward == decode(encode)


def test_latent_score_unet_matches_autoencoder_latents():
    ae, net = AutoEncoder(), LatentScoreUNet()
    z = ae.eval().encode(torch.rand(2, 1, 28, 28))
    assert net(z, torch.rand(2), torch.tensor([0, 1])).shape == z.shape


# ---------------------------------------------------------------- gradients reach every parameter


def _grad_cases():
    def x(*shape):
        return torch.randn(*shape)

    t = torch.rand(2)
    yield "ContextUnet", ContextUnet(n_feat=16), lambda m: m(x(2, 3, 16, 16), t, torch.rand(2, 5))
    yield "ScoreUNet", ScoreUNet(sde=StandInVESDE()), lambda m: m(x(2, 1, 28, 28), t)
    yield "ResidualScoreUNet", ResidualScoreUNet(), lambda m: m(x(2, 1, 28, 28), t)
    yield (
        "ConditionalScoreUNet",  # ids and token sequences both, so label_embed and context_proj get gradients
        ConditionalScoreUNet(num_classes=3, context_dim=8),
        lambda m: m(x(2, 1, 28, 28), t, torch.tensor([0, 3])).sum() + m(x(2, 1, 28, 28), t, x(2, 4, 8)).sum(),
    )
    yield "LatentScoreUNet", LatentScoreUNet(num_classes=3), lambda m: m(x(2, 4, 10, 10), t, None)
    yield "AutoEncoder", AutoEncoder(), lambda m: m(torch.rand(2, 1, 28, 28))
    yield "VAE", AutoEncoder(3, variational=True), lambda m: sum(o.sum() for o in m(torch.rand(2, 3, 16, 16)))
    yield "ResnetBlock", ResnetBlock(8, 16, emb_dim=12, groups=4), lambda m: m(x(2, 8, 5, 5), x(2, 12))


@pytest.mark.parametrize("name, model, run", list(_grad_cases()), ids=[c[0] for c in _grad_cases()])
def test_gradients_reach_every_parameter(name, model, run):
    torch.manual_seed(0)
    model.train()
    out = run(model)
    (out.pow(2).mean() if out.ndim else out).backward()
    for pname, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname}"
        # With a single key (one class token, or a 1x1 map in self-attention) softmax is exactly 1 and
        # does not depend on q or k: their gradient is zero by construction, not by a broken graph. So is the
        # gradient of the LayerNorm that feeds only the query of a cross-attention over ONE class token
        # (LatentScoreUNet: norm2 before attn_cross); whether a fused SDPA backward returns exactly 0 or a
        # round-off residue there depends on the input, so it is not asserted either way.
        single_key_query = name == "LatentScoreUNet" and ".transformer.norm2." in pname
        if not pname.endswith(("to_q.weight", "to_k.weight")) and not single_key_query:
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"


# ---------------------------------------------------------------- the course's shortcut bug, fixed


def test_residual_conv_block_shortcut_is_registered_and_deterministic():
    torch.manual_seed(0)
    block = ResidualConvBlock(3, 8, is_res=True).eval()
    assert "shortcut.weight" in block.state_dict() and "shortcut.bias" in block.state_dict()
    assert any(p is block.shortcut.weight for p in block.parameters())  # the optimiser will train it
    x = torch.randn(2, 3, 6, 6)
    y1, y2 = block(x), block(x)
    torch.testing.assert_close(y1, y2)  # the course's fresh-random conv made these differ
    clone = ResidualConvBlock(3, 8, is_res=True).eval()
    clone.load_state_dict(block.state_dict())
    torch.testing.assert_close(clone(x), y1)  # and a reloaded checkpoint would not reproduce it
    # residual formula: (shortcut(x) + conv2(conv1(x))) / sqrt(2)
    torch.testing.assert_close(y1, (block.shortcut(x) + block.conv2(block.conv1(x))) / math.sqrt(2))


def test_residual_conv_block_variants():
    same = ResidualConvBlock(4, 4, is_res=True).eval()
    assert isinstance(same.shortcut, torch.nn.Identity)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(same(x), (x + same.conv2(same.conv1(x))) / math.sqrt(2))
    plain = ResidualConvBlock(3, 4).eval()
    assert plain(torch.randn(1, 3, 5, 5)).shape == (1, 4, 5, 5)
    assert "shortcut.weight" not in plain.state_dict()


def test_unet_down_and_up_shapes():
    down, up = UnetDown(4, 8), UnetUp(16, 6)
    h = down(torch.randn(2, 4, 8, 8))
    assert h.shape == (2, 8, 4, 4)
    assert up(h, torch.randn(2, 8, 4, 4)).shape == (2, 6, 8, 8)


def test_resnet_block_shapes_and_dropout_off_in_eval():
    block = ResnetBlock(8, 8, emb_dim=4, groups=4, dropout=0.5)
    assert isinstance(block.shortcut, torch.nn.Identity)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
    block.eval()
    torch.testing.assert_close(block(x, emb), block(x, emb))
    assert ResnetBlock(8, 16, emb_dim=4, groups=8)(x, emb).shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="groups"):
        ResnetBlock(8, 12, emb_dim=4, groups=8)


# ---------------------------------------------------------------- embeddings


def test_time_embeddings():
    t = torch.tensor([0.1, 0.5, 1.0])
    emb = SinusoidalEmbedding(16)(t)
    assert emb.shape == (3, 16) and emb.abs().max() <= 1
    torch.testing.assert_close(SinusoidalEmbedding(8)(torch.zeros(1)), torch.tensor([[0.0] * 4 + [1.0] * 4]))
    assert SinusoidalEmbedding(7)(t).shape == (3, 7)
    torch.manual_seed(0)
    gfp = GaussianFourierProjection(512)
    assert gfp(t).shape == (3, 512)
    assert "W" in gfp.state_dict() and len(list(gfp.parameters())) == 0  # fixed, never trained
    assert 27 < gfp.W.std() < 33  # scale 30
    assert EmbedFC(1, 6)(t.view(3, 1, 1, 1)).shape == (3, 6)  # the course passes t as [B, 1, 1, 1]
    assert Dense(5, 7)(torch.randn(3, 5)).shape == (3, 7, 1, 1)


def test_context_tokens():
    ct = ContextTokens(num_classes=4, text_dim=6, context_dim=3)
    assert ct.null_id == 4
    cpu = torch.device("cpu")
    torch.testing.assert_close(ct(None, 2, cpu), ct(torch.tensor([4, 4]), 2, cpu))
    assert ct(torch.randn(2, 5, 3), 2, torch.device("cpu")).shape == (2, 5, 6)
    with pytest.raises(ValueError, match="context"):
        ct(torch.tensor([5, 0]), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="context_dim"):
        ContextTokens(4, 6)(torch.randn(2, 5, 3), 2, torch.device("cpu"))


# ---------------------------------------------------------------- model behaviour


def test_context_unet_conditioning_and_time():
    torch.manual_seed(0)
    model = ContextUnet(n_feat=16).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9])
    torch.testing.assert_close(model(x, t), model(x, t, torch.zeros(2, 5)))  # None = all zeros
    torch.testing.assert_close(model(x, t), model(x, t.view(2, 1, 1, 1)))  # the course's t shape
    torch.testing.assert_close(model(x, torch.tensor(0.5)), model(x, torch.tensor([0.5, 0.5])))
    assert not torch.allclose(model(x, t), model(x, t, torch.eye(5)[:2]))
    assert not torch.allclose(model(x, t), model(x, t.flip(0)))


def test_score_unets_divide_by_marginal_std():
    torch.manual_seed(0)
    sde = StandInVESDE(25.0)
    for model in (ScoreUNet(), ResidualScoreUNet(), ConditionalScoreUNet(), LatentScoreUNet()):
        model.eval()
        size = 28 if model.in_channels == 1 else 10
        x = torch.randn(2, model.in_channels, size, size)
        t = torch.tensor([0.05, 0.8])
        raw = model(x, t)
        model.sde = sde
        scored = model(x, t)
        std = sde.marginal_std(t)[:, None, None, None]
        torch.testing.assert_close(scored * std, raw, atol=1e-5, rtol=1e-5)
        assert "sde" not in dict(model.named_modules())  # a plain attribute, not a module


def test_conditional_score_unet_context_kinds():
    torch.manual_seed(0)
    model = ConditionalScoreUNet(num_classes=10, context_dim=16).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    assert model.null_id == 10
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([10, 10])))  # None = null id
    assert not torch.allclose(model(x, t, torch.tensor([1, 2])), model(x, t, torch.tensor([3, 4])))
    assert model(x, t, torch.randn(2, 5, 16)).shape == x.shape


# ---------------------------------------------------------------- autoencoder details


def test_variational_encode_sampling_uses_generator():
    ae = AutoEncoder(variational=True).eval()
    x = torch.rand(2, 1, 28, 28)
    mean, logvar = ae.encode_moments(x)
    torch.testing.assert_close(ae.encode(x), mean)
    z1 = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    z2 = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z1, z2)
    assert not torch.allclose(z1, mean)
    with pytest.raises(ValueError, match="variational"):
        AutoEncoder().encode_moments(x)


def test_reconstruction_loss():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert reconstruction_loss(x, x) == 0
    assert edge_loss(x + 0.3, x) < 1e-6  # a constant offset has the same edges
    blurred = (x + x.roll(1, -1) + x.roll(-1, -1)) / 3
    assert edge_loss(blurred, x) > 0.05
    assert reconstruction_loss(blurred, x) > torch.nn.functional.l1_loss(blurred, x)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(x, x[:1])


def test_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    ae = AutoEncoder(in_channels=3)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = reconstruction_loss(ae(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------- clear errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_run_on_cuda():
    from minidiff.nn import CrossAttention

    dev = torch.device("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare the two attention paths in true float32
    try:
        attn = CrossAttention(64, context_dim=32, heads=4).to(dev).eval()
        x, c = torch.randn(2, 49, 64, device=dev), torch.randn(2, 3, 32, device=dev)
        torch.testing.assert_close(attn(x, c), attn(x, c, reference=True), atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    t = torch.rand(2, device=dev)
    cases = [
        (ContextUnet(), torch.randn(2, 3, 16, 16, device=dev), None),
        (ScoreUNet(sde=StandInVESDE()), torch.randn(2, 1, 28, 28, device=dev), None),
        (ConditionalScoreUNet(), torch.randn(2, 1, 28, 28, device=dev), torch.tensor([1, 10], device=dev)),
        (LatentScoreUNet(), torch.randn(2, 4, 10, 10, device=dev), None),
    ]
    for model, x, context in cases:
        out = model.to(dev)(x, t, context)
        assert out.shape == x.shape and out.device.type == "cuda" and torch.isfinite(out).all()
    ae = AutoEncoder(variational=True).to(dev)
    x_hat, kl = ae(torch.rand(2, 1, 28, 28, device=dev))
    assert x_hat.shape == (2, 1, 28, 28) and kl.shape == (2,)


def test_one_time_broadcasts_over_the_batch_as_the_course_passes_it():
    model = ContextUnet(3, 8, 5, 16).eval()
    x = torch.randn(3, 3, 16, 16)
    course_t = torch.tensor([0.5])[:, None, None, None]                # [1, 1, 1, 1], as the course samples
    torch.testing.assert_close(model(x, course_t), model(x, torch.full((3,), 0.5)))
