"""ContextUnet: the sprites course's small UNet conditioned on time and a context vector."""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from .blocks import ResidualConvBlock, UnetDown, UnetUp
from .embeddings import EmbedFC, as_time_batch

__all__ = ["ContextUnet"]


class ContextUnet(nn.Module):
    """UNet predicting the noise in x, given time t and an optional context vector.

    Source: the DeepLearning.AI "How Diffusion Models Work" course (sprites), module for module.
    Call `model(x, t, context=None)`:
      x       [B, in_channels, height, height]  noisy images
      t       [B] float in (0, 1]                discrete step i passed as (i + 1) / T
      context [B, n_cfeat] float or None         one-hot labels or mixtures; None = all zeros = no context
      returns [B, in_channels, height, height]   (the predicted noise, for an eps-trained model)
    `height` must be divisible by 4 (two 2x down-samplings). Default config (in_channels=3,
    n_feat=64, n_cfeat=5, height=16, the course's): 1,481,027 parameters, 256 of them init_conv's
    1x1 shortcut, which the course's code instead rebuilds at random on every call.
    Works as is for 28x28 grey digits: ContextUnet(in_channels=1, n_feat=64, n_cfeat=10, height=28),
    2,020,225 parameters (up0's kernel grows from 4x4 to 7x7).

    Shapes through the net (h = height, n = n_feat):
      init_conv  [B, n, h, h] -> down1 [B, n, h/2, h/2] -> down2 [B, 2n, h/4, h/4]
      to_vec     [B, 2n, 1, 1] -> up0 [B, 2n, h/4, h/4]
      up1( cemb1 * up0 + temb1, down2 ) [B, n, h/2, h/2]
      up2( cemb2 * up1 + temb2, down1 ) [B, n, h, h]
      out( cat(up2, init_conv) )        [B, in_channels, h, h]
    The context embeddings *multiply* and the time embeddings *add* into the up path.
    """

    def __init__(self, in_channels: int = 3, n_feat: int = 64, n_cfeat: int = 5, height: int = 16):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("n_feat", n_feat), ("n_cfeat", n_cfeat)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if n_feat % 8 != 0:
            raise ValueError(f"n_feat must be a multiple of 8 (GroupNorm with 8 groups), got {n_feat}")
        if height < 4 or height % 4 != 0:
            raise ValueError(f"height must be a positive multiple of 4 (two 2x down-samplings), got {height}")
        self.in_channels, self.n_feat, self.n_cfeat, self.height = in_channels, n_feat, n_cfeat, height

        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1 = UnetDown(n_feat, n_feat)
        self.down2 = UnetDown(n_feat, 2 * n_feat)
        # The course writes AvgPool2d(4), which pools the whole h/4 x h/4 map only at height 16;
        # AvgPool2d(h // 4) is the same layer there and pools the whole 7x7 map at height 28.
        self.to_vec = nn.Sequential(nn.AvgPool2d(height // 4), nn.GELU())

        self.timeembed1 = EmbedFC(1, 2 * n_feat)
        self.timeembed2 = EmbedFC(1, n_feat)
        self.contextembed1 = EmbedFC(n_cfeat, 2 * n_feat)
        self.contextembed2 = EmbedFC(n_cfeat, n_feat)

        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, height // 4, height // 4),  # 1x1 -> h/4 x h/4
            nn.GroupNorm(8, 2 * n_feat),
            nn.ReLU(),
        )
        self.up1 = UnetUp(4 * n_feat, n_feat)
        self.up2 = UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(
            nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1),
            nn.GroupNorm(8, n_feat),
            nn.ReLU(),
            nn.Conv2d(n_feat, in_channels, 3, 1, 1),
        )

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        expected = (self.in_channels, self.height, self.height)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor (images in [-1, 1]), got dtype {x.dtype}")
        b = x.shape[0]
        t = as_time_batch(t, b, like=x)  # (B,)
        if context is None:  # all zeros means "no context"
            context = torch.zeros(b, self.n_cfeat, device=x.device, dtype=x.dtype)
        if tuple(context.shape) != (b, self.n_cfeat):
            raise ValueError(f"context must have shape ({b}, {self.n_cfeat}), got {tuple(context.shape)}")
        context = context.to(x.dtype)

        x = self.init_conv(x)  # (B, n, h, h)
        down1 = self.down1(x)  # (B, n, h/2, h/2)
        down2 = self.down2(down1)  # (B, 2n, h/4, h/4)
        hiddenvec = self.to_vec(down2)  # (B, 2n, 1, 1)

        cemb1 = rearrange(self.contextembed1(context), "b c -> b c 1 1")  # (B, 2n, 1, 1)
        temb1 = rearrange(self.timeembed1(t), "b c -> b c 1 1")  # (B, 2n, 1, 1)
        cemb2 = rearrange(self.contextembed2(context), "b c -> b c 1 1")  # (B, n, 1, 1)
        temb2 = rearrange(self.timeembed2(t), "b c -> b c 1 1")  # (B, n, 1, 1)

        up1 = self.up0(hiddenvec)  # (B, 2n, h/4, h/4)
        up2 = self.up1(cemb1 * up1 + temb1, down2)  # (B, n, h/2, h/2)
        up3 = self.up2(cemb2 * up2 + temb2, down1)  # (B, n, h, h)
        return self.out(torch.cat((up3, x), dim=1))  # (B, in_channels, h, h)
