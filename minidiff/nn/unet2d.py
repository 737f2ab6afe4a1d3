"""UNet2D: a configurable ResNet + GroupNorm UNet with attention levels (the UNet2DModel family).

Source: Ho et al. 2020 (DDPM) Appendix B, the PixelCNN++-style UNet, in the configurable form that
the Hugging Face diffusion course (unit 1) builds with diffusers' `UNet2DModel`. Our own code, no
diffusers. The network, top to bottom (C = block_out_channels, L = layers_per_block):

    t [B] --sinusoidal(C[0], t*1000)--> Linear -> SiLU -> Linear --> emb [B, 4*C[0]]  (+ class embedding)
    x [B, in, H, W] --conv_in 3x3--> h [B, C[0], H, W]                         skips = [h]
    down, level k = 0 .. K-1:  L x (ResnetBlock(emb) -> attention or nothing),  push h after each
                               then a stride-2 conv3x3 (not at the last level),  push h
    middle:                    ResnetBlock(emb) -> attention -> ResnetBlock(emb)
    up, level k = K-1 .. 0:    (L + 1) x (concat a popped skip -> ResnetBlock(emb) -> attention or nothing)
                               then nearest x2 + conv3x3 (not at level 0)
    out:                       GroupNorm -> SiLU -> conv3x3 --> [B, out, H, W]

The up path pops exactly the skips the down path pushed (1 + K*L + (K-1) of them), last in first out.
The time embedding goes only to the ResNet blocks; attention blocks see only the feature map.

diffusers' time convention (num_train_timesteps=T, flip_sin_to_cos=True): the embedding reads the step
index i = t * T - 1 (t = (i + 1) / T), as diffusers' unet(x, i) does, with cos before sin. With it and
qkv_bias=True a UNet2D computes exactly what a UNet2DModel of the same config computes (diffusers_folder.py
maps the weights' names).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import CrossAttention
from .blocks import ResnetBlock
from .embeddings import SinusoidalEmbedding, as_time_batch

__all__ = ["UNet2D", "AttentionBlock", "ScaleShiftResnetBlock", "Downsample", "Upsample", "BLOCK_TYPES"]

BlockType = Literal["plain", "attention"]
BLOCK_TYPES = ("plain", "attention")


class ScaleShiftResnetBlock(ResnetBlock):
    """ResnetBlock whose time embedding scales and shifts the normalised features (FiLM).

    Source: Nichol & Dhariwal 2021 (improved DDPM), Sec. 3 / Dhariwal & Nichol 2021 "AdaGN":
    (scale, shift) = Linear(SiLU(emb)); h = GN(h) * (1 + scale) + shift, instead of h + Linear(SiLU(emb)).
    Same shapes as ResnetBlock: x [B, in, H, W], emb [B, emb_dim] -> [B, out, H, W]; emb_proj is twice as wide.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 32, dropout: float = 0.0):
        super().__init__(in_channels, out_channels, emb_dim, groups, dropout)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)  # (scale, shift) per channel

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (B, out, H, W)
        scale, shift = rearrange(self.emb_proj(self.act(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift  # (B, out, H, W), time modulates the normalised features
        h = self.conv2(self.dropout(self.act(h)))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """GroupNorm -> multi-head self-attention over the H*W pixels -> residual: [B, C, H, W] -> same.

    Source: Ho et al. 2020 (DDPM) Appendix B (self-attention at 16x16), as in UNet2DModel's Attn blocks.
    The attention itself is minidiff's CrossAttention (q/k/v/out projections; SDPA fast path and an
    einsum reference path, `reference=True`). `head_dim=None` gives one head of width C; otherwise
    C // head_dim heads (diffusers' `attention_head_dim`, default 8).
    """

    def __init__(self, channels: int, groups: int = 32, head_dim: Optional[int] = 8, qkv_bias: bool = False):
        super().__init__()
        if head_dim is not None and (head_dim < 1 or channels % head_dim != 0):
            raise ValueError(f"attention_head_dim={head_dim} must divide the attention channels {channels}")
        heads = 1 if head_dim is None else channels // head_dim
        self.channels = channels
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = CrossAttention(channels, None, heads=heads, dim_head=channels // heads, qkv_bias=qkv_bias)

    def forward(self, x: Tensor, reference: bool = False) -> Tensor:
        _, _, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, H*W, C): one token per pixel
        out = self.attn(tokens, reference=reference)  # (B, H*W, C)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)  # (B, C, H, W)


class Downsample(nn.Module):
    """Learnable 2x down-sampling, a stride-2 conv3x3: [B, C, H, W] -> [B, C, H/2, W/2]. Source: DDPM App. B."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3: [B, C, H, W] -> [B, C, 2H, 2W]. Source: DDPM App. B."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `resnets[j]` then `attentions[j]` (Identity when plain), then `resample` (or None)."""

    def __init__(self, resnets: list, attentions: list, resample: Optional[nn.Module]):
        super().__init__()
        self.resnets, self.attentions, self.resample = nn.ModuleList(resnets), nn.ModuleList(attentions), resample


class UNet2D(nn.Module):
    """A configurable UNet predicting eps (or x0 / v) from a noisy image, time and an optional class.

    Source: Ho et al. 2020 (DDPM) App. B; the configuration space of diffusers' UNet2DModel (HF course, unit 1).
    Call `model(x, t, context=None)`:
      x       [B, in_channels, H, W]   H and W divisible by 2^(levels - 1)
      t       [B] float in (0, 1]      discrete step i as (i + 1) / T; embedded as t * time_scale (1000),
                                       or as i = t * T - 1 with num_train_timesteps=T (diffusers' convention)
      context [B] int64 class ids in 0..num_class_embeds, or None (= the null id); only with num_class_embeds
      returns [B, out_channels, H, W]

    Config (each a plain value, so a checkpoint can rebuild the model from its kwargs):
      block_out_channels  channels per resolution level, level 0 = full resolution
      block_types         per level "plain" (ResNet blocks only) or "attention" (each followed by self-attention),
                          used for both the down and the up side of that level. diffusers' course config
                          ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D") / ("AttnUpBlock2D",
                          "AttnUpBlock2D", "UpBlock2D") is block_types=("plain", "attention", "attention").
      layers_per_block    ResNet blocks per level going down (L + 1 going up: one per skip)
      norm_groups         GroupNorm groups everywhere (must divide every channel count)
      attention_head_dim  width of an attention head (None: one head); mid_attention: attention in the middle
      time_scale_shift    False: emb added to the features; True: emb scales and shifts them (ScaleShiftResnetBlock)
      num_class_embeds    None (unconditional) or the number of classes; id num_class_embeds = `null_id`,
                          the "no class" id for classifier-free guidance (context=None uses it too)
      qkv_bias            biases on the attention's q, k and v projections (diffusers' Attention has them)
      num_train_timesteps None: embed t * time_scale; T: embed the step index i = t * T - 1 (diffusers)
      flip_sin_to_cos, freq_shift   the sinusoidal embedding's layout (diffusers' Timesteps options)

    Default config = the course's (in 1, out 1, (32, 64, 64), plain/attention/attention, L = 2):
    1,704,897 parameters; with qkv_bias=True, diffusers' 1,707,009 (as the course prints it): the difference is
    the q, k and v biases (11 attention blocks). Without them nothing much is lost: the k bias cannot change
    the softmax and the v bias is absorbed by the out bias (attention rows sum to 1), so only the q
    biases are real capacity. The course's 32x32 RGB butterflies net, UNet2D(3, block_out_channels=(64, 128,
    128, 256), block_types=("plain", "plain", "attention", "attention")): 18,529,795 (diffusers: 18,536,323).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: Optional[int] = None,  # None: same as in_channels
        block_out_channels: Sequence[int] = (32, 64, 64),  # the course's 28x28 digits net
        block_types: Sequence[BlockType] = ("plain", "attention", "attention"),
        layers_per_block: int = 2,  # DDPM and diffusers use 2
        norm_groups: int = 32,  # GroupNorm(32, C), as in DDPM
        dropout: float = 0.0,  # in every ResNet block (DDPM used 0.1 on CIFAR-10)
        attention_head_dim: Optional[int] = 8,  # diffusers' default; None = single-head
        mid_attention: bool = True,
        time_scale_shift: bool = False,
        num_class_embeds: Optional[int] = None,
        time_scale: float = 1000.0,  # t in (0, 1] -> DDPM step units for the sinusoidal embedding
        qkv_bias: bool = False,  # True: diffusers' attention (biases on q, k and v)
        num_train_timesteps: Optional[int] = None,  # T: embed the step index i = t * T - 1 (diffusers)
        flip_sin_to_cos: bool = False,  # diffusers' UNet2DModel: True (cos half first)
        freq_shift: float = 0.0,  # diffusers' downscale_freq_shift (UNet2DModel: 0)
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channels = tuple(int(c) for c in block_out_channels)
        block_types = tuple(block_types)
        _check_config(in_channels, out_channels, channels, block_types, layers_per_block, norm_groups,
                      num_class_embeds)
        self.in_channels, self.out_channels, self.block_out_channels = in_channels, out_channels, channels
        self.block_types, self.layers_per_block = block_types, layers_per_block
        self.num_class_embeds = num_class_embeds
        self.null_id = num_class_embeds  # None for an unconditional net
        if num_train_timesteps is not None and (not isinstance(num_train_timesteps, int) or num_train_timesteps < 1):
            raise ValueError(f"num_train_timesteps must be None or an int >= 1, got {num_train_timesteps!r}")
        self.num_train_timesteps = num_train_timesteps
        self.mid_attention_on, self.time_scale_shift, self.qkv_bias = mid_attention, time_scale_shift, qkv_bias
        self.norm_groups, self.attention_head_dim, self.dropout_p = norm_groups, attention_head_dim, dropout
        levels, emb_dim, groups = len(channels), 4 * channels[0], norm_groups
        Resnet = ScaleShiftResnetBlock if time_scale_shift else ResnetBlock

        def resnet(c_in: int, c_out: int) -> nn.Module:
            return Resnet(c_in, c_out, emb_dim, groups=groups, dropout=dropout)

        def attention(kind: str, c: int) -> nn.Module:
            return AttentionBlock(c, groups, attention_head_dim, qkv_bias) if kind == "attention" else nn.Identity()

        # time (and class) embedding: [B] -> [B, emb_dim]
        self.time_embed = SinusoidalEmbedding(channels[0], time_scale=time_scale if num_train_timesteps is None
                                              else 1.0, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift)
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = None if num_class_embeds is None else nn.Embedding(num_class_embeds + 1, emb_dim)

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        # down: track the channels of every pushed skip, so the up side knows what it will pop
        skip_channels = [channels[0]]
        self.down = nn.ModuleList()
        c_prev = channels[0]
        for k, (c, kind) in enumerate(zip(channels, block_types)):
            resnets, attentions = [], []
            for _ in range(layers_per_block):
                resnets.append(resnet(c_prev, c))
                attentions.append(attention(kind, c))
                skip_channels.append(c)
                c_prev = c
            last = k == levels - 1
            self.down.append(_Level(resnets, attentions, None if last else Downsample(c)))
            if not last:
                skip_channels.append(c)

        # middle, at the lowest resolution
        self.mid_resnet1 = resnet(c_prev, c_prev)
        self.mid_attention = attention("attention" if mid_attention else "plain", c_prev)
        self.mid_resnet2 = resnet(c_prev, c_prev)

        # up: level K-1 first; each ResNet block takes the concatenation [h, popped skip]
        self.up = nn.ModuleList()
        for k in reversed(range(levels)):
            c, kind = channels[k], block_types[k]
            resnets, attentions = [], []
            for _ in range(layers_per_block + 1):
                resnets.append(resnet(c_prev + skip_channels.pop(), c))
                attentions.append(attention(kind, c))
                c_prev = c
            self.up.append(_Level(resnets, attentions, None if k == 0 else Upsample(c)))

        self.norm_out = nn.GroupNorm(groups, channels[0])
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    def embed(self, t: Tensor, context: Optional[Tensor], batch_size: int) -> Tensor:
        """Time (+ class) embedding: t [B], context [B] int64 or None -> [B, 4 * block_out_channels[0]]."""
        if self.num_train_timesteps is not None:
            t = step_index(t, self.num_train_timesteps)  # diffusers' convention: the index i itself
        emb = self.time_mlp(self.time_embed(t))  # (B, emb_dim)
        if self.class_embed is None:
            if context is not None:
                raise ValueError("context (class ids) given, but the model was built without num_class_embeds")
            return emb
        if context is None:
            context = torch.full((batch_size,), self.null_id, dtype=torch.long, device=t.device)
        if context.is_floating_point() or context.shape != (batch_size,):
            raise ValueError(f"context must be int64 class ids of shape ({batch_size},), "
                             f"got {context.dtype} {tuple(context.shape)}")
        # range check on CPU only: on a GPU it would cost a device sync in every sampling step
        if context.device.type == "cpu" and (int(context.min()) < 0 or int(context.max()) > self.null_id):
            raise ValueError(f"context ids must lie in 0..{self.null_id} ({self.null_id} = null id)")
        return emb + self.class_embed(context)  # (B, emb_dim)

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        self._check_input(x)
        B = x.shape[0]
        emb = self.embed(as_time_batch(t, B, x), context, B)  # (B, 4 * C[0])

        h = self.conv_in(x)  # (B, C[0], H, W)
        skips = [h]
        for level in self.down:  # (B, C[k], H/2^k, W/2^k)
            for resnet, attention in zip(level.resnets, level.attentions):
                h = attention(resnet(h, emb))
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C[k], H/2^(k+1), W/2^(k+1))
                skips.append(h)

        h = self.mid_resnet2(self.mid_attention(self.mid_resnet1(h, emb)), emb)  # (B, C[-1], H/2^(K-1), ...)

        for level in self.up:  # level K-1 first
            for resnet, attention in zip(level.resnets, level.attentions):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, c_h + c_skip, h, w)
                h = attention(resnet(h, emb))  # (B, C[k], h, w)
            if level.resample is not None:
                h = level.resample(h)  # (B, C[k], 2h, 2w)

        return self.conv_out(self.act(self.norm_out(h)))  # (B, out_channels, H, W)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x's height and width must be divisible by 2^(levels - 1) = {factor} "
                             f"({len(self.block_out_channels)} levels), got {tuple(x.shape[2:])}")


def step_index(t: Tensor, T: int) -> Tensor:
    """t = (i + 1) / T -> i = t * T - 1: [B] -> [B] (same dtype). Within 1e-6 * T of an integer (float32 rounding
    of t) it is that integer exactly, so the embedding sees diffusers' integer timestep; other (fractional)
    steps, as on the karras grid, stay fractional."""
    i = t.float() * T - 1
    nearest = i.round()
    return torch.where((i - nearest).abs() <= 1e-6 * T, nearest, i).to(t.dtype)


def _check_config(in_channels, out_channels, channels, block_types, layers_per_block, norm_groups,
                  num_class_embeds) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("layers_per_block", layers_per_block), ("norm_groups", norm_groups)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ValueError(f"block_out_channels must be a non-empty sequence of ints >= 1, got {channels}")
    if len(block_types) != len(channels):
        raise ValueError(f"block_types must have one entry per level: len(block_out_channels) = {len(channels)}, "
                         f"got {len(block_types)} ({block_types})")
    for kind in block_types:
        if kind not in BLOCK_TYPES:
            raise ValueError(f"block_types entries must be one of {BLOCK_TYPES} (diffusers' DownBlock2D/UpBlock2D = "
                             f"'plain', AttnDownBlock2D/AttnUpBlock2D = 'attention'), got {kind!r}")
    for c in channels:
        if c % norm_groups:
            raise ValueError(f"norm_groups={norm_groups} must divide every block_out_channels entry, got {channels}")
    if num_class_embeds is not None and (not isinstance(num_class_embeds, int) or num_class_embeds < 1):
        raise ValueError(f"num_class_embeds must be None or an int >= 1, got {num_class_embeds!r}")
