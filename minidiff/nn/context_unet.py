"""ContextUnet: the sprites course's small UNet conditioned on time and a context vector."""

from __future__ import annotations

import os
from typing import Dict, Literal, Optional, Union

import torch
from einops import rearrange
from torch import Tensor, nn

from ..file_io import safe_torch_load
from .blocks import ResidualConvBlock, UnetDown, UnetUp
from .embeddings import EmbedFC, as_time_batch

__all__ = ["ContextUnet"]

CourseShortcut = Literal["zero", "random"]

# state_dict entries whose shapes give the course network's sizes
_SIZE_KEYS = ("init_conv.conv1.0.weight", "contextembed1.model.0.weight", "up0.0.weight")


class _CourseShortcut(nn.Module):
    """The course's init_conv shortcut, which has no weights: [B, in, H, W] -> [B, out, H, W].

    The course's ResidualConvBlock builds `nn.Conv2d(in, out, kernel_size=1, stride=1, padding=0)` inside
    forward() on every call when the channels differ: a fresh random map drawn from the global RNG, never
    trained, never saved. mode "random" makes that same draw (same constructor, on the default device, then
    moved to x's device, as the course does); mode "zero" is its expectation (the init is symmetric about 0),
    the zero map, deterministic.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: CourseShortcut):
        super().__init__()
        self.in_channels, self.out_channels, self.mode = in_channels, out_channels, mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "zero":
            return x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])  # (B, out, H, W)
        fresh = nn.Conv2d(self.in_channels, self.out_channels, kernel_size=1, stride=1, padding=0).to(x.device)
        return fresh.to(x.dtype)(x)  # (B, out, H, W)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, mode={self.mode!r}"


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
    It differs from the course's code on purpose in three places, each so that it computes one fixed,
    trainable function at every height: that shortcut is registered and trained, residual sums are divided
    by sqrt(2) (the course: 1.414), and to_vec pools the whole h/4 x h/4 map (the course's AvgPool2d(4)
    pools a 4x4 corner of it above height 16). `ContextUnet.from_course` loads the course's weights and
    computes exactly as the course does.
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

        up0 = self.up0(hiddenvec)  # (B, 2n, h/4, h/4)
        up1 = self.up1(cemb1 * up0 + temb1, down2)  # (B, n, h/2, h/2)
        up2 = self.up2(cemb2 * up1 + temb2, down1)  # (B, n, h, h)
        return self.out(torch.cat((up2, x), dim=1))  # (B, in_channels, h, h)

    @classmethod
    def from_course(
        cls, source: Union[str, os.PathLike, Dict[str, Tensor]], shortcut: CourseShortcut = "zero"
    ) -> "ContextUnet":
        """The course's trained network, from its saved state_dict, in eval mode.

        source: a path to the course's `.pth` (e.g. `context_model_trained.pth`, read with
          `torch.load(weights_only=True)` onto the CPU) or the state_dict itself.
        shortcut: "zero" (default) or "random", for init_conv's 1x1 shortcut, which the course rebuilds at
          random inside forward() on every call (a bug of the course) and so never saved. "random" makes
          the course's draw exactly: with the same `torch.manual_seed` before a call, the output equals the
          course network's. "zero" uses that draw's expectation, the zero map, and is deterministic.
        Sizes (in_channels, n_feat, n_cfeat, height) are read from the tensors. The returned network's
        state_dict keys are exactly the course's (loaded strictly), and it computes as the course does:
        init_conv divides by 1.414 (not sqrt(2)) and to_vec is the course's AvgPool2d(4), which at
        height 28 pools only the top-left 4x4 of the 7x7 map (at height 16 it pools all of it).
        Sample it with the course's schedule: `md.sample(model, md.NoiseSchedule.course(), (n, 3, 16, 16))`.
        minidiff's own ContextUnet differs on purpose: its shortcut is a registered, trained 1x1 conv.
        """
        if shortcut not in ("zero", "random"):
            raise ValueError(f"shortcut must be 'zero' or 'random', got {shortcut!r}")
        if isinstance(source, (str, os.PathLike)):

            state = safe_torch_load(source, what="course state_dict")
            where = os.fspath(source)
        else:
            state, where = source, "the state_dict"
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"source: {where} is not a state_dict (a dict of name -> tensor)")
        missing = [k for k in _SIZE_KEYS if k not in state]
        if missing:
            raise ValueError(f"source: {where} is not the course's ContextUnet state_dict (no {missing[0]!r})")
        n_feat, in_channels = state["init_conv.conv1.0.weight"].shape[:2]
        n_cfeat = state["contextembed1.model.0.weight"].shape[1]
        height = 4 * state["up0.0.weight"].shape[-1]  # up0's kernel is height // 4
        if height < 16:
            raise ValueError(f"source: height {height} (from up0's kernel) is below 16, where the course's "
                             f"AvgPool2d(4) has nothing to pool")
        model = cls(in_channels=in_channels, n_feat=n_feat, n_cfeat=n_cfeat, height=height)
        model.to_vec = nn.Sequential(nn.AvgPool2d(4), nn.GELU())  # the course's layer, at every height
        model.init_conv.residual_divisor = 1.414  # the course's constant
        if in_channels != n_feat:  # equal channels: the course's shortcut is the identity, as here
            model.init_conv.shortcut = _CourseShortcut(in_channels, n_feat, shortcut)
        try:
            result = model.load_state_dict(state, strict=False)  # strict by hand below: a short message
        except RuntimeError as error:  # a shape that does not fit the inferred sizes
            detail = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"source: {where} is not a consistent course ContextUnet state_dict: {detail}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"source: {where} does not hold the course's ContextUnet keys "
                             f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
        return model.eval()
