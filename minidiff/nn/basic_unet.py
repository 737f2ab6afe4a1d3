"""The Hugging Face diffusion course's first toy: a minimal UNet that un-corrupts images.

Unit 1, "Diffusion Models from Scratch", before any DDPM machinery:
  - `corrupt(x, amount)`:  mix each image with uniform noise, `amount` in [0, 1] per image;
  - `BasicUNet`:           three convs down (max-pool), three up (upsample), skips added, SiLU;
                           trained with MSE to predict the CLEAN image x0 from the corrupted one;
  - `naive_sample`:        start from uniform noise and, at step i of n, move 1 / (n - i) of the
                           way towards the network's prediction (the last step lands on it).

Pixel range. The course works in [0, 1] with noise ~ U[0, 1); minidiff images live in [-1, 1]
(y = 2x - 1). Mixing is affine, so it commutes with that map exactly:
    2 * (x (1 - a) + u a) - 1 = y (1 - a) + (2u - 1) a,   2u - 1 ~ U[-1, 1).
`corrupt` and `naive_sample` therefore take `value_range`: the noise is uniform over the images' own
range, (-1, 1) by default (minidiff), (0, 1) for the course's numbers. The network is different:
BasicUNet ends with a SiLU, whose minimum is -0.278, so it cannot output minidiff's black (-1).
The lesson (examples/unet_from_zero.py) therefore runs the toy in the course's [0, 1] range and maps
to [-1, 1] only to save pictures; MSE values in [-1, 1] units would be 4 times larger.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..tensors import per_sample

__all__ = ["BasicUNet", "corrupt", "naive_sample"]


ValueRange = Tuple[float, float]


def _uniform_noise(shape, value_range: ValueRange, generator: Optional[torch.Generator], device, dtype) -> Tensor:
    """Uniform noise on [low, high): the course's torch.rand, stretched over the images' range."""
    low, high = value_range
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    gen_device = generator.device if generator is not None else device
    return (low + (high - low) * torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)).to(device)


def corrupt(x: Tensor, amount: Union[Tensor, float], noise: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None, value_range: ValueRange = (-1.0, 1.0)) -> Tensor:
    """x * (1 - amount) + noise * amount, noise ~ U[low, high): the course's corruption.

    x: [B, C, H, W] with values in value_range ((-1, 1): minidiff; (0, 1): the course);
    amount: a float or [B] in [0, 1] (one amount per image); noise: [B, C, H, W], drawn uniformly over
    value_range with `generator` when not given. Returns [B, C, H, W], still in value_range.
    amount = 0 returns x; amount = 1 returns pure noise.
    """
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device)
    if amount.ndim == 0:
        amount = amount.expand(x.shape[0])
    if amount.shape != (x.shape[0],):
        raise ValueError(f"amount must be a float or a tensor of shape ({x.shape[0]},), got {tuple(amount.shape)}")
    if noise is None:
        noise = _uniform_noise(x.shape, value_range, generator, x.device, x.dtype)
    amount = per_sample(amount, x)  # (B, 1, 1, 1): broadcast over C, H, W
    return x * (1 - amount) + noise * amount


class BasicUNet(nn.Module):
    """The course's minimal UNet: 3 convs down, 3 up, skip ADDED, SiLU. [B, in, H, W] -> [B, out, H, W].

    Source: Hugging Face diffusion-models-class, unit 1 "Diffusion Models from Scratch", layer for layer.
    Call `model(x, t=None, context=None)`: `t` and `context` are accepted so the net fits minidiff's
    interface, and IGNORED: the toy has no timestep conditioning; it must guess how corrupted x is.
    H and W must be divisible by 4 (two 2x max-pools). Default config (in 1, out 1): 309,057 parameters.

    Shapes at 28x28 grey:
      down0 conv5x5 1->32   [B, 32, 28, 28]  push, pool -> 14x14
      down1 conv5x5 32->64  [B, 64, 14, 14]  push, pool -> 7x7
      down2 conv5x5 64->64  [B, 64, 7, 7]
      up0   conv5x5 64->64  [B, 64, 7, 7]
      up1   upsample, + pop [B, 64, 14, 14] -> conv5x5 64->32 [B, 32, 14, 14]
      up2   upsample, + pop [B, 32, 28, 28] -> conv5x5 32->out [B, out, 28, 28]
    SiLU follows every conv, the last one too, as in the course: outputs are >= -0.278, fine for the
    course's [0, 1] images, not for minidiff's [-1, 1] (see the module docstring: train it in [0, 1]).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.down_layers = nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
        ])
        self.up_layers = nn.ModuleList([
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, out_channels, kernel_size=5, padding=2),
        ])
        self.act = nn.SiLU()
        self.downscale = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2)

    def forward(self, x: Tensor, t: Optional[Tensor] = None, context: Optional[Tensor] = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"x's height and width must be divisible by 4 (two max-pools), got {tuple(x.shape[2:])}")
        skips = []
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))
            if i < 2:  # every level but the lowest: keep for the skip, then halve the resolution
                skips.append(x)
                x = self.downscale(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:  # every level but the lowest: double the resolution, then ADD the skip
                x = self.upscale(x)
                x = x + skips.pop()
            x = self.act(layer(x))
        return x


@torch.no_grad()
def naive_sample(model: nn.Module, shape: Sequence[int], n_steps: int = 5, generator: Optional[torch.Generator] = None,
                 x: Optional[Tensor] = None, value_range: ValueRange = (-1.0, 1.0),
                 device=None) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The course's naive iterative sampler for an x0-predicting net. Returns (x, xs, preds).

    x starts as uniform noise over value_range ((-1, 1) minidiff, (0, 1) the course) of `shape`
    [B, C, H, W], or as the given `x`; for i = 0 .. n-1:
        pred = model(x);  mix_factor = 1 / (n - i);  x = x * (1 - mix_factor) + pred * mix_factor
    Early steps trust the prediction little, the last step (mix_factor = 1) returns the prediction.
    xs[i] is the input of step i and preds[i] its prediction, each [B, C, H, W] on the CPU.
    There is no schedule and no noise: compare `minidiff.sample`, which does both properly.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if device is None:
        device = next(model.parameters()).device
    if x is None:
        x = _uniform_noise(tuple(shape), value_range, generator, device, torch.float32)
    x = x.to(device)
    was_training = model.training
    model.eval()
    xs, preds = [], []
    try:
        for i in range(n_steps):
            pred = model(x)  # the net's guess of the clean image
            xs.append(x.cpu())
            preds.append(pred.cpu())
            mix_factor = 1 / (n_steps - i)  # 1/n, 1/(n-1), ..., 1/2, 1
            x = x * (1 - mix_factor) + pred * mix_factor
    finally:
        model.train(was_training)
    return x, xs, preds
