"""Time-dependent score UNets s_theta(x, t) ~ grad_x log p_t(x) for score-based SDEs.

Source: Song et al. 2021, "Score-Based Generative Modeling through SDEs", in the form of its
MNIST tutorial (and the Harvard "stable diffusion from scratch" tutorial built on it):
Gaussian Fourier time embedding, unpadded 3x3 convolutions, GroupNorm, SiLU, and the output
divided by the SDE's marginal std sigma_t, because the true score of p_t has norm ~ 1 / sigma_t.

Four variants, written side by side so a diff shows exactly what changes:
  ScoreUNet             concatenated skips (the tutorial's ScoreNet / UNet)
  ResidualScoreUNet     skips added instead of concatenated (the tutorial's UNet_res)
  ConditionalScoreUNet  + SpatialTransformer at the two lowest resolutions (UNet_Tranformer)
  LatentScoreUNet       3 levels for 4-channel autoencoder latents (Latent_UNet_Tranformer)

`sde` is any object with `marginal_std(t: Tensor[B]) -> Tensor[B]` (minidiff.VESDE, VPSDE,
SubVPSDE); with `sde=None` the raw network output is returned. It is a plain attribute, not a
module, so it can be set after construction: `model.sde = md.VESDE(25.0)`.

Sizes: the unpadded convolutions fit 28x28 exactly (28 -> 26 -> 12 -> 5 -> 2 and back), as they
fit every size 20, 28, 36, ... (12 + 8k); for the latent net 10, 14, 18, ... (6 + 4k). Any other
size is zero-padded to the next size that fits and the output is cropped back, so the same nets
run on 16x16 sprites (padded to 20x20) and 4x4 sprite latents (padded to 10x10).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SpatialTransformer
from .embeddings import ContextTokens, Dense, GaussianFourierProjection, as_time_batch

__all__ = ["ScoreUNet", "ResidualScoreUNet", "ConditionalScoreUNet", "LatentScoreUNet"]


def _check_config(in_channels: int, channels: Sequence[int], levels: int, embed_dim: int) -> tuple[int, ...]:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    channels = tuple(int(c) for c in channels)
    if len(channels) != levels or min(channels) < 1:
        raise ValueError(f"channels must be {levels} positive widths, got {channels}")
    if embed_dim < 2 or embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be an even number >= 2, got {embed_dim}")
    return channels


def _gnorm(preferred_groups: int, channels: int) -> nn.GroupNorm:
    """The tutorial's GroupNorm(preferred_groups, channels); fewer groups if they do not divide channels."""
    return nn.GroupNorm(math.gcd(preferred_groups, channels), channels)


def _fit_padding(size: int, smallest: int, step: int) -> tuple[int, int]:
    """(before, after) zero padding that takes `size` to the next size in smallest + step * k."""
    target = smallest if size <= smallest else smallest + math.ceil((size - smallest) / step) * step
    return (target - size) // 2, (target - size) - (target - size) // 2


def _prepare(x: Tensor, t: Tensor, in_channels: int, smallest: int, step: int) -> tuple:
    """Check x [B, in_channels, H, W], make t [B], pad x to a size the convolutions fit."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    t = as_time_batch(t, x.shape[0], like=x)  # (B,)
    top, bottom = _fit_padding(x.shape[2], smallest, step)
    left, right = _fit_padding(x.shape[3], smallest, step)
    return F.pad(x, (left, right, top, bottom)), t, (top, bottom, left, right)


def _score_output(h: Tensor, t: Tensor, pads: tuple, sde: Any) -> Tensor:
    """Crop the padding away and divide by the marginal std sigma_t of the SDE, if any."""
    top, bottom, left, right = pads
    h = h[:, :, top : h.shape[2] - bottom, left : h.shape[3] - right]  # (B, C, H, W) as given
    if sde is None:
        return h
    return h / sde.marginal_std(t).to(h.dtype)[:, None, None, None]


def _no_context(context: Optional[Tensor], name: str) -> None:
    if context is not None:
        raise ValueError(f"{name} is unconditional: context must be None (use ConditionalScoreUNet)")


class ScoreUNet(nn.Module):
    """Time-dependent score UNet with concatenated skips: x [B, C, H, W], t [B] -> score [B, C, H, W].

    Source: Song et al. 2021, the score-SDE MNIST tutorial's ScoreNet. Default config
    (in_channels=1, channels=(32, 64, 128, 256), embed_dim=256): 1,115,297 parameters, the
    tutorial's layers exactly (its 128 frozen Fourier frequencies are a buffer here, not counted).
    Widths and sizes at 28x28: h1 [B, 32, 26, 26], h2 [B, 64, 12, 12], h3 [B, 128, 5, 5], h4 [B, 256, 2, 2].
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        embed_dim: int = 256,
        sde: Any = None,
    ):
        super().__init__()
        c = _check_config(in_channels, channels, 4, embed_dim)
        self.in_channels, self.channels, self.sde = in_channels, c, sde
        self.time_embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        # Encoder: resolution goes down (28 -> 26 -> 12 -> 5 -> 2).
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, bias=False)
        self.dense1, self.gnorm1 = Dense(embed_dim, c[0]), _gnorm(4, c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 2, bias=False)
        self.dense2, self.gnorm2 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 2, bias=False)
        self.dense3, self.gnorm3 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.conv4 = nn.Conv2d(c[2], c[3], 3, 2, bias=False)
        self.dense4, self.gnorm4 = Dense(embed_dim, c[3]), _gnorm(32, c[3])
        # Decoder: resolution goes up (2 -> 5 -> 12 -> 26 -> 28); skips concatenated, so inputs double.
        self.tconv4 = nn.ConvTranspose2d(c[3], c[2], 3, 2, bias=False)
        self.dense5, self.tgnorm4 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.tconv3 = nn.ConvTranspose2d(2 * c[2], c[1], 3, 2, bias=False, output_padding=1)
        self.dense6, self.tgnorm3 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.tconv2 = nn.ConvTranspose2d(2 * c[1], c[0], 3, 2, bias=False, output_padding=1)
        self.dense7, self.tgnorm2 = Dense(embed_dim, c[0]), _gnorm(32, c[0])
        self.tconv1 = nn.ConvTranspose2d(2 * c[0], in_channels, 3, 1)
        self.act = nn.SiLU()  # swish, x * sigmoid(x)

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        _no_context(context, "ScoreUNet")
        x, t, pads = _prepare(x, t, self.in_channels, smallest=20, step=8)  # shapes below: 28x28 input
        embed = self.act(self.time_embed(t))  # (B, embed_dim)
        h1 = self.act(self.gnorm1(self.conv1(x) + self.dense1(embed)))  # (B, c0, 26, 26)
        h2 = self.act(self.gnorm2(self.conv2(h1) + self.dense2(embed)))  # (B, c1, 12, 12)
        h3 = self.act(self.gnorm3(self.conv3(h2) + self.dense3(embed)))  # (B, c2, 5, 5)
        h4 = self.act(self.gnorm4(self.conv4(h3) + self.dense4(embed)))  # (B, c3, 2, 2)
        h = self.act(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))  # (B, c2, 5, 5)
        h = self.act(self.tgnorm3(self.tconv3(torch.cat([h, h3], 1)) + self.dense6(embed)))  # (B, c1, 12, 12)
        h = self.act(self.tgnorm2(self.tconv2(torch.cat([h, h2], 1)) + self.dense7(embed)))  # (B, c0, 26, 26)
        h = self.tconv1(torch.cat([h, h1], dim=1))  # (B, C, 28, 28)
        return _score_output(h, t, pads, self.sde)


class ResidualScoreUNet(nn.Module):
    """Score UNet with skips *added* instead of concatenated: x [B, C, H, W], t [B] -> [B, C, H, W].

    Source: the score-SDE tutorial's UNet_res (Harvard "stable diffusion from scratch" tutorial).
    Same encoder as ScoreUNet; each decoder input is h + skip, so the transposed convs take half
    the channels. Default config (in_channels=1, channels=(32, 64, 128, 256), embed_dim=256):
    1,022,849 parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        embed_dim: int = 256,
        sde: Any = None,
    ):
        super().__init__()
        c = _check_config(in_channels, channels, 4, embed_dim)
        self.in_channels, self.channels, self.sde = in_channels, c, sde
        self.time_embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, bias=False)
        self.dense1, self.gnorm1 = Dense(embed_dim, c[0]), _gnorm(4, c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 2, bias=False)
        self.dense2, self.gnorm2 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 2, bias=False)
        self.dense3, self.gnorm3 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.conv4 = nn.Conv2d(c[2], c[3], 3, 2, bias=False)
        self.dense4, self.gnorm4 = Dense(embed_dim, c[3]), _gnorm(32, c[3])
        self.tconv4 = nn.ConvTranspose2d(c[3], c[2], 3, 2, bias=False)
        self.dense5, self.tgnorm4 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.tconv3 = nn.ConvTranspose2d(c[2], c[1], 3, 2, bias=False, output_padding=1)
        self.dense6, self.tgnorm3 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.tconv2 = nn.ConvTranspose2d(c[1], c[0], 3, 2, bias=False, output_padding=1)
        self.dense7, self.tgnorm2 = Dense(embed_dim, c[0]), _gnorm(32, c[0])
        self.tconv1 = nn.ConvTranspose2d(c[0], in_channels, 3, 1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        _no_context(context, "ResidualScoreUNet")
        x, t, pads = _prepare(x, t, self.in_channels, smallest=20, step=8)  # shapes below: 28x28 input
        embed = self.act(self.time_embed(t))  # (B, embed_dim)
        h1 = self.act(self.gnorm1(self.conv1(x) + self.dense1(embed)))  # (B, c0, 26, 26)
        h2 = self.act(self.gnorm2(self.conv2(h1) + self.dense2(embed)))  # (B, c1, 12, 12)
        h3 = self.act(self.gnorm3(self.conv3(h2) + self.dense3(embed)))  # (B, c2, 5, 5)
        h4 = self.act(self.gnorm4(self.conv4(h3) + self.dense4(embed)))  # (B, c3, 2, 2)
        h = self.act(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))  # (B, c2, 5, 5)
        h = self.act(self.tgnorm3(self.tconv3(h + h3) + self.dense6(embed)))  # (B, c1, 12, 12)
        h = self.act(self.tgnorm2(self.tconv2(h + h2) + self.dense7(embed)))  # (B, c0, 26, 26)
        h = self.tconv1(h + h1)  # (B, C, 28, 28)
        return _score_output(h, t, pads, self.sde)


class ConditionalScoreUNet(nn.Module):
    """ResidualScoreUNet + cross-attention to a condition at the two lowest resolutions.

    Source: the tutorial's UNet_Tranformer; conditioning by cross-attention as in Rombach et al. 2022.
    Call `model(x, t, context=None)` with x [B, C, H, W], t [B] and context one of
      int64 class ids [B] in 0..num_classes, id `num_classes` (= `model.null_id`) meaning "no label";
      None (every sample gets the null id), for the unconditional half of classifier-free guidance;
      float tokens [B, L, context_dim], only when built with `context_dim` (text-to-image).
    Ids go through an nn.Embedding, tokens through a Linear, both to [B, L, text_dim] (see
    ContextTokens); SpatialTransformers on h3 and h4 cross-attend to them. Default config
    (in_channels=1, channels=(32, 64, 128, 256), embed_dim=256, num_classes=10, text_dim=256):
    2,209,921 parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        embed_dim: int = 256,
        num_classes: int = 10,
        text_dim: int = 256,
        context_dim: Optional[int] = None,
        sde: Any = None,
    ):
        super().__init__()
        c = _check_config(in_channels, channels, 4, embed_dim)
        self.in_channels, self.channels, self.sde = in_channels, c, sde
        self.null_id = num_classes
        self.context_tokens = ContextTokens(num_classes, text_dim, context_dim)
        self.time_embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, bias=False)
        self.dense1, self.gnorm1 = Dense(embed_dim, c[0]), _gnorm(4, c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 2, bias=False)
        self.dense2, self.gnorm2 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 2, bias=False)
        self.dense3, self.gnorm3 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.attn3 = SpatialTransformer(c[2], text_dim)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, 2, bias=False)
        self.dense4, self.gnorm4 = Dense(embed_dim, c[3]), _gnorm(32, c[3])
        self.attn4 = SpatialTransformer(c[3], text_dim)
        self.tconv4 = nn.ConvTranspose2d(c[3], c[2], 3, 2, bias=False)
        self.dense5, self.tgnorm4 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.tconv3 = nn.ConvTranspose2d(c[2], c[1], 3, 2, bias=False, output_padding=1)
        self.dense6, self.tgnorm3 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.tconv2 = nn.ConvTranspose2d(c[1], c[0], 3, 2, bias=False, output_padding=1)
        self.dense7, self.tgnorm2 = Dense(embed_dim, c[0]), _gnorm(32, c[0])
        self.tconv1 = nn.ConvTranspose2d(c[0], in_channels, 3, 1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        x, t, pads = _prepare(x, t, self.in_channels, smallest=20, step=8)  # shapes below: 28x28 input
        tokens = self.context_tokens(context, x.shape[0], x.device).to(x.dtype)  # (B, L, text_dim)
        embed = self.act(self.time_embed(t))  # (B, embed_dim)
        h1 = self.act(self.gnorm1(self.conv1(x) + self.dense1(embed)))  # (B, c0, 26, 26)
        h2 = self.act(self.gnorm2(self.conv2(h1) + self.dense2(embed)))  # (B, c1, 12, 12)
        h3 = self.act(self.gnorm3(self.conv3(h2) + self.dense3(embed)))  # (B, c2, 5, 5)
        h3 = self.attn3(h3, tokens)  # (B, c2, 5, 5)
        h4 = self.act(self.gnorm4(self.conv4(h3) + self.dense4(embed)))  # (B, c3, 2, 2)
        h4 = self.attn4(h4, tokens)  # (B, c3, 2, 2)
        h = self.act(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))  # (B, c2, 5, 5)
        h = self.act(self.tgnorm3(self.tconv3(h + h3) + self.dense6(embed)))  # (B, c1, 12, 12)
        h = self.act(self.tgnorm2(self.tconv2(h + h2) + self.dense7(embed)))  # (B, c0, 26, 26)
        h = self.tconv1(h + h1)  # (B, C, 28, 28)
        return _score_output(h, t, pads, self.sde)


class LatentScoreUNet(nn.Module):
    """Conditional score UNet for autoencoder latents: z [B, 4, h, w], t [B] -> [B, 4, h, w].

    Source: the tutorial's Latent_UNet_Tranformer; latent diffusion, Rombach et al. 2022.
    Three levels (10 -> 8 -> 3 -> 1 and back), sized for the 4 x 10 x 10 latents that
    AutoEncoder() makes of 28x28 digits; sprite latents (4 x 4 x 4) are padded to 10x10.
    Context exactly as ConditionalScoreUNet (class ids with null id `num_classes`, None, or tokens);
    SpatialTransformers at the two lowest resolutions (h2, h3). Default config (in_channels=4,
    channels=(64, 128, 256), embed_dim=256, num_classes=10, text_dim=256): 2,160,516 parameters.
    """

    def __init__(
        self,
        in_channels: int = 4,
        channels: Sequence[int] = (64, 128, 256),
        embed_dim: int = 256,
        num_classes: int = 10,
        text_dim: int = 256,
        context_dim: Optional[int] = None,
        sde: Any = None,
    ):
        super().__init__()
        c = _check_config(in_channels, channels, 3, embed_dim)
        if c[2] < 64:
            # h3 is 1x1 at the smallest latent; GroupNorm(32, c[2]) there needs >= 2 values per group.
            raise ValueError(f"channels[2] must be >= 64 (the 1x1 bottleneck's GroupNorm(32, .) needs 2 channels "
                             f"per group), got channels={tuple(c)}")
        self.in_channels, self.channels, self.sde = in_channels, c, sde
        self.null_id = num_classes
        self.context_tokens = ContextTokens(num_classes, text_dim, context_dim)
        self.time_embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, bias=False)
        self.dense1, self.gnorm1 = Dense(embed_dim, c[0]), _gnorm(4, c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 2, bias=False)
        self.dense2, self.gnorm2 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.attn2 = SpatialTransformer(c[1], text_dim)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 2, bias=False)
        self.dense3, self.gnorm3 = Dense(embed_dim, c[2]), _gnorm(32, c[2])
        self.attn3 = SpatialTransformer(c[2], text_dim)
        self.tconv3 = nn.ConvTranspose2d(c[2], c[1], 3, 2, bias=False)
        self.dense4, self.tgnorm3 = Dense(embed_dim, c[1]), _gnorm(32, c[1])
        self.tconv2 = nn.ConvTranspose2d(c[1], c[0], 3, 2, bias=False, output_padding=1)
        self.dense5, self.tgnorm2 = Dense(embed_dim, c[0]), _gnorm(32, c[0])
        self.tconv1 = nn.ConvTranspose2d(c[0], in_channels, 3, 1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        x, t, pads = _prepare(x, t, self.in_channels, smallest=10, step=4)  # shapes below: 10x10 input
        tokens = self.context_tokens(context, x.shape[0], x.device).to(x.dtype)  # (B, L, text_dim)
        embed = self.act(self.time_embed(t))  # (B, embed_dim)
        h1 = self.act(self.gnorm1(self.conv1(x) + self.dense1(embed)))  # (B, c0, 8, 8)
        h2 = self.act(self.gnorm2(self.conv2(h1) + self.dense2(embed)))  # (B, c1, 3, 3)
        h2 = self.attn2(h2, tokens)  # (B, c1, 3, 3)
        h3 = self.act(self.gnorm3(self.conv3(h2) + self.dense3(embed)))  # (B, c2, 1, 1)
        h3 = self.attn3(h3, tokens)  # (B, c2, 1, 1)
        h = self.act(self.tgnorm3(self.tconv3(h3) + self.dense4(embed)))  # (B, c1, 3, 3)
        h = self.act(self.tgnorm2(self.tconv2(h + h2) + self.dense5(embed)))  # (B, c0, 8, 8)
        h = self.tconv1(h + h1)  # (B, C, 10, 10)
        return _score_output(h, t, pads, self.sde)
