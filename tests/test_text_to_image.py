"""minidiff.text_to_image: latent scale, joint UNet + text encoder, guidance, save/load; the example's smoke run."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minidiff as md
from minidiff.cli import main
from minidiff.data import CLASS_NAMES, COLOR_NAMES, ProceduralSprites
from minidiff.metrics.features import FeatureClassifier
from minidiff.nn import AutoEncoder
from minidiff.text_to_image import (
    TextConditionedUNet,
    TextToImage,
    TextToImageConfig,
    crop_images,
    measure_latent_scale,
    pad_images,
    parse_sprite_prompt,
    prompt_fidelity,
    score_prompt_images,
)

TINY = TextToImageConfig(ae_channels=(8, 16), unet_channels=(16, 32, 64), time_embed_dim=16, unet_token_dim=16,
                         text_dim=16, text_depth=1, text_heads=2)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipe = TextToImage.build(TINY, schedule=md.NoiseSchedule.linear(100))
    images = ProceduralSprites(64, seed=0).tensors()[0]
    pipe.latent_scale = measure_latent_scale(pipe.autoencoder, images, pipe.image_padding)
    return pipe.eval()


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_padding_gives_8x8_latents_and_crop_undoes_it(pipe):
    assert pipe.latent_shape() == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16)
    padded = pad_images(x, 4)
    assert padded.shape == (2, 3, 24, 24) and torch.equal(padded[..., 0, 0], x[..., 0, 0])  # corners repeated
    assert torch.equal(crop_images(padded, 4), x)
    assert pipe.encode_images(x).shape == (2, 4, 8, 8)
    assert pipe.decode_latents(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 16, 16)


def test_latent_scale_is_one_over_std_and_standardises_new_images():
    torch.manual_seed(1)
    ae = AutoEncoder(3, 4, variational=True, channels=(8, 16))
    train = ProceduralSprites(256, seed=0).tensors()[0]
    scale = measure_latent_scale(ae, train, image_padding=4)
    with torch.no_grad():
        z = ae.encode(pad_images(train, 4))
        held_out = ae.encode(pad_images(ProceduralSprites(256, seed=7).tensors()[0], 4))
    assert scale == pytest.approx(1 / z.double().std().item(), rel=1e-9)
    assert (z * scale).std().item() == pytest.approx(1.0, rel=1e-4)
    assert (held_out * scale).std().item() == pytest.approx(1.0, rel=0.05)   # within 5 % on unseen sprites


@torch.no_grad()
def test_dropped_float_caption_is_the_empty_prompt(pipe):
    model = TextConditionedUNet(pipe.unet, pipe.text_encoder).eval()
    z, t = torch.randn(3, 4, 8, 8), torch.full((3,), 0.5)
    ids = pipe.tokenizer.encode(["red apple", "purple ghost", "blue ring spell"])
    empty = pipe.unet(z, t, pipe.encode_prompt([""] * 3))
    torch.testing.assert_close(model(z, t, ids.float() * 0), empty, rtol=0, atol=0)   # Trainer's dropout
    torch.testing.assert_close(model(z, t, None), empty, rtol=0, atol=0)
    torch.testing.assert_close(model(z, t, ids.float()), model(z, t, ids), rtol=0, atol=0)


def test_diffusion_loss_trains_unet_and_text_encoder_together(pipe):
    model = TextConditionedUNet(pipe.unet, pipe.text_encoder)
    z = torch.randn(4, 4, 8, 8)
    ids = pipe.tokenizer.encode(["red apple", "green slime", "pink star spell", ""])
    model.zero_grad()
    md.diffusion_loss(model, z, pipe.schedule, context=ids, generator=generator()).backward()
    assert pipe.text_encoder.token_embedding.weight.grad[pipe.tokenizer.ids["apple"]].abs().sum() > 0
    assert all(p.grad is not None for p in pipe.unet.attn2.parameters())
    model.zero_grad()


def test_call_shape_range_and_reproducibility(pipe):
    x = pipe(["red apple", "purple ghost"], steps=3, n_per_prompt=2, generator=generator())
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert torch.equal(x, pipe(["red apple", "purple ghost"], steps=3, n_per_prompt=2, generator=generator()))
    y = pipe(["blue ring spell", "purple ghost"], steps=3, n_per_prompt=2, generator=generator())
    assert not torch.allclose(x[:2], y[:2]) and torch.allclose(x[2:], y[2:], atol=1e-5)   # per-prompt rows
    fast = pipe("red apple", steps=3, sampler="dpmpp_2m", spacing="karras", generator=generator())
    assert fast.shape == (1, 3, 16, 16) and torch.isfinite(fast).all()


def test_guidance_scale_zero_is_unconditional_and_one_is_conditional(pipe):
    uncond = pipe("", steps=4, guidance_scale=None, n_per_prompt=2, generator=generator(5))
    w0 = pipe("red hero with a crown", steps=4, guidance_scale=0.0, n_per_prompt=2, generator=generator(5))
    torch.testing.assert_close(w0, uncond, rtol=0, atol=1e-5)
    cond = pipe("red hero with a crown", steps=4, guidance_scale=None, n_per_prompt=2, generator=generator(5))
    w1 = pipe("red hero with a crown", steps=4, guidance_scale=1.0, n_per_prompt=2, generator=generator(5))
    torch.testing.assert_close(w1, cond, rtol=0, atol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-4)


def test_save_load_round_trip_is_bit_identical(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    with open(tmp_path / "p" / "minidiff.json") as f:
        config = json.load(f)                                                  # plain JSON
    assert config["model"]["class"] == "LatentScoreUNet" and config["latent_scale"] == pipe.latent_scale
    assert sorted(os.listdir(tmp_path / "p")) == ["autoencoder.safetensors", "minidiff.json",
                                                  "text_encoder.safetensors", "unet.safetensors"]
    assert load_file(tmp_path / "p" / "unet.safetensors").keys() == pipe.unet.state_dict().keys()
    again = TextToImage.load_pretrained(tmp_path / "p")
    assert again.latent_scale == pipe.latent_scale and again.image_padding == 4
    assert torch.equal(again.schedule.betas, pipe.schedule.betas)
    prompts = ["green apple with a leaf", "brown side-facing cat facing left"]
    assert torch.equal(again(prompts, steps=3, generator=generator(2)), pipe(prompts, steps=3, generator=generator(2)))


def test_the_folder_loads_through_load_pretrained_and_the_cli(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "p")
    loaded, schedule = md.load_pretrained(tmp_path / "p")
    assert isinstance(loaded, TextToImage) and torch.equal(schedule.betas, pipe.schedule.betas)
    assert torch.equal(loaded("red apple", steps=2, generator=generator(1)),
                       pipe("red apple", steps=2, generator=generator(1)))
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(tmp_path / "p"), "--prompt", "red apple", "--n", "2",
                 "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 16
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "p"), "--n", "2"]) == 2     # a prompt is needed
    assert "--prompt" in capsys.readouterr().err


def test_an_older_config_json_and_weights_pt_folder_still_loads(pipe, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    config = {"minidiff_version": "0.1.0", "pipeline": "TextToImage",
              "autoencoder": pipe.autoencoder.minidiff_spec, "unet": pipe.unet.minidiff_spec,
              "text_encoder": pipe.text_encoder.to_config(), "tokenizer": pipe.tokenizer.to_config(),
              "schedule": pipe.schedule.to_config(), "latent_scale": pipe.latent_scale,
              "image_size": pipe.image_size, "image_padding": pipe.image_padding}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({name: getattr(pipe, name).state_dict() for name in ("autoencoder", "unet", "text_encoder")},
               folder / "weights.pt")
    again = TextToImage.load_pretrained(folder)
    assert torch.equal(again("red apple", steps=2, generator=generator(1)),
                       pipe("red apple", steps=2, generator=generator(1)))


def test_save_needs_recorded_constructor_arguments(pipe, tmp_path):
    plain = TextToImage(AutoEncoder(3, 4, True, (8, 16)), pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.schedule)
    with pytest.raises(ValueError, match="build_model"):
        plain.save_pretrained(tmp_path / "p")


def test_bad_arguments_fail_loudly(pipe):
    with pytest.raises(ValueError, match="latent_scale"):
        TextToImage(pipe.autoencoder, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.schedule, latent_scale=0.0)
    with pytest.raises(ValueError, match="sampler"):
        pipe("red apple", steps=2, sampler="nope")
    with pytest.raises(ValueError, match="n_per_prompt"):
        pipe([], steps=2)


def test_loading_a_file_without_mask_padding_keeps_the_unmasked_encoder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    with open(tmp_path / "p" / "minidiff.json") as f:
        config = json.load(f)
    assert config["text_encoder"]["mask_padding"] is True
    del config["text_encoder"]["mask_padding"]                                 # a file from before the mask
    with open(tmp_path / "p" / "minidiff.json", "w") as f:
        json.dump(config, f)
    assert TextToImage.load_pretrained(tmp_path / "p").text_encoder.mask_padding is False


# ------------------------------------------------------------------------------------------ prompt fidelity
def test_parse_sprite_prompt_agrees_with_every_real_caption():
    data = ProceduralSprites(1000, seed=4)
    for caption, label, kind, color in zip(data.captions, data.labels.argmax(1), data.kinds, data.main_colors):
        assert parse_sprite_prompt(caption) == {"class": CLASS_NAMES[label], "kind": kind, "color": color}, caption
    assert parse_sprite_prompt("hero with a red cape") == {"class": "hero", "kind": "hero", "color": None}
    assert parse_sprite_prompt("Star spell!") == {"class": "spell", "kind": "star", "color": None}
    assert parse_sprite_prompt("a dragon") == {"class": None, "kind": None, "color": None}


class ReadsTheTruth:
    """A stand-in sprite classifier that 'sees' a fixed list of (class, kind, colour) names, in order."""

    def __init__(self, seen):
        kinds = sorted({kind for _, kind, _ in seen})
        self.info = {"vocabularies": {"kind": kinds, "color": list(COLOR_NAMES)}}
        self.seen = seen, kinds

    def predict_attributes(self, images):
        seen, kinds = self.seen
        ids = [(CLASS_NAMES.index(c), kinds.index(k), COLOR_NAMES.index(col)) for c, k, col in seen[: len(images)]]
        return {name: torch.tensor([row[j] for row in ids]) for j, name in enumerate(("class", "kind", "color"))}


def test_score_prompt_images_counts_only_what_each_prompt_asks():
    prompts = ["red apple", "purple ghost", "ring spell", "green slime"]       # "ring spell" names no colour
    seen = [("food", "apple", "red"), ("non-hero", "ghost", "blue"), ("spell", "ring", "red"),
            ("non-hero", "bat", "green")]
    scores = score_prompt_images(torch.zeros(4, 3, 16, 16), prompts, ReadsTheTruth(seen))
    assert scores["class"] == {"right": 4, "asked": 4, "rate": 1.0}
    assert scores["kind"] == {"right": 3, "asked": 4, "rate": 0.75}
    assert scores["color"] == {"right": 2, "asked": 3, "rate": pytest.approx(2 / 3)}


def test_prompt_fidelity_scores_every_guidance_scale(pipe):
    prompts = ["red apple", "blue ring spell"]
    seen = [("food", "apple", "red")] * 3 + [("spell", "ring", "pink")] * 3       # what the 3 + 3 images show
    result = prompt_fidelity(pipe, prompts, ReadsTheTruth(seen), n_per_prompt=3, guidance_scales=(0.0, 3.0), steps=2)
    assert list(result) == [0.0, 3.0]
    assert result[3.0]["class"]["asked"] == 6 and result[3.0]["class"]["rate"] == 1.0
    assert result[3.0]["color"]["right"] == 3 and result[0.0]["kind"]["rate"] == 1.0


def test_classifier_predict_attributes_reads_every_head():
    torch.manual_seed(0)
    classifier = FeatureClassifier(3, (8, 8), {"class": 5, "kind": 20, "color": 10})
    x = ProceduralSprites(6, seed=0).tensors()[0]
    predicted = classifier.predict_attributes(x, batch_size=4)
    assert set(predicted) == {"class", "kind", "color"} and all(v.shape == (6,) for v in predicted.values())
    assert torch.equal(predicted["class"], classifier.predict(x))
    assert torch.equal(predicted["color"], classifier(x)["color"].argmax(1))


# ------------------------------------------------------------------------------------------ example
def test_text_to_sprite_smoke(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    import text_to_sprite
    result = text_to_sprite.main(["--preset", "smoke", "--out", str(tmp_path), "--device", "cpu",
                                  "--prompt", "red apple", "--prompt", "Purple ghost!"])
    for name in ["reconstructions.png", "prompts.png", "guidance.png", "autoencoder_loss.png", "loss.png"]:
        with Image.open(tmp_path / name) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        assert np.isfinite(pixels).all() and pixels.std() > 0, name
    assert (tmp_path / "results.md").is_file() and np.isfinite(result["final_loss"])
    with open(tmp_path / "fidelity.json") as f:
        fidelity = json.load(f)
    assert list(fidelity["by_guidance_scale"]) == ["0", "1", "3"] and len(fidelity["prompts"]) == 5
    assert result["fidelity"][3.0]["class"]["asked"] == 5 * 2 and isinstance(result["target_met"], bool)
    assert "Prompt fidelity" in (tmp_path / "results.md").read_text()
    pipe = TextToImage.load_pretrained(tmp_path / "pipeline")
    again = TextToImage.load_pretrained(tmp_path / "pipeline")
    x = pipe(["red apple", "purple ghost"], steps=2, generator=generator(3))
    assert torch.isfinite(x).all() and x.std() > 0
    assert torch.equal(x, again(["red apple", "purple ghost"], steps=2, generator=generator(3)))
