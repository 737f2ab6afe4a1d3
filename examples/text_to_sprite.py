"""Lesson: text to sprite — a running Stable-Diffusion-like model, every part minidiff's own.

prompt -> Tokenizer -> TextEncoder -> latent diffusion UNet with SpatialTransformer cross-attention
-> classifier-free guidance -> AutoEncoder decoder, on the procedural sprites and their captions
("green apple with a leaf", "blue ring spell", ...). Rombach et al. 2022; Ho & Salimans 2022.

  0. build the four parts with the preset's sizes, on this page (build_pipeline; TextToImage.build(config)
     makes the same): Tokenizer, AutoEncoder, LatentScoreUNet with cross-attention, TextEncoder;
  1. train the variational AutoEncoder alone (a plain loop: md.Trainer trains diffusion models):
     sprites, replicate-padded to 24x24, <-> 4 x 8 x 8 latents; reconstructions beside originals;
  2. measure latent_scale = 1 / std of the training latents (Stable Diffusion's 0.18215), encode the
     data set once, scaled to unit variance;
  3. train the LatentScoreUNet and the TextEncoder together (TextConditionedUNet) with md.Trainer on
     (latent, caption ids), dropping 10 % of captions to "" for classifier-free guidance;
  4. save the pipeline (minidiff.json + one .safetensors file per network), then render one row per
     prompt, and one row per guidance scale for the first prompt;
  5. measure prompt fidelity: the sprite feature classifier (md.metrics.feature_extractor, trained on
     the procedural sprites) reads the class, drawing and main colour of images made from held-out
     real captions, at guidance w = 0 (unconditional: chance level), 1 and 3. Target: class and
     main colour right >= 90 % of the time at w = 3.

Run:  python examples/text_to_sprite.py --preset quick      (--preset smoke / full; full wants CUDA)
      python examples/text_to_sprite.py --preset quick --prompt "red apple" --prompt "white ghost"
Writes to outputs/text_to_sprite/: reconstructions.png, prompts.png, guidance.png, autoencoder_loss.png,
          loss.png, pipeline/ (minidiff.json, *.safetensors), results.md, fidelity.json
Reload:   md.TextToImage.load_pretrained("outputs/text_to_sprite/pipeline")("purple ghost"), or
          python -m minidiff sample --checkpoint outputs/text_to_sprite/pipeline --prompt "purple ghost"
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, parse_args, print_table, wrote  # noqa: E402

from minidiff.data import VOCABULARY, ProceduralSprites  # noqa: E402
from minidiff.imaging import save_class_grid, save_loss_curve  # noqa: E402
from minidiff.metrics.features import ClassifierConfig, feature_extractor  # noqa: E402
from minidiff.model_table import build_model  # noqa: E402
from minidiff.nn import reconstruction_loss  # noqa: E402
from minidiff.schedule import NoiseSchedule  # noqa: E402
from minidiff.text import TextEncoder, Tokenizer  # noqa: E402
from minidiff.text_to_image import (  # noqa: E402
    TextConditionedUNet,
    TextToImage,
    TextToImageConfig,
    crop_images,
    measure_latent_scale,
    pad_images,
    prompt_fidelity,
    score_prompt_images,
)
from minidiff.train import TrainConfig, Trainer  # noqa: E402

DEFAULT_PROMPTS = ["blue hero with a shield", "yellow hero with a crown", "green slime", "purple ghost",
                   "green apple with a leaf", "red strawberry", "pink star spell", "blue ring spell",
                   "brown side-facing cat facing left"]


@dataclass
class Preset:
    n_train: int            # procedural sprites (with captions)
    model: TextToImageConfig
    ae_steps: int           # autoencoder optimiser steps
    ae_batch: int
    steps: int              # diffusion (UNet + text encoder) optimiser steps
    batch_size: int
    lr: float               # diffusion peak learning rate (AdamW, warm-up then linear decay)
    per_prompt: int         # samples per prompt row
    sample_steps: int       # DDIM steps
    eval_prompts: int       # held-out real captions scored for prompt fidelity (a multiple of 5: every class)
    classifier: Optional[ClassifierConfig] = None  # None: feature_extractor's default (cached in ~/.cache/minidiff)


PRESETS = {
    "smoke": Preset(n_train=256, model=TextToImageConfig(unet_channels=(16, 32, 64), time_embed_dim=32,
                                                         unet_token_dim=32, text_dim=32, text_depth=1, text_heads=2),
                    ae_steps=15, ae_batch=32, steps=8, batch_size=16, lr=1e-3, per_prompt=2, sample_steps=5,
                    eval_prompts=5, classifier=ClassifierConfig(train_images=256, epochs=1, widths=(8, 8),
                                                                batch_size=64, heldout_images=100)),
    "quick": Preset(n_train=10000, model=TextToImageConfig(unet_channels=(32, 64, 128), time_embed_dim=128,
                                                           unet_token_dim=64, text_dim=64, text_depth=2, text_heads=4),
                    ae_steps=2400, ae_batch=64, steps=36000, batch_size=64, lr=1e-3, per_prompt=8, sample_steps=25,
                    eval_prompts=100),
    "full": Preset(n_train=60000, model=TextToImageConfig(),      # the defaults: UNet (64, 128, 256), text 128 x 4
                   ae_steps=10000, ae_batch=128, steps=40000, batch_size=256, lr=5e-4, per_prompt=10, sample_steps=50,
                   eval_prompts=200),
}
KL_WEIGHT = 1e-3            # weight of the KL term per latent entry against the per-pixel reconstruction loss
GUIDANCE_SCALES = (0.0, 1.0, 3.0)  # fidelity is measured at each; 0 = unconditional, 1 = conditional
TARGET_RATE, TARGET_SCALE = 0.9, 3.0  # the goal: class and main colour right >= 90 % of the time at w = 3


def build_pipeline(c: TextToImageConfig, seed: int) -> TextToImage:
    """The four parts of the pipeline with the preset's sizes c (what TextToImage.build(c) makes, in its order).
    build_model records each network's constructor arguments, so pipe.save_pretrained can rebuild it."""
    torch.manual_seed(seed)
    tokenizer = Tokenizer(VOCABULARY, max_length=c.max_length)          # caption words -> ids [B, 16], <pad>ded
    # 24x24 RGB (16x16 sprites, replicate-padded by 4) <-> 4 x 8 x 8 latents, KL-regularised as Stable Diffusion's
    autoencoder = build_model("AutoEncoder", in_channels=3, latent_channels=c.latent_channels,
                              variational=c.variational, channels=list(c.ae_channels))
    # predicts eps of the latents; its SpatialTransformers cross-attend to the text tokens [B, 16, text_dim]
    unet = build_model("LatentScoreUNet", in_channels=c.latent_channels, channels=list(c.unet_channels),
                       embed_dim=c.time_embed_dim, num_classes=0, text_dim=c.unet_token_dim,
                       context_dim=c.text_dim, sde=None)
    text_encoder = TextEncoder(tokenizer.vocab_size, dim=c.text_dim, depth=c.text_depth, heads=c.text_heads,
                               max_length=c.max_length)                 # ids -> tokens [B, 16, text_dim]
    return TextToImage(autoencoder, unet, text_encoder, tokenizer, NoiseSchedule.linear(1000),
                       latent_scale=1.0, image_size=c.image_size, image_padding=c.image_padding)


def train_autoencoder(pipe: TextToImage, images: torch.Tensor, p: Preset, seed: int, device) -> list:
    """A plain loop: random batch, pad, reconstruct, crop, L1 + edge loss (+ KL), Adam step. Returns losses."""
    ae, pad = pipe.autoencoder, pipe.image_padding
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(ae.parameters(), lr=2e-3)
    ae.train()
    c, h, w = pipe.latent_shape()
    losses = []
    for _ in range(p.ae_steps):
        x = images[torch.randint(len(images), (p.ae_batch,), generator=generator)].to(device)  # [B, 3, 16, 16]
        out = ae(pad_images(x, pad))                                   # x_hat, or (x_hat, kl [B]) if variational
        x_hat, kl = out if isinstance(out, tuple) else (out, torch.zeros(1, device=device))
        loss = reconstruction_loss(crop_images(x_hat, pad), x) + KL_WEIGHT * kl.mean() / (c * h * w)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def encode_all(pipe: TextToImage, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """[N, 3, 16, 16] -> scaled latents [N, 4, 8, 8] on the CPU (the encoder's mean, eval mode)."""
    pipe.autoencoder.eval()
    return torch.cat([pipe.encode_images(images[k:k + batch]).cpu() for k in range(0, len(images), batch)])


def main(argv=None) -> dict:
    add = lambda parser: parser.add_argument(  # noqa: E731
        "--prompt", action="append", help="a prompt to render (repeat for more); default: a set covering the classes")
    args = parse_args(__doc__, PRESETS, argv, add_arguments=add)
    p, device = PRESETS[args.preset], args.device
    prompts = args.prompt or DEFAULT_PROMPTS
    data = ProceduralSprites(p.n_train, seed=args.seed)
    images, captions = data.tensors()[0], data.captions                 # [N, 3, 16, 16], N strings
    test_images = ProceduralSprites(12, seed=args.seed + 1).tensors()[0]  # held out
    pipe = build_pipeline(p.model, args.seed).to(device)
    unknown = sorted({w for q in prompts for w in pipe.tokenizer.split(q) if w not in pipe.tokenizer.ids})
    if unknown:
        print(f"note: words outside the vocabulary become <unk>: {unknown}")

    # 1. The autoencoder, and its reconstructions of held-out sprites.
    with Timer() as ae_time:
        ae_losses = train_autoencoder(pipe, images, p, args.seed, device)
    path = os.path.join(args.out, "autoencoder_loss.png")
    save_loss_curve(range(1, len(ae_losses) + 1), ae_losses, path, title="autoencoder loss")
    wrote(path)
    pipe.autoencoder.eval()
    with torch.no_grad():
        reconstructions = pipe.decode_latents(pipe.encode_images(test_images)).cpu()
    recon_error = (reconstructions - test_images).abs().mean().item()
    path = os.path.join(args.out, "reconstructions.png")
    save_class_grid(torch.stack([test_images, reconstructions]), ["original", "reconstruction"], path)
    wrote(path)

    # 2. Scale the latents to unit variance, encode the data once.
    pipe.latent_scale = measure_latent_scale(pipe.autoencoder, images, pipe.image_padding)
    latents = encode_all(pipe, images)                                  # [N, 4, 8, 8]
    ids = pipe.tokenizer.encode(captions)                               # [N, L] int64
    print(f"latents {tuple(latents.shape[1:])}: latent_scale {pipe.latent_scale:.4f}, scaled std {latents.std():.3f}")

    # 3. UNet + text encoder, trained together on (latent, caption ids). The ids travel as floats so
    #    the Trainer's context dropout (x 0) turns a caption into all <pad> = "" (see TextConditionedUNet).
    model = TextConditionedUNet(pipe.unet, pipe.text_encoder)
    config = TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=min(100, p.steps // 10),
                         ema_decay=0.999, context_dropout=0.1, log_every=max(1, p.steps // 100),
                         device=str(device), seed=args.seed, progress=args.preset != "smoke")
    trainer = Trainer(model, TensorDataset(latents, ids.float()), config, schedule=pipe.schedule)
    with Timer() as train_time:
        trainer.fit()
    history = trainer.history
    path = os.path.join(args.out, "loss.png")
    save_loss_curve([row[0] for row in history], [row[1] for row in history], path, title="diffusion loss")
    wrote(path)
    pipe.unet, pipe.text_encoder = trainer.ema.model.unet, trainer.ema.model.text_encoder  # sample with EMA weights
    wrote(os.path.join(pipe.save_pretrained(os.path.join(args.out, "pipeline")), "minidiff.json"))

    # 4. One row per prompt; one row per guidance scale for the first prompt.
    with Timer() as sample_time:
        x = pipe(prompts, steps=p.sample_steps, guidance_scale=3.0, n_per_prompt=p.per_prompt,
                 generator=torch.Generator().manual_seed(args.seed)).cpu()  # [K * M, 3, 16, 16]
    path = os.path.join(args.out, "prompts.png")
    save_class_grid(x.reshape(len(prompts), p.per_prompt, 3, 16, 16), prompts, path)
    wrote(path)
    scales = [0.0, 1.0, 3.0, 6.0]
    rows = [pipe(prompts[0], steps=p.sample_steps, guidance_scale=w, n_per_prompt=p.per_prompt,
                 generator=torch.Generator().manual_seed(args.seed)).cpu() for w in scales]
    path = os.path.join(args.out, "guidance.png")
    save_class_grid(torch.stack(rows), [f"w = {w:g}: {prompts[0]}" for w in scales], path)
    wrote(path)

    # 5. Prompt fidelity: does the image show the class, drawing and main colour its prompt asks for?
    #    Prompts: held-out real captions (seed + 2), p.eval_prompts / 5 per class, so all are expressible.
    held_out = ProceduralSprites(p.eval_prompts, seed=args.seed + 2)
    eval_prompts = held_out.captions
    cache_dir = os.path.join(args.out, "classifier_cache") if p.classifier is not None else None
    classifier = feature_extractor("sprites", device=device, cache_dir=cache_dir, config=p.classifier,
                                   progress=True)
    with Timer() as fidelity_time:
        fidelity = prompt_fidelity(pipe, eval_prompts, classifier, n_per_prompt=p.per_prompt,
                                   guidance_scales=GUIDANCE_SCALES, steps=p.sample_steps, seed=args.seed)
    real_images = held_out.tensors()[0]                                  # the sprites the captions describe
    with torch.no_grad():
        round_trip = pipe.decode_latents(pipe.encode_images(real_images)).cpu()
    real = score_prompt_images(real_images, eval_prompts, classifier)     # the classifier's own ceiling
    ceiling = score_prompt_images(round_trip, eval_prompts, classifier)   # the autoencoder's: what its latents keep
    fidelity_rows = [[name] + [_rate(scores[a]) for a in ("class", "kind", "color")]
                     for name, scores in (("real sprites (classifier check)", real),
                                          ("real -> autoencoder -> decoded", ceiling))]
    fidelity_rows += [[f"w = {w:g}" + (" (unconditional)" if w == 0 else " (conditional)" if w == 1 else "")]
                      + [_rate(scores[a]) for a in ("class", "kind", "color")] for w, scores in fidelity.items()]
    fidelity_table = print_table(fidelity_rows, ["images", "class right", "drawing right", "main colour right"])
    at_target = fidelity.get(TARGET_SCALE)
    target_met = at_target is not None and all(at_target[a]["rate"] >= TARGET_RATE for a in ("class", "color"))
    verdict = (f"target (class and main colour right >= {TARGET_RATE:.0%} at w = {TARGET_SCALE:g}): "
               + ("MET" if target_met else "NOT MET") + (f" (class {at_target['class']['rate']:.1%}, colour "
                                                        f"{at_target['color']['rate']:.1%})" if at_target else ""))
    print(verdict)
    path = os.path.join(args.out, "fidelity.json")
    with open(path, "w") as f:
        json.dump({"prompts": eval_prompts, "n_per_prompt": p.per_prompt, "sampler": f"ddim {p.sample_steps}",
                   "real": real, "autoencoder_round_trip": ceiling,
                   "by_guidance_scale": {f"{w:g}": scores for w, scores in fidelity.items()},
                   "target_met": target_met}, f, indent=1)
    wrote(path)

    table = print_table([
        ["autoencoder", f"{p.ae_steps} steps", round(ae_time.seconds, 1), f"L1 reconstruction error {recon_error:.4f}"],
        ["UNet + text encoder", f"{p.steps} steps", round(train_time.seconds, 1),
         f"final loss {history[-1][1]:.4f}, latent_scale {pipe.latent_scale:.4f}"],
        ["sampling + decoding", f"{len(x)} images, DDIM {p.sample_steps}", round(sample_time.seconds, 2),
         "guidance 3.0"],
        ["prompt fidelity", f"{len(eval_prompts)} prompts x {p.per_prompt} x {len(GUIDANCE_SCALES)} scales",
         round(fidelity_time.seconds, 1), "see below"],
    ], ["stage", "work", "seconds", "result"])
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write(f"# text_to_sprite, preset {args.preset}, {device}\n\n```\n{table}\n```\n\n"
                f"## Prompt fidelity\n\n{len(eval_prompts)} held-out real captions x {p.per_prompt} images, "
                f"DDIM {p.sample_steps}, read by the sprite feature classifier. w = 0 never sees the prompt "
                f"(chance level); colour is scored only where the prompt names one. The first two rows "
                f"score the real sprites of those captions, as drawn and after the autoencoder.\n\n"
                f"```\n{fidelity_table}\n```\n\n{verdict}\n")
    wrote(path)
    return {"recon_error": recon_error, "latent_scale": pipe.latent_scale, "final_loss": history[-1][1],
            "fidelity": fidelity, "fidelity_real": real, "fidelity_round_trip": ceiling, "target_met": target_met,
            "seconds": {"autoencoder": ae_time.seconds, "diffusion": train_time.seconds,
                        "sampling": sample_time.seconds, "fidelity": fidelity_time.seconds}}


def _rate(score: dict) -> str:
    """{"right": r, "asked": n, ...} -> "0.925 (148/160)"."""
    return f"{score['rate']:.3f} ({score['right']}/{score['asked']})" if score["asked"] else "-"


if __name__ == "__main__":
    main()
