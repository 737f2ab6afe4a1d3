"""DiT: a Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers", Sec. 3.2 and Fig. 3).

The image is cut into p x p patches, each patch a token; a stack of transformer blocks runs on the tokens,
each modulated by the time and class embedding through adaptive layer norm (adaLN): LayerNorm without its
own scale and shift, then x * (1 + scale) + shift with (shift, scale) regressed from the condition, and each
residual branch multiplied by a regressed gate. "-Zero": the regressors start at zero, so every block starts
as the identity on the residual path and the whole network outputs zero (Sec. 3.2, "adaLN-Zero block").

Symbols: B batch, C channels, H = W image size, p patch size, N = (H / p) (W / p) tokens, D = dim.
Conditioning: class ids [B] (int, `num_classes` is the reserved null id for classifier-free guidance) or
float vectors [B, K] (ContextUnet's one-hot/mixture convention, all zeros = no class): the class embedding is
the mixture sum_k c_k e_k + (1 - sum_k c_k) e_null. The self-attention is attention.CrossAttention, with its
SDPA fast path and its einsum reference path (`model(..., reference=True)` or `model.reference = True`).
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from .attention import CrossAttention
from .embeddings import SinusoidalEmbedding, as_time_batch


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p * p * C] with N = (H / p) (W / p), patches in row-major order."""
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)


def unpatchify(tokens: Tensor, p: int, height: int, width: int) -> Tensor:
    """The inverse of patchify: [B, N, p * p * C] -> [B, C, H, W]."""
    return rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=height // p, w=width // p, p1=p, p2=p)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, N, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (Peebles & Xie 2023, Fig. 3, right): x [B, N, D], cond [B, D] -> [B, N, D].

    x = x + gate_1 * Attn(modulate(LN(x), shift_1, scale_1));  x = x + gate_2 * MLP(modulate(LN(x), shift_2, scale_2))
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CrossAttention(dim, heads=heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)                               # adaLN-Zero: gates start at 0
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, cond: Tensor, reference: bool = False) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=1)      # 6 x [B, D]
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), reference=reference)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion Transformer: model(x [B, C, H, W], t [B], context=None) -> [B, C, H, W] (eps or velocity).

    Peebles & Xie 2023. Sprite scale: image_size=16, patch_size=2 (64 tokens), dim 64-128, depth 4-6.
    The positional embedding is learned (DiT's is fixed 2-D sin-cos; at 8 x 8 tokens either works).
    """

    def __init__(self, image_size: int = 16, in_channels: int = 3, patch_size: int = 2, dim: int = 96,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 5):
        super().__init__()
        for name, value in (("image_size", image_size), ("in_channels", in_channels), ("patch_size", patch_size),
                            ("dim", dim), ("depth", depth), ("heads", heads), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "num_classes" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.image_size, self.in_channels, self.patch_size, self.num_classes = image_size, in_channels, patch_size, \
            num_classes
        self.null_id = num_classes                                        # the "no class" id for guidance
        self.reference = False                                            # True: the einsum attention path
        patch_dim = patch_size * patch_size * in_channels
        n_tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.time_embed = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embed = nn.Embedding(num_classes + 1, dim)            # row num_classes: the null class
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch_dim)
        for layer in (self.ada_out[1], self.out):                        # zero output at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: Tensor, context: Optional[Tensor], batch: int, like: Tensor) -> Tensor:
        """time embedding + class embedding, [B, D]."""
        emb = self.time_embed(as_time_batch(t, batch, like))
        table = self.class_embed.weight                                   # [num_classes + 1, D]
        if context is None:
            return emb + table[self.null_id]
        if context.is_floating_point():                                   # [B, K] mixture weights, K <= num_classes
            weights = context.to(table.dtype)
            k = weights.shape[1]
            return emb + weights @ table[:k] + (1 - weights.sum(1, keepdim=True)) * table[self.null_id]
        return emb + self.class_embed(context.long())

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None, reference: bool = False) -> Tensor:
        B, C, H, W = x.shape
        if (C, H, W) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"x must have shape (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        cond = self.condition(t, context, B, x)                           # [B, D]
        h = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed     # [B, N, D]
        for block in self.blocks:
            h = block(h, cond, reference=reference or self.reference)     # [B, N, D]
        shift, scale = self.ada_out(cond).chunk(2, dim=1)                 # 2 x [B, D]
        h = self.out(modulate(self.norm_out(h), shift, scale))            # [B, N, p * p * C]
        return unpatchify(h, self.patch_size, H, W)                       # [B, C, H, W]
