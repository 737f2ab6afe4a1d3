"""AutoEncoder for latent diffusion: images <-> small latent maps, and an offline reconstruction loss.

Latent diffusion (Rombach et al. 2022) trains the diffusion model on latents z = encode(x) instead
of pixels and decodes its samples with decode(z). This autoencoder is the small convolutional one of
the score-SDE "stable diffusion from scratch" tutorial, with an optional variational bottleneck.

Image range: minidiff images live in [-1, 1]. The tutorial's decoder ends in a sigmoid (range
[0, 1], for MNIST in [0, 1]); here the decoder returns 2 * sigmoid(h) - 1 (= tanh(h / 2)), so
decode(encode(x)) is in the same [-1, 1] range as x.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AutoEncoder", "reconstruction_loss", "edge_loss"]


class AutoEncoder(nn.Module):
    """Convolutional autoencoder: x [B, C, H, W] in [-1, 1] <-> z [B, latent_channels, H/2 - 4, W/2 - 4].

    Source: the score-SDE tutorial's AutoEncoder (unpadded convs: 28 -> 26 -> 12 -> 10 and back);
    variational option after Kingma & Welling 2014 (Eq. 10 for the KL, Sec. 2.4 reparameterisation).
    H and W must be even and >= 10. Documented sizes:
      28x28 digits  (in_channels=1): latent [B, 4, 10, 10]  (tutorial)
      16x16 sprites (in_channels=3): latent [B, 4, 4, 4]    (raise latent_channels to keep more detail)
    Deterministic (variational=False): the encoder ends in a BatchNorm without affine parameters, so
    latents are standardised per channel, the scale a N(0, I) diffusion prior expects.
    Variational (variational=True): the encoder outputs a mean and a log-variance per latent; latents
    are pulled towards N(0, I) by the KL term that forward() returns.

    API: encode(x, sample=False, generator=None) -> z; decode(z) -> x_hat in [-1, 1];
    forward(x) -> x_hat, or (x_hat, kl [B]) when variational; encode_moments(x) -> (mean, logvar);
    latent_shape(height, width) -> (latent_channels, h, w).
    Default config (in_channels=1, latent_channels=4, variational=False, channels=(32, 64)):
    42,629 parameters; with variational=True: 44,937.
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        variational: bool = False,
        channels: Sequence[int] = (32, 64),
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        c = tuple(int(w) for w in channels)
        if len(c) != 2 or min(c) < 1:
            raise ValueError(f"channels must be two positive widths, got {c}")
        self.in_channels, self.latent_channels, self.variational = in_channels, latent_channels, variational
        # the variational encoder outputs mean and log-variance, stacked on the channel axis
        out = 2 * latent_channels if variational else latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 3, stride=1),  # (B, c0, H-2, W-2)         28 -> 26
            nn.BatchNorm2d(c[0]),
            nn.SiLU(),
            nn.Conv2d(c[0], c[1], 3, stride=2),  # (B, c1, H/2-2, W/2-2)             26 -> 12
            nn.BatchNorm2d(c[1]),
            nn.SiLU(),
            nn.Conv2d(c[1], out, 3, stride=1),  # (B, out, H/2-4, W/2-4)            12 -> 10
            nn.Identity() if variational else nn.BatchNorm2d(latent_channels, affine=False),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent_channels, c[1], 3, stride=1),  # (B, c1, H/2-2, W/2-2)   10 -> 12
            nn.BatchNorm2d(c[1]),
            nn.SiLU(),
            nn.ConvTranspose2d(c[1], c[0], 3, stride=2, output_padding=1),  # (B, c0, H-2, W-2)   12 -> 26
            nn.BatchNorm2d(c[0]),
            nn.SiLU(),
            nn.ConvTranspose2d(c[0], in_channels, 3, stride=1),  # (B, C, H, W)   26 -> 28
        )

    def latent_shape(self, height: int, width: Optional[int] = None) -> tuple[int, int, int]:
        """(latent_channels, h, w) of the latent of an image of size height x width."""
        width = height if width is None else width
        return (self.latent_channels, height // 2 - 4, width // 2 - 4)

    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Variational only: x [B, C, H, W] -> (mean, logvar), each [B, latent_channels, h, w]."""
        if not self.variational:
            raise ValueError("encode_moments needs AutoEncoder(variational=True); use encode(x)")
        mean, logvar = self._encode(x).chunk(2, dim=1)  # 2 x (B, latent, h, w)
        return mean, logvar.clamp(-30.0, 20.0)  # keep exp(logvar) finite

    @staticmethod
    def reparameterize(mean: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a differentiable sample (Kingma & Welling 2.4)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def encode(self, x: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """x [B, C, H, W] -> z [B, latent_channels, H/2 - 4, W/2 - 4].

        Variational: the mean, or a sample from N(mean, exp(logvar)) when `sample=True`.
        """
        if not self.variational:
            return self._encode(x)
        mean, logvar = self.encode_moments(x)
        return self.reparameterize(mean, logvar, generator) if sample else mean

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent_channels, h, w] -> x_hat [B, C, 2h + 8, 2w + 8] in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"z must have shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return 2 * torch.sigmoid(self.decoder(z)) - 1  # the tutorial's sigmoid, mapped to [-1, 1]

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None):
        """x -> x_hat; variational: x -> (x_hat, kl [B]), sampling z in training mode, z = mean in eval."""
        if not self.variational:
            return self.decode(self._encode(x))
        mean, logvar = self.encode_moments(x)
        z = self.reparameterize(mean, logvar, generator) if self.training else mean
        # KL( N(mean, exp(logvar)) || N(0, I) ), summed over latent entries (Kingma & Welling, Eq. 10)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)  # (B,)
        return self.decode(z), kl

    def _encode(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor (images in [-1, 1]), got dtype {x.dtype}")
        h, w = x.shape[2:]
        if h % 2 or w % 2 or h < 10 or w < 10:
            raise ValueError(f"x's height and width must be even and >= 10, got {h}x{w}")
        return self.encoder(x)


def edge_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean |d x_hat - d x| over horizontal and vertical finite differences: penalises blurred edges."""
    dx = (x_hat[..., :, 1:] - x_hat[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])  # (B, C, H, W-1)
    dy = (x_hat[..., 1:, :] - x_hat[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])  # (B, C, H-1, W)
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def reconstruction_loss(x_hat: Tensor, x: Tensor, edge_weight: float = 1.0) -> Tensor:
    """L1 + edge_weight * edge loss between a reconstruction and its image (both [B, C, H, W]); a scalar.

    The offline stand-in for LPIPS (Zhang et al. 2018), which latent diffusion's autoencoders train
    with but which needs downloaded network weights. Pure L1/MSE rewards blur; matching the image's
    finite-difference gradients as well keeps edges sharp, which is most of what LPIPS buys on small
    images. Needs no weights and no network.
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have one shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    return F.l1_loss(x_hat, x) + edge_weight * edge_loss(x_hat, x)
