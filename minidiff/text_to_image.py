"""Text-to-image, Stable Diffusion at sprite scale: every part minidiff's own.

    pipe = TextToImage.load_pretrained("outputs/text_to_sprite/pipeline")
    images = pipe(["red hero with a sword", "green apple with a leaf"], steps=25, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0))           # [2, 3, 16, 16] in [-1, 1]

The path of a prompt (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3 and Fig. 3):

    prompt --Tokenizer--> ids [B, L] --TextEncoder--> context [B, L, D]                      (text.py)
    noise z_T [B, 4, 8, 8] --DDIM / DPM-Solver++ on the LatentScoreUNet, which cross-attends to the
        context in its SpatialTransformers, with classifier-free guidance against the encoding of ""
        (Ho & Salimans 2022, Eq. 6)--> z_0 --(/ latent_scale)--> AutoEncoder.decode --> image

Latents. The AutoEncoder's unpadded convolutions turn an H x H image into an (H/2 - 4)^2 latent:
a 16x16 sprite into 4x4, too coarse to keep a sprite's details. The pipeline replicate-pads the
sprites by `image_padding` = 4 pixels on each side (24x24, the background colour extended) to get
8 x 8 latents, and crops the decoded 24x24 image back to 16x16. The latents are multiplied by
`latent_scale` = 1 / std(latents), measured on the training set after the autoencoder is trained
(Stable Diffusion's 0.18215 is the same number for its autoencoder; Rombach et al. Sec. 4.3.2), so
the diffusion model sees data of unit variance, the scale its N(0, I) prior assumes. Latents are
not images: no clipping of x0 to [-1, 1] while sampling.

Training (examples/text_to_sprite.py): the autoencoder first, alone; then the UNet and the text
encoder together as one TextConditionedUNet, on the scaled latents, with md.Trainer and the
diffusion loss of Ho et al. 2020; 10 % of captions are replaced by "" so that the same network is
also the unconditional model that guidance needs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .data.procedural import COLOR_NAMES, VOCABULARY, kind_to_class
from .data.sprite_arrays import CLASS_NAMES
from .file_io import CheckpointError, safe_torch_load
from .model_table import build_model, decode_kwargs, model_spec
from .pretrained import FORMAT, FORMAT_VERSION, INDEX_NAME, finite_weights, read_index, read_weights, write_folder
from .samplers import sample
from .schedule import NoiseSchedule
from .text import TextEncoder, Tokenizer

__all__ = ["TextToImage", "TextToImageConfig", "TextConditionedUNet", "measure_latent_scale",
           "pad_images", "crop_images", "parse_sprite_prompt", "score_prompt_images", "prompt_fidelity"]

OLD_CONFIG_NAME, OLD_WEIGHTS_NAME = "config.json", "weights.pt"   # folders written before minidiff.json


def pad_images(x: Tensor, padding: int) -> Tensor:
    """[B, C, H, W] -> [B, C, H + 2p, W + 2p], edge pixels repeated outwards (the background grows)."""
    return F.pad(x, (padding,) * 4, mode="replicate") if padding else x


def crop_images(x: Tensor, padding: int) -> Tensor:
    """The inverse of pad_images: [B, C, H + 2p, W + 2p] -> [B, C, H, W]."""
    return x[..., padding : x.shape[-2] - padding, padding : x.shape[-1] - padding] if padding else x


@torch.no_grad()
def measure_latent_scale(autoencoder: nn.Module, images: Tensor, image_padding: int = 0,
                         batch_size: int = 512) -> float:
    """1 / std of the (unscaled) latents of `images` [N, C, H, W]: multiplying by it gives unit variance.

    Uses the encoder's mean for a variational autoencoder (encode(x, sample=False)), in eval mode
    (BatchNorm with its running statistics), one std over every latent entry, as Stable Diffusion.
    """
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    latents = torch.cat([autoencoder.encode(pad_images(images[k : k + batch_size].to(device), image_padding)).cpu()
                         for k in range(0, len(images), batch_size)])  # [N, latent_channels, h, w]
    return 1.0 / latents.double().std().item()


class TextConditionedUNet(nn.Module):
    """The denoising UNet and the text encoder as ONE network, for training them jointly.

    model(z, t, context) with z [B, C, h, w], t [B] and context the token ids [B, L] of the captions
    -> unet(z, t, text_encoder(ids)): the diffusion loss backpropagates into the text encoder.
    The ids may come as floats (they are rounded): md.Trainer's classifier-free context dropout
    multiplies a float context by 0, and id 0 is <pad>, so a dropped caption becomes the empty
    prompt "", exactly the unconditional context that sampling uses. context=None is "" too.
    """

    def __init__(self, unet: nn.Module, text_encoder: TextEncoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if context is None:
            context = torch.zeros(x.shape[0], self.text_encoder.max_length, device=x.device)
        ids = context.round().long() if context.is_floating_point() else context  # [B, L]
        return self.unet(x, t, self.text_encoder(ids))


@dataclass
class TextToImageConfig:
    """The sizes of a fresh pipeline's parts (``TextToImage.build``). Defaults: the "full" model."""

    image_size: int = 16                   # sprites are 16x16 RGB
    image_padding: int = 4                 # pad to 24x24 so the AutoEncoder makes 8x8 latents (16x16 gives 4x4)
    latent_channels: int = 4               # as Stable Diffusion's autoencoder
    variational: bool = True               # KL-regularised latents, as Stable Diffusion's
    ae_channels: tuple = (32, 64)          # AutoEncoder widths
    unet_channels: tuple = (64, 128, 256)  # LatentScoreUNet widths (the last >= 64: GroupNorm(32) at 1x1)
    time_embed_dim: int = 256              # the UNet's Gaussian Fourier time embedding width
    unet_token_dim: int = 128              # width the UNet projects the text tokens to (its text_dim)
    max_length: int = 16                   # tokens per prompt (the longest caption has 12 words)
    text_dim: int = 128                    # TextEncoder width = the UNet's context_dim
    text_depth: int = 4                    # TextEncoder blocks
    text_heads: int = 4                    # TextEncoder attention heads


class TextToImage:
    """prompt(s) -> images [B, 3, H, W] in [-1, 1]: tokenizer, text encoder, latent UNet, guidance, decoder.

    Source: Rombach et al. 2022 (latent diffusion with cross-attention conditioning, Sec. 3.3) with
    classifier-free guidance (Ho & Salimans 2022). Parts: `autoencoder` (AutoEncoder), `unet` (any
    minidiff network called unet(z, t, context [B, L, D]) that predicts eps, e.g. LatentScoreUNet
    with context_dim=D and sde=None), `text_encoder` (TextEncoder, width D), `tokenizer`, `schedule`
    (the NoiseSchedule the UNet was trained with), `latent_scale` (see measure_latent_scale).
    save_pretrained needs the AutoEncoder and the UNet made by ``checkpoint.build_model`` (or by
    ``TextToImage.build``), which records their constructor arguments.
    """

    def __init__(self, autoencoder: nn.Module, unet: nn.Module, text_encoder: TextEncoder, tokenizer: Tokenizer,
                 schedule: NoiseSchedule, latent_scale: float = 1.0, image_size: int = 16, image_padding: int = 0):
        if not (math.isfinite(latent_scale) and latent_scale > 0):
            raise ValueError(f"latent_scale must be a positive number, got {latent_scale!r}")
        if tokenizer.vocab_size != text_encoder.vocab_size or tokenizer.max_length > text_encoder.max_length:
            raise ValueError(f"tokenizer ({tokenizer.vocab_size} ids, length {tokenizer.max_length}) does not fit the "
                             f"text encoder ({text_encoder.vocab_size} ids, length {text_encoder.max_length})")
        self.autoencoder, self.unet, self.text_encoder = autoencoder, unet, text_encoder
        self.tokenizer, self.schedule, self.latent_scale = tokenizer, schedule, float(latent_scale)
        self.image_size, self.image_padding = int(image_size), int(image_padding)

    @classmethod
    def build(cls, config: Optional[TextToImageConfig] = None, vocabulary: Optional[Sequence[str]] = None,
              schedule: Optional[NoiseSchedule] = None) -> "TextToImage":
        """A fresh, untrained pipeline (latent_scale 1 until measured). vocabulary: the sprites' words by default."""
        c = config if config is not None else TextToImageConfig()
        if vocabulary is None:
            vocabulary = VOCABULARY
        tokenizer = Tokenizer(vocabulary, c.max_length)
        autoencoder = build_model("AutoEncoder", in_channels=3, latent_channels=c.latent_channels,
                                  variational=c.variational, channels=list(c.ae_channels))
        unet = build_model("LatentScoreUNet", in_channels=c.latent_channels, channels=list(c.unet_channels),
                           embed_dim=c.time_embed_dim, num_classes=0, text_dim=c.unet_token_dim,
                           context_dim=c.text_dim, sde=None)
        text_encoder = TextEncoder(tokenizer.vocab_size, c.text_dim, c.text_depth, c.text_heads, c.max_length)
        schedule = schedule if schedule is not None else NoiseSchedule.linear(1000)
        return cls(autoencoder, unet, text_encoder, tokenizer, schedule, 1.0, c.image_size, c.image_padding)

    # ------------------------------------------------------------------ the parts, one at a time
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "TextToImage":
        for part in (self.autoencoder, self.unet, self.text_encoder):
            part.to(device)
        return self

    def eval(self) -> "TextToImage":
        for part in (self.autoencoder, self.unet, self.text_encoder):
            part.eval()
        return self

    def latent_shape(self) -> tuple:
        """(latent_channels, h, w) of one image's latent."""
        return tuple(self.autoencoder.latent_shape(self.image_size + 2 * self.image_padding))

    def encode_prompt(self, prompts: Union[str, Sequence[str]]) -> Tensor:
        """Prompt(s) -> the context tokens [B, L, D] the UNet cross-attends to ("" -> the unconditional one)."""
        return self.text_encoder(self.tokenizer.encode(prompts).to(self.device))

    def encode_images(self, images: Tensor, sample: bool = False,
                      generator: Optional[torch.Generator] = None) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> scaled latents [B, latent_channels, h, w] (about unit variance)."""
        padded = pad_images(images.to(self.device), self.image_padding)
        return self.autoencoder.encode(padded, sample=sample, generator=generator) * self.latent_scale

    def decode_latents(self, z: Tensor) -> Tensor:
        """scaled latents [B, latent_channels, h, w] -> images [B, 3, H, W] in [-1, 1]."""
        return crop_images(self.autoencoder.decode(z / self.latent_scale), self.image_padding)

    # ------------------------------------------------------------------ prompt -> images
    @torch.no_grad()
    def __call__(self, prompt: Union[str, Sequence[str]], steps: int = 25, guidance_scale: Optional[float] = 3.0,
                 sampler: str = "ddim", generator: Optional[torch.Generator] = None, n_per_prompt: int = 1,
                 spacing: str = "leading", eta: float = 0.0, progress: bool = False) -> Tensor:
        """Images for each prompt, n_per_prompt each, in prompt order: [B * n_per_prompt, 3, H, W] in [-1, 1].

        guidance_scale w: eps = eps("") + w (eps(prompt) - eps("")); w = 0 is the unconditional model,
        w = 1 (or None, one network call per step instead of two) the plain conditional one.
        sampler / spacing / eta: as md.sample ("ddim", "dpmpp_2m", ...; "leading", "karras", ...).
        Puts the networks in eval mode. Same generator (seed and device), same images.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or n_per_prompt < 1:
            raise ValueError(f"need at least one prompt and n_per_prompt >= 1, got {len(prompts)} and {n_per_prompt}")
        prompts = [p for p in prompts for _ in range(n_per_prompt)]         # B prompts, each repeated
        self.eval()
        context = self.encode_prompt(prompts)                                # [B, L, D]
        uncond_context = self.encode_prompt([""] * len(prompts)) if guidance_scale is not None else None
        z = sample(self.unet, self.schedule, (len(prompts), *self.latent_shape()), sampler=sampler, steps=steps,
                   eta=eta, context=context, guidance_scale=guidance_scale, uncond_context=uncond_context,
                   prediction_type="epsilon", generator=generator, progress=progress, spacing=spacing,
                   clip_x0=False)                                            # [B, 4, h, w], latents: no clipping
        return self.decode_latents(z)                                        # [B, 3, H, W]

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str) -> str:
        """Write a pretrained folder: minidiff.json (how to rebuild, plain JSON) and one safetensors file per
        network (unet, autoencoder, text_encoder), atomically as a whole (see pretrained.write_folder).
        ``md.load_pretrained`` and ``minidiff sample --checkpoint DIR --prompt ...`` read it."""
        specs = {name: model_spec(part) for name, part in (("autoencoder", self.autoencoder), ("unet", self.unet))}
        for name, spec in specs.items():
            if spec["kwargs"] is None:
                raise ValueError(f"the {name} ({spec['class']}) does not record its constructor arguments: build it "
                                 f"with md.model_table.build_model(...) or TextToImage.build(...)")
        parts = {"unet": self.unet, "autoencoder": self.autoencoder, "text_encoder": self.text_encoder}
        components = {name: f"{name}.safetensors" for name in parts}
        index = {"format": FORMAT, "format_version": FORMAT_VERSION, "minidiff_version": __version__,
                 "pipeline": "TextToImage", "model": specs["unet"], "autoencoder": specs["autoencoder"],
                 "text_encoder": self.text_encoder.to_config(), "tokenizer": self.tokenizer.to_config(),
                 "schedule": self.schedule.to_config(), "sde": None, "prediction_type": "epsilon",
                 "latent_scale": self.latent_scale, "image_size": self.image_size,
                 "image_padding": self.image_padding, "weights": components["unet"], "components": components}
        write_folder(directory, index, {components[name]: finite_weights(part, directory)
                                        for name, part in parts.items()})
        return directory

    @classmethod
    def load_pretrained(cls, directory: str, device: Union[str, torch.device] = "cpu") -> "TextToImage":
        """Rebuild a pipeline written by save_pretrained, in eval mode. Weights are read as in
        ``md.load_pretrained`` (safetensors, checksums); an older folder's config.json + weights.pt is read
        with torch.load(weights_only=True) only."""
        if not os.path.isfile(os.path.join(directory, INDEX_NAME)) and \
                os.path.isfile(os.path.join(directory, OLD_CONFIG_NAME)):             # an older folder
            with open(os.path.join(directory, OLD_CONFIG_NAME)) as f:
                config = json.load(f)
            if config.get("pipeline") != "TextToImage":
                raise CheckpointError(f"{directory}/{OLD_CONFIG_NAME} does not describe a TextToImage pipeline")
            old_weights = safe_torch_load(os.path.join(directory, OLD_WEIGHTS_NAME), what="weights file")
            weights = {name: old_weights[name] for name in ("autoencoder", "unet", "text_encoder")}
            config["model"] = config["unet"]
        else:
            config = read_index(directory)
            components = config.get("components")
            if config.get("pipeline") != "TextToImage" or not isinstance(components, dict):
                raise CheckpointError(f"{directory}/{INDEX_NAME} does not describe a TextToImage pipeline")
            weights = {name: read_weights(directory, config, components.get(name))
                       for name in ("autoencoder", "unet", "text_encoder")}
        autoencoder = build_model(config["autoencoder"]["class"], **decode_kwargs(config["autoencoder"]["kwargs"]))
        unet = build_model(config["model"]["class"], **decode_kwargs(config["model"]["kwargs"]))
        text_encoder = TextEncoder(**{"mask_padding": False, **config["text_encoder"]})  # older files: no mask
        for name, part in (("autoencoder", autoencoder), ("unet", unet), ("text_encoder", text_encoder)):
            try:
                part.load_state_dict(weights[name])
            except RuntimeError as error:
                raise CheckpointError(f"{directory}: the {name} weights do not fit its recorded settings: "
                                      f"{error}") from None
        pipe = cls(autoencoder, unet, text_encoder, Tokenizer.from_config(config["tokenizer"]),
                   NoiseSchedule.from_config(config["schedule"]), config["latent_scale"],
                   config["image_size"], config["image_padding"])
        return pipe.to(device).eval()


# ---------------------------------------------------------------------------------------- prompt fidelity
ATTRIBUTES = ("class", "kind", "color")   # what a sprite prompt can ask for and the sprite classifier can read


def parse_sprite_prompt(prompt: str) -> Dict[str, Optional[str]]:
    """What a sprite prompt asks for: {"class", "kind", "color"} -> names, None where it does not say.

    The grammar is the captions' ("{color} [side-facing] {kind} [with ...]"): the kind is the
    drawing word, the class follows from it ("side-facing" overrides), the main colour is the
    first colour word not describing a part ("a blue cape", "white spots" are not the main colour).
        "red hero with a blue cape"      -> {"class": "hero", "kind": "hero", "color": "red"}
        "brown side-facing cat"          -> {"class": "side-facing", "kind": "cat", "color": "brown"}
        "ring spell"                     -> {"class": "spell", "kind": "ring", "color": None}
    """
    words = Tokenizer.split(prompt)
    kinds = kind_to_class()                                  # hero, unless the prompt says side-facing
    kind = next((w for w in words if w in kinds), None)
    cls = "side-facing" if "side-facing" in words else kinds.get(kind)
    color = next((w for w, after in zip(words, words[1:] + [""])
                  if w in COLOR_NAMES and after not in ("cape", "spots")), None)
    return {"class": cls, "kind": kind, "color": color}


def score_prompt_images(images: Tensor, prompts: Sequence[str], classifier) -> Dict[str, dict]:
    """How often images [B, 3, 16, 16] show what their prompts (B strings) ask, read by the sprite classifier.

    classifier: md.metrics.feature_extractor("sprites") (its class, kind and main-colour heads).
    Returns {attribute: {"right": r, "asked": n, "rate": r / n}}: an image counts for an attribute
    only if its prompt names it (a prompt without a colour word is scored on class and kind only).
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    names = {"class": list(CLASS_NAMES), **classifier.info["vocabularies"]}   # head -> index -> name
    predicted = classifier.predict_attributes(images)                        # {head: [B] ids}
    asked = [parse_sprite_prompt(p) for p in prompts]
    scores = {}
    for attribute in ATTRIBUTES:
        pairs = [(a[attribute], names[attribute][int(k)]) for a, k in zip(asked, predicted[attribute])
                 if a[attribute] is not None]                                # (asked, seen)
        right = sum(want == seen for want, seen in pairs)
        scores[attribute] = {"right": right, "asked": len(pairs), "rate": right / len(pairs) if pairs else math.nan}
    return scores


def prompt_fidelity(pipe: "TextToImage", prompts: Sequence[str], classifier, n_per_prompt: int = 8,
                    guidance_scales: Sequence[float] = (0.0, 1.0, 3.0), steps: int = 25, sampler: str = "ddim",
                    seed: int = 0) -> Dict[float, Dict[str, dict]]:
    """{guidance scale w: score_prompt_images of n_per_prompt images per prompt made at w}.

    The same seed at every w (the same starting noise: a paired comparison). w = 0 is the
    unconditional model, which never sees the prompt: its rates are the chance level of each
    attribute under the model's own mix of sprites. w = 1 is the plain conditional model.
    """
    repeated = [p for p in prompts for _ in range(n_per_prompt)]             # pipe's order: prompt-major
    results = {}
    for w in guidance_scales:
        images = pipe(list(prompts), steps=steps, guidance_scale=w, sampler=sampler, n_per_prompt=n_per_prompt,
                      generator=torch.Generator().manual_seed(seed))         # [K * n, 3, 16, 16]
        results[float(w)] = score_prompt_images(images.cpu(), repeated, classifier)
    return results


