"""CrossAttention, TransformerBlock, SpatialTransformer: fast path == reference path, shapes, dropout."""

import math

import pytest
import torch

from minidiff.nn import CrossAttention, SpatialTransformer, TransformerBlock


@pytest.mark.parametrize(
    "query_dim, context_dim, heads, dim_head, n, m",
    [
        (32, None, 1, None, 7, 7),  # self-attention, one head
        (32, None, 4, None, 16, 16),  # self-attention, four heads
        (64, 24, 8, None, 25, 3),  # cross-attention to 3 tokens
        (48, 16, 3, 10, 4, 1),  # explicit dim_head, a single context token
    ],
)
def test_fast_path_equals_reference_path(query_dim, context_dim, heads, dim_head, n, m):
    torch.manual_seed(0)
    attn = CrossAttention(query_dim, context_dim, heads=heads, dim_head=dim_head).eval()
    x = torch.randn(2, n, query_dim)
    context = None if context_dim is None else torch.randn(2, m, context_dim)
    fast = attn(x, context)
    ref = attn(x, context, reference=True)
    assert fast.shape == ref.shape == x.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_reference_path_is_softmax_qk_v():
    """One head, written out with plain matrix products and the layer's own weights."""
    torch.manual_seed(1)
    attn = CrossAttention(8, context_dim=5, heads=1)
    x, c = torch.randn(1, 6, 8), torch.randn(1, 4, 5)
    q = x[0] @ attn.to_q.weight.T  # (6, 8)
    k, v = c[0] @ attn.to_k.weight.T, c[0] @ attn.to_v.weight.T  # (4, 8) each
    weights = torch.softmax(q @ k.T / math.sqrt(8), dim=-1)  # (6, 4)
    expected = attn.to_out(weights @ v)  # (6, 8)
    torch.testing.assert_close(attn(x, c, reference=True)[0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn(x, c)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", [None, 6])
def test_key_padding_mask_fast_equals_reference_and_hides_masked_keys(context_dim):
    """mask [B, M] (True = attend): both paths agree, and masked keys may hold anything, or be cut off."""
    torch.manual_seed(4)
    attn = CrossAttention(16, context_dim, heads=4).eval()
    x = torch.randn(3, 7, 16)
    context = None if context_dim is None else torch.randn(3, 7, context_dim)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] + [False] * 6])  # (B, M): 7, 3, 1 keys
    fast, ref = attn(x, context, mask=mask), attn(x, context, reference=True, mask=mask)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[0], attn(x[:1], None if context is None else context[:1])[0])  # all True
    if context is not None:                           # the 3 kept keys of row 1 are all that matters
        scrambled = torch.where(mask[..., None], context, torch.randn_like(context) * 100)
        torch.testing.assert_close(attn(x, scrambled, mask=mask), fast, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x[1:2], context[1:2, :3])[0], fast[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        attn(x, context, mask=mask.float())


def test_transformer_blocks_pass_the_context_mask_on():
    torch.manual_seed(5)
    block = SpatialTransformer(8, context_dim=4, heads=2).eval()
    x, c = torch.randn(2, 8, 3, 3), torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    torch.testing.assert_close(block(x, c, context_mask=mask), block(x, c[:, :2]), atol=1e-5, rtol=1e-5)


def test_cross_attention_depends_on_context_and_self_attention_on_x():
    torch.manual_seed(2)
    attn = CrossAttention(16, context_dim=4, heads=2)
    x = torch.randn(2, 5, 16)
    c1, c2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert not torch.allclose(attn(x, c1), attn(x, c2))


def test_dropout_only_in_training_mode():
    torch.manual_seed(3)
    attn = CrossAttention(16, heads=2, dropout=0.5)
    x = torch.randn(2, 10, 16)
    attn.eval()
    for reference in (False, True):
        torch.testing.assert_close(attn(x, reference=reference), attn(x, reference=reference))
    torch.testing.assert_close(attn(x), attn(x, reference=True), atol=1e-5, rtol=1e-5)
    attn.train()
    assert not torch.allclose(attn(x), attn(x))  # dropout on: two calls differ


def test_attention_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        CrossAttention(10, heads=3)
    with pytest.raises(ValueError, match="heads"):
        CrossAttention(10, heads=0)
    with pytest.raises(ValueError, match="query_dim"):
        CrossAttention(0)
    with pytest.raises(ValueError, match="dropout"):
        CrossAttention(8, dropout=1.0)
    attn = CrossAttention(8, context_dim=4)
    with pytest.raises(ValueError, match="^context must"):
        attn(torch.randn(1, 3, 8), torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match="^x must"):
        attn(torch.randn(1, 3, 7), torch.randn(1, 2, 4))


def test_transformer_block_shape_and_residual_paths():
    torch.manual_seed(4)
    block = TransformerBlock(32, context_dim=12, heads=4)
    x, c = torch.randn(3, 9, 32), torch.randn(3, 2, 12)
    y = block(x, c)
    assert y.shape == x.shape
    # zero every residual branch's output layer: the block becomes the identity
    with torch.no_grad():
        for layer in (block.attn_self.to_out, block.attn_cross.to_out, block.mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    torch.testing.assert_close(block(x, c), x)


@pytest.mark.parametrize("h, w", [(5, 5), (2, 2), (1, 1), (4, 6)])
def test_spatial_transformer_keeps_shape(h, w):
    torch.manual_seed(5)
    st = SpatialTransformer(32, context_dim=16, heads=2)
    x = torch.randn(2, 32, h, w)
    y = st(x, torch.randn(2, 3, 16))
    assert y.shape == x.shape
    st_self = SpatialTransformer(32)
    assert st_self(x).shape == x.shape


def test_spatial_transformer_is_residual_and_checks_channels():
    torch.manual_seed(6)
    st = SpatialTransformer(8, context_dim=4)
    block = st.transformer
    with torch.no_grad():
        for layer in (block.attn_self.to_out, block.attn_cross.to_out, block.mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(st(x, torch.randn(1, 2, 4)), x)
    with pytest.raises(ValueError, match="^x must"):
        st(torch.randn(1, 7, 3, 3))
