"""Convolutional building blocks of the UNets.

- `ResidualConvBlock`, `UnetDown`, `UnetUp`: the sprites course's blocks (BatchNorm + GELU), used by
  `ContextUnet`.
- `ResnetBlock`: the GroupNorm ResNet block with a time-embedding injection used by larger UNets
  (DDPM, improved-diffusion, latent diffusion).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["ResidualConvBlock", "UnetDown", "UnetUp", "ResnetBlock"]


def _check_channels(**channels: int) -> None:
    for name, value in channels.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class ResidualConvBlock(nn.Module):
    """(conv3x3 -> BatchNorm -> GELU) twice, optionally residual: [B, in, H, W] -> [B, out, H, W].

    Source: the DeepLearning.AI "How Diffusion Models Work" course (sprites).
    With `is_res=True` the block returns (shortcut(x) + h) / sqrt(2), which keeps the variance of
    the sum near that of its two (roughly independent, unit-variance) terms. The shortcut is the
    identity when in_channels == out_channels and a learned 1x1 convolution otherwise.
    `residual_divisor` is sqrt(2); `ContextUnet.from_course` sets the course's 1.414.
    """

    def __init__(self, in_channels: int, out_channels: int, is_res: bool = False):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        self.is_res = is_res
        self.residual_divisor = math.sqrt(2)  # the course divides by 1.414
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU()
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU()
        )
        # The course builds a *fresh random* nn.Conv2d inside forward() on every call when the channels
        # differ: a bug (the shortcut is never trained, never saved, and changes every call). Here it is
        # a registered module, so it is trained, lives in state_dict() and is deterministic.
        if is_res and in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.conv1(x))  # (B, out, H, W)
        if self.is_res:
            return (self.shortcut(x) + h) / self.residual_divisor
        return h


class UnetDown(nn.Module):
    """Two ResidualConvBlocks then a 2x2 max-pool: [B, in, H, W] -> [B, out, H/2, W/2].

    Source: the DeepLearning.AI "How Diffusion Models Work" course (sprites).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        self.model = nn.Sequential(
            ResidualConvBlock(in_channels, out_channels),
            ResidualConvBlock(out_channels, out_channels),
            nn.MaxPool2d(2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class UnetUp(nn.Module):
    """Concatenate the skip, upsample x2 with a transposed conv, two ResidualConvBlocks.

    Source: the DeepLearning.AI "How Diffusion Models Work" course (sprites).
    x [B, c_x, H, W] and skip [B, c_s, H, W] with c_x + c_s = in_channels -> [B, out, 2H, 2W].
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 2, 2),
            ResidualConvBlock(out_channels, out_channels),
            ResidualConvBlock(out_channels, out_channels),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.model(torch.cat((x, skip), dim=1))  # (B, in, H, W) -> (B, out, 2H, 2W)


class ResnetBlock(nn.Module):
    """GroupNorm ResNet block with time injection: x [B, in, H, W], emb [B, emb_dim] -> [B, out, H, W].

    Source: Ho et al. 2020 (DDPM) Appendix B, as in improved-diffusion and latent diffusion.
    h = conv(SiLU(GN(x))); h += Linear(SiLU(emb)) broadcast over H, W; h = conv(dropout(SiLU(GN(h))));
    return shortcut(x) + h, the shortcut a 1x1 conv when channels differ.
    `groups` must divide both channel counts; dropout is active only in training mode.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 32, dropout: float = 0.0
    ):
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels, emb_dim=emb_dim)
        for name, c in (("in_channels", in_channels), ("out_channels", out_channels)):
            if c % groups != 0:
                raise ValueError(f"groups={groups} must divide {name}={c} (GroupNorm)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (B, out, H, W)
        h = h + rearrange(self.emb_proj(self.act(emb)), "b c -> b c 1 1")  # time injected per channel
        h = self.conv2(self.dropout(self.act(self.norm2(h))))  # (B, out, H, W)
        return self.shortcut(x) + h
