"""Embeddings: how a network sees the time `t` and the conditioning `context`.

Every minidiff network is called `model(x, t, context=None)` with `t` a float tensor [B] in (0, 1].
The modules here turn that `t` into a vector a network can use:

- `SinusoidalEmbedding`:       fixed sin/cos features of `t` at geometric frequencies (Transformer, DDPM).
- `GaussianFourierProjection`: fixed sin/cos features at *random* frequencies (the score-SDE tutorial).
- `EmbedFC`:                   Linear -> GELU -> Linear, the sprites course's embedding for `t` and context.
- `Dense`:                     a Linear whose output is broadcast over H and W (adds an embedding to a map).
- `ContextTokens`:             class ids or a token sequence -> the tokens a cross-attention reads.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "as_time_batch",
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "GaussianFourierProjection",
    "EmbedFC",
    "Dense",
    "ContextTokens",
]


def as_time_batch(t: Tensor | float, batch_size: int, like: Tensor) -> Tensor:
    """Return `t` as a float tensor [batch_size] on `like`'s device and dtype.

    Accepts a python float, a tensor holding one number (broadcast to the batch: the sprites course
    samples with t of shape [1, 1, 1, 1]) or any tensor holding exactly `batch_size` numbers
    ([B], [B, 1], [B, 1, 1, 1]).
    """
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.numel() == 1:
        return t.reshape(1).expand(batch_size)
    if t.numel() != batch_size:
        raise ValueError(f"t must hold one time per sample: {batch_size} values, got shape {tuple(t.shape)}")
    return t.reshape(batch_size)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                         freq_shift: float = 0.0) -> Tensor:
    """Transformer position encoding of a (possibly fractional) time: [B] -> [B, dim].

    Half of the features are sin(t * f_k), half cos(t * f_k), with f_k = max_period^(-k / (dim/2 - freq_shift)).
    flip_sin_to_cos puts the cos half first. freq_shift and flip_sin_to_cos are diffusers' `Timesteps`
    options (downscale_freq_shift, flip_sin_to_cos); its UNet2DModel uses flip_sin_to_cos=True, freq_shift=0.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / (half - freq_shift))  # (half,)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    sin_cos = (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    emb = torch.cat(sin_cos, dim=-1)  # (B, 2 * half)
    if dim % 2 == 1:  # odd dim: pad one zero feature
        emb = F.pad(emb, (0, 1))
    return emb.to(t.dtype)


class SinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal time embedding [B] -> [B, dim]; no parameters.

    Source: Vaswani et al. 2017, Sec. 3.5, used for diffusion time by Ho et al. 2020 (DDPM).
    `t` in (0, 1] is first multiplied by `time_scale` (default 1000, i.e. back to DDPM step units),
    so that the low frequencies still vary over the range of `t`.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1000.0,
                 flip_sin_to_cos: bool = False, freq_shift: float = 0.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        if not freq_shift < dim // 2:
            raise ValueError(f"freq_shift must be below dim // 2 = {dim // 2}, got {freq_shift}")
        self.dim, self.max_period, self.time_scale = dim, max_period, time_scale
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t * self.time_scale, self.dim, self.max_period, self.flip_sin_to_cos,
                                    self.freq_shift)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of time: [B] -> [B, embed_dim], frequencies fixed at initialisation.

    Source: Tancik et al. 2020 (Fourier features), as in Song et al. 2021's score-SDE tutorial.
    W ~ N(0, scale^2) with scale 30 is drawn once and stored as a *buffer*: it is saved in the
    state_dict but is not a parameter, so no optimiser ever changes it (the tutorial used a frozen
    nn.Parameter for the same effect).
    """

    def __init__(self, embed_dim: int, scale: float = 30.0):
        super().__init__()
        if embed_dim < 2 or embed_dim % 2 != 0:
            raise ValueError(f"embed_dim must be an even number >= 2, got {embed_dim}")
        self.register_buffer("W", torch.randn(embed_dim // 2) * scale)  # (embed_dim/2,)

    def forward(self, t: Tensor) -> Tensor:
        angles = t[:, None] * self.W[None, :] * (2 * math.pi)  # (B, embed_dim/2)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, embed_dim)


class EmbedFC(nn.Module):
    """Linear -> GELU -> Linear: [..., input_dim] -> [N, emb_dim] with N = numel / input_dim.

    Source: the DeepLearning.AI "How Diffusion Models Work" course (sprites), used there for both
    the time t (input_dim 1) and the context vector (input_dim n_cfeat). Any input shape holding
    a multiple of input_dim numbers is flattened first, as the course does with `view(-1, input_dim)`.
    """

    def __init__(self, input_dim: int, emb_dim: int):
        super().__init__()
        if input_dim < 1 or emb_dim < 1:
            raise ValueError(f"input_dim and emb_dim must be >= 1, got {input_dim} and {emb_dim}")
        self.input_dim = input_dim
        self.model = nn.Sequential(nn.Linear(input_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(-1, self.input_dim))  # (N, emb_dim)


class Dense(nn.Module):
    """A Linear layer whose output is broadcast over H and W: [B, input_dim] -> [B, output_dim, 1, 1].

    Source: Song et al. 2021's score-SDE tutorial; adding `dense(embed)` to a feature map [B, C, H, W]
    gives every pixel the same time-dependent bias per channel.
    """

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.dense(x), "b c -> b c 1 1")  # (B, output_dim, 1, 1)


class ContextTokens(nn.Module):
    """Turn a context into the tokens [B, L, text_dim] that a cross-attention reads.

    Source: Rombach et al. 2022 (latent diffusion), Sec. 3.3 conditioning through a domain encoder;
    the class-label version is the score-SDE tutorial's `nn.Embedding` for digits.

    - int64 class ids [B] in 0..num_classes  -> `label_embed` -> [B, 1, text_dim].
      Id `num_classes` is the reserved *null* id (no condition), used for classifier-free guidance
      (Ho & Salimans 2022): train with some labels replaced by it, sample with both.
    - None                                   -> the null id for every sample -> [B, 1, text_dim].
    - float tokens [B, L, context_dim]        -> `context_proj` (Linear) -> [B, L, text_dim];
      only when built with `context_dim` (e.g. word embeddings from a text encoder).
    """

    def __init__(self, num_classes: int, text_dim: int, context_dim: Optional[int] = None):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = only the null id), got {num_classes}")
        if text_dim < 1:
            raise ValueError(f"text_dim must be >= 1, got {text_dim}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be None or >= 1, got {context_dim}")
        self.num_classes, self.text_dim, self.context_dim = num_classes, text_dim, context_dim
        self.null_id = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, text_dim)  # row num_classes = the null id
        self.context_proj = nn.Linear(context_dim, text_dim) if context_dim is not None else None

    def forward(self, context: Optional[Tensor], batch_size: int, device: torch.device) -> Tensor:
        if context is None:
            context = torch.full((batch_size,), self.null_id, dtype=torch.long, device=device)
        if not torch.is_floating_point(context):  # class ids
            if context.shape != (batch_size,):
                raise ValueError(f"context ids must have shape ({batch_size},), got {tuple(context.shape)}")
            # range check on CPU only: on a GPU it would cost a device sync in every sampling step
            if context.device.type == "cpu" and context.numel() and (
                int(context.min()) < 0 or int(context.max()) > self.null_id
            ):
                raise ValueError(f"context ids must lie in 0..{self.null_id} ({self.null_id} = null id)")
            return rearrange(self.label_embed(context), "b d -> b 1 d")  # (B, 1, text_dim)
        if self.context_proj is None:
            raise ValueError(
                "a float context (token sequence) needs the model built with context_dim=...; "
                "pass int64 class ids [B] otherwise"
            )
        if context.ndim != 3 or context.shape[0] != batch_size or context.shape[2] != self.context_dim:
            raise ValueError(
                f"context tokens must have shape ({batch_size}, L, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        return self.context_proj(context)  # (B, L, text_dim)
