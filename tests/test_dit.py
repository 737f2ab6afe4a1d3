"""The Diffusion Transformer: shapes, adaLN-Zero at init, reference = fast attention, checkpoints."""

import pytest
import torch

import minidiff as md
from minidiff.checkpoint import build_model
from minidiff.nn.dit import DiT, patchify, unpatchify


def small(**kwargs):
    return DiT(**{"image_size": 16, "in_channels": 3, "patch_size": 2, "dim": 32, "depth": 2, "heads": 4, **kwargs})


def test_patchify_shapes_and_inverse():
    x = torch.randn(2, 3, 16, 16)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 64, 12)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))      # token 1: row 0, col 1
    assert torch.equal(unpatchify(tokens, 2, 16, 16), x)


def test_output_shape_and_zero_at_init_with_identity_blocks():
    torch.manual_seed(0)
    model = small()
    x, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    for context in (None, torch.tensor([0, 1, 2, 5]), torch.eye(5)[:4]):
        assert model(x, t, context).shape == x.shape
        assert torch.equal(model(x, t, context), torch.zeros_like(x))                     # adaLN-Zero + zero out
    h, cond = torch.randn(4, 64, 32), torch.randn(4, 32)
    for block in model.blocks:
        assert torch.equal(block(h, cond), h)                                              # identity on the residual


def test_reference_and_fast_attention_agree_after_training_steps():
    torch.manual_seed(0)
    model = small()
    for p in model.parameters():                                                           # leave the zero init
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, context = torch.randn(3, 3, 16, 16), torch.rand(3), torch.tensor([1, 4, 5])
    fast, ref = model(x, t, context), model(x, t, context, reference=True)
    assert fast.abs().max() > 1e-3 and torch.allclose(fast, ref, atol=1e-5)


def test_float_context_is_the_class_mixture_and_zeros_are_the_null_class():
    torch.manual_seed(0)
    model = small()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    assert torch.allclose(model(x, t, torch.eye(5)[[1, 3]]), model(x, t, torch.tensor([1, 3])), atol=1e-6)
    assert torch.allclose(model(x, t, torch.zeros(2, 5)), model(x, t, torch.tensor([5, 5])), atol=1e-6)
    assert torch.allclose(model(x, t, None), model(x, t, torch.tensor([5, 5])), atol=1e-6)


def test_bad_sizes_and_checkpoint_round_trip(tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        small(patch_size=3)
    with pytest.raises(ValueError, match="heads"):
        small(heads=5)
    with pytest.raises(ValueError, match="shape"):
        small()(torch.randn(1, 3, 8, 8), torch.rand(1))
    model = build_model("DiT", image_size=16, in_channels=3, patch_size=2, dim=32, depth=1, heads=2)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    md.save_checkpoint(str(tmp_path / "dit.pt"), model, schedule=md.NoiseSchedule.linear(T=10))
    loaded = md.load_model(str(tmp_path / "dit.pt"))
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    assert isinstance(loaded, DiT) and torch.equal(loaded(x, t), model.eval()(x, t))
