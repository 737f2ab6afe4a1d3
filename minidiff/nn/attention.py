"""Attention for conditioning: CrossAttention -> TransformerBlock -> SpatialTransformer.

Symbols: B batch, N query tokens (pixels: N = H * W), M context tokens, h heads, d = dim_head.
Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V  (Vaswani et al. 2017, Eq. 1).
Self-attention: K and V come from x itself. Cross-attention: K and V come from a `context`
sequence (class embeddings, word embeddings), so every pixel can look up the condition.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["CrossAttention", "TransformerBlock", "SpatialTransformer"]


class CrossAttention(nn.Module):
    """Multi-head self- or cross-attention: x [B, N, query_dim], context [B, M, context_dim] -> x's shape.

    Source: Vaswani et al. 2017, Sec. 3.2; cross-attention conditioning as in Rombach et al. 2022, Sec. 3.3.
    `context=None` (or `context_dim=None` at construction) means self-attention on x.
    Two paths compute the same thing:
      - the fast path (default): `F.scaled_dot_product_attention` (a fused kernel where available);
      - the reference path, `forward(..., reference=True)`: einsum written exactly as
        softmax(Q K^T / sqrt(d)) V reads. The tests check that the two agree.
    `dim_head` defaults to query_dim // heads (then heads must divide query_dim).
    Attention dropout, if any, is applied only in training mode.
    `mask` (optional, bool [B, M], True = attend): a key-padding mask; keys where it is False get
    weight 0 for every query (their score is -inf before the softmax). Every row needs at least one
    True, else the softmax is 0 / 0 = NaN.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 1,
        dim_head: Optional[int] = None,
        dropout: float = 0.0,
        qkv_bias: bool = False,  # biases on the q, k, v projections (diffusers' Attention has them)
    ):
        super().__init__()
        if query_dim < 1:
            raise ValueError(f"query_dim must be >= 1, got {query_dim}")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if dim_head is None:
            if query_dim % heads != 0:
                raise ValueError(f"heads={heads} must divide query_dim={query_dim} (or pass dim_head)")
            dim_head = query_dim // heads
        if dim_head < 1:
            raise ValueError(f"dim_head must be >= 1, got {dim_head}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.query_dim, self.heads, self.dim_head, self.dropout = query_dim, heads, dim_head, dropout
        self.context_dim = query_dim if context_dim is None else context_dim
        inner = heads * dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(self.context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(self.context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, reference: bool = False,
                mask: Optional[Tensor] = None) -> Tensor:
        context = x if context is None else context
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(f"x must have shape (B, N, {self.query_dim}), got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape ({x.shape[0]}, M, {self.context_dim}), got {tuple(context.shape)}"
            )
        if mask is not None and (mask.dtype != torch.bool or mask.shape != context.shape[:2]):
            raise ValueError(
                f"mask must be bool of shape {tuple(context.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
            )
        keep = None if mask is None else rearrange(mask, "b m -> b 1 1 m")  # (B, 1, 1, M), broadcast over h, N
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, h, N, d)
        k = rearrange(self.to_k(context), "b m (h d) -> b h m d", h=self.heads)  # (B, h, M, d)
        v = rearrange(self.to_v(context), "b m (h d) -> b h m d", h=self.heads)  # (B, h, M, d)
        p = self.dropout if self.training else 0.0
        if reference:
            scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(self.dim_head)  # (B, h, N, M)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))  # masked keys: exp(-inf) = 0
            attn = F.dropout(scores.softmax(dim=-1), p=p)  # each row sums to 1 over the M keys
            out = torch.einsum("bhnm,bhmd->bhnd", attn, v)  # (B, h, N, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)  # (B, h, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, query_dim)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, cross-attention, GELU MLP, each residual.

    Source: Vaswani et al. 2017 with pre-norm (Xiong et al. 2020), as in the score-SDE tutorial's
    UNet_Tranformer and latent diffusion's BasicTransformerBlock. x [B, N, dim] -> [B, N, dim].
    With `context=None` the cross-attention attends to x (a second self-attention), which needs
    context_dim == dim. `context_mask` (bool [B, M], True = attend) hides context tokens (padding)
    from the cross-attention; see CrossAttention.
    """

    def __init__(
        self,
        dim: int,
        context_dim: Optional[int] = None,
        heads: int = 1,
        dim_head: Optional[int] = None,
        mlp_ratio: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if mlp_ratio < 1:
            raise ValueError(f"mlp_ratio must be >= 1, got {mlp_ratio}")
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn_self = CrossAttention(dim, None, heads, dim_head, dropout)
        self.attn_cross = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor, context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn_self(self.norm1(x))  # (B, N, dim)
        x = x + self.attn_cross(self.norm2(x), context, mask=context_mask)  # (B, N, dim)
        return x + self.mlp(self.norm3(x))  # (B, N, dim)


class SpatialTransformer(nn.Module):
    """A TransformerBlock over the pixels of a feature map, residual: [B, C, H, W] -> [B, C, H, W].

    Source: Rombach et al. 2022 (latent diffusion), Sec. 3.3, in the score-SDE tutorial's simple form
    (no norm/projection around the block). Each of the H*W pixels is a token of width C; with a
    `context` [B, M, context_dim] every pixel cross-attends to the condition tokens (but not to
    those where the optional `context_mask` [B, M] is False).
    Residual: the TransformerBlock's three residual branches add onto the pixel features, so the
    output is x + f(x) and a block whose branches output zero is the identity. (The tutorial adds
    x once more after the block, which doubles the features at every SpatialTransformer.)
    """

    def __init__(
        self, channels: int, context_dim: Optional[int] = None, heads: int = 1, dim_head: Optional[int] = None
    ):
        super().__init__()
        self.channels = channels
        self.transformer = TransformerBlock(channels, context_dim, heads, dim_head)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        _, _, h, w = x.shape
        tokens = rearrange(x, "b c h w -> b (h w) c")  # (B, H*W, C)
        tokens = self.transformer(tokens, context, context_mask)  # (B, H*W, C), = tokens + attention + MLP
        return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)  # (B, C, H, W)
