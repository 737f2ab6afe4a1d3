"""diffusers pipeline folders in and out, checked against this file's own transcription of diffusers' UNet2DModel.

No diffusers here (minidiff never imports it): the tests write DDPMPipeline folders themselves (JSON by hand,
weights with the safetensors package under the names and shapes of diffusers' UNet2DModel), and compute what
diffusers' `unet(x, i).sample` would return with `reference_unet` below, a minimal transcription of UNet2DModel's
forward (Timesteps + TimestepEmbedding, DownBlock2D / AttnDownBlock2D, UNetMidBlock2D, AttnUpBlock2D /
UpBlock2D, ResnetBlock2D, Attention with its group norm, conv_norm_out) in torch.nn.functional on the diffusers
state_dict itself.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import minidiff as md
from minidiff.cli import main
from minidiff.file_io import CheckpointError

COURSE_PARAMETERS = 1_707_009  # diffusers' UNet2DModel at the HF course's config (unit 1), as the course prints it

# the HF course, unit 1: MNIST digits, 28 x 28 grey
COURSE = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
          "block_out_channels": [32, 64, 64],
          "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
          "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
# 32 x 32 RGB with attention at every level, two heads of 16 at the top, diffusers' freq_shift = 1 variant
RGB = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
       "block_out_channels": [32, 64], "attention_head_dim": 16, "freq_shift": 1, "norm_num_groups": 16,
       "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
       "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"]}
# what diffusers writes for the keys the configs above leave out (UNet2DModel's defaults)
UNET_DEFAULTS = {"_class_name": "UNet2DModel", "_diffusers_version": "0.27.2", "act_fn": "silu",
                 "add_attention": True, "attention_head_dim": 8, "attn_norm_num_groups": None,
                 "center_input_sample": False, "class_embed_type": None, "downsample_padding": 1,
                 "downsample_type": "conv", "dropout": 0.0, "flip_sin_to_cos": True, "freq_shift": 0,
                 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None,
                 "num_train_timesteps": None, "resnet_time_scale_shift": "default",
                 "time_embedding_type": "positional", "upsample_type": "conv"}
SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.27.2", "beta_end": 0.02,
             "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True, "clip_sample_range": 1.0,
             "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "steps_offset": 0, "thresholding": False,
             "timestep_spacing": "leading", "trained_betas": None, "variance_type": "fixed_small"}


# ----------------------------------------------------------------------------- diffusers' layout, by hand
def unet_shapes(config):
    """{name: shape} of UNet2DModel's state_dict for `config` (resnet_time_scale_shift "default")."""
    cfg = {**UNET_DEFAULTS, **config}
    C, L, E = cfg["block_out_channels"], cfg["layers_per_block"], 4 * cfg["block_out_channels"][0]
    K, shapes = len(C), {}

    def linear(p, fan_in, out):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (out, fan_in), (out,)

    def conv(p, fan_in, out, k=3):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (out, fan_in, k, k), (out,)

    def norm(p, c):
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (c,), (c,)

    def resnet(p, c_in, c_out):
        norm(f"{p}.norm1", c_in), conv(f"{p}.conv1", c_in, c_out), linear(f"{p}.time_emb_proj", E, c_out)
        norm(f"{p}.norm2", c_out), conv(f"{p}.conv2", c_out, c_out)
        if c_in != c_out:
            conv(f"{p}.conv_shortcut", c_in, c_out, 1)

    def attention(p, c):
        norm(f"{p}.group_norm", c)
        for part in ("to_q", "to_k", "to_v", "to_out.0"):
            linear(f"{p}.{part}", c, c)

    conv("conv_in", cfg["in_channels"], C[0])
    linear("time_embedding.linear_1", C[0], E), linear("time_embedding.linear_2", E, E)
    out = C[0]
    for k, kind in enumerate(cfg["down_block_types"]):
        c_in, out = out, C[k]
        for j in range(L):
            resnet(f"down_blocks.{k}.resnets.{j}", c_in if j == 0 else out, out)
            if kind == "AttnDownBlock2D":
                attention(f"down_blocks.{k}.attentions.{j}", out)
        if k < K - 1:
            conv(f"down_blocks.{k}.downsamplers.0.conv", out, out)
    resnet("mid_block.resnets.0", C[-1], C[-1]), attention("mid_block.attentions.0", C[-1])
    resnet("mid_block.resnets.1", C[-1], C[-1])
    reversed_channels, out = C[::-1], C[-1]
    for u, kind in enumerate(cfg["up_block_types"]):
        prev, out, skip_in = out, reversed_channels[u], reversed_channels[min(u + 1, K - 1)]
        for j in range(L + 1):
            resnet(f"up_blocks.{u}.resnets.{j}", (prev if j == 0 else out) + (skip_in if j == L else out), out)
            if kind == "AttnUpBlock2D":
                attention(f"up_blocks.{u}.attentions.{j}", out)
        if u < K - 1:
            conv(f"up_blocks.{u}.upsamplers.0.conv", out, out)
    norm("conv_norm_out", C[0]), conv("conv_out", C[0], cfg["out_channels"])
    return shapes


def random_weights(config, seed=0):
    """Random UNet2DModel weights, every bias non-zero, scaled so activations stay of order 1."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in unet_shapes(config).items():
        if name.endswith(".bias"):
            weights[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:                                               # a norm's scale
            weights[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            weights[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return weights


def write_pipeline(folder, config, scheduler=None, weights=None, pipeline="DDPMPipeline"):
    """A DDPMPipeline folder as diffusers' save_pretrained lays it out; returns the weights written."""
    weights = random_weights(config) if weights is None else weights
    os.makedirs(folder / "unet"), os.makedirs(folder / "scheduler")
    scheduler = {**SCHEDULER, **(scheduler or {})}
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "_diffusers_version": "0.27.2",
        "scheduler": ["diffusers", scheduler["_class_name"]], "unet": ["diffusers", "UNet2DModel"]}))
    (folder / "unet" / "config.json").write_text(json.dumps({**UNET_DEFAULTS, **config}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    save_file(weights, str(folder / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return weights


# ----------------------------------------------------------------------------- diffusers' forward, by hand
def reference_unet(w, config, x, i):
    """UNet2DModel(**config)(x, i).sample, on its state_dict `w`; i: int64 [B] step indices."""
    cfg = {**UNET_DEFAULTS, **config}
    C, L, G = cfg["block_out_channels"], cfg["layers_per_block"], cfg["norm_num_groups"]
    K = len(C)

    def linear(p, h):
        return F.linear(h, w[f"{p}.weight"], w[f"{p}.bias"])

    def conv(p, h, stride=1):
        kernel = w[f"{p}.weight"]
        return F.conv2d(h, kernel, w[f"{p}.bias"], stride=stride, padding=kernel.shape[-1] // 2)

    def norm(p, h):
        return F.group_norm(h, G, w[f"{p}.weight"], w[f"{p}.bias"], eps=cfg["norm_eps"])

    def resnet(p, h, temb):                                           # ResnetBlock2D, time_embedding_norm "default"
        out = conv(f"{p}.conv1", F.silu(norm(f"{p}.norm1", h)))
        out = out + linear(f"{p}.time_emb_proj", F.silu(temb))[:, :, None, None]
        out = conv(f"{p}.conv2", F.silu(norm(f"{p}.norm2", out)))
        shortcut = conv(f"{p}.conv_shortcut", h) if f"{p}.conv_shortcut.weight" in w else h
        return shortcut + out                                         # output_scale_factor 1

    def attention(p, h):                                              # Attention(group_norm, residual_connection)
        b, c, height, width = h.shape
        head_dim = cfg["attention_head_dim"] or c
        heads = c // head_dim
        tokens = norm(f"{p}.group_norm", h).view(b, c, height * width).transpose(1, 2)      # (b, n, c)
        q, k, v = (linear(f"{p}.{part}", tokens).view(b, -1, heads, head_dim).transpose(1, 2)
                   for part in ("to_q", "to_k", "to_v"))                                  # (b, heads, n, d)
        weights = (q @ k.transpose(-1, -2) * head_dim ** -0.5).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, -1, heads * head_dim)
        out = linear(f"{p}.to_out.0", out).transpose(1, 2).reshape(b, c, height, width)
        return out + h

    half = C[0] // 2                                                  # Timesteps(C[0], flip_sin_to_cos, freq_shift)
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - cfg["freq_shift"])
    angles = i[:, None].float() * torch.exp(exponent)[None, :]
    t_emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if cfg["flip_sin_to_cos"]:
        t_emb = torch.cat([t_emb[:, half:], t_emb[:, :half]], dim=-1)
    temb = linear("time_embedding.linear_2", F.silu(linear("time_embedding.linear_1", t_emb)))

    h = conv("conv_in", x)
    res = [h]
    for k, kind in enumerate(cfg["down_block_types"]):
        for j in range(L):
            h = resnet(f"down_blocks.{k}.resnets.{j}", h, temb)
            if kind == "AttnDownBlock2D":
                h = attention(f"down_blocks.{k}.attentions.{j}", h)
            res.append(h)
        if k < K - 1:
            h = conv(f"down_blocks.{k}.downsamplers.0.conv", h, stride=2)
            res.append(h)
    h = resnet("mid_block.resnets.0", h, temb)
    if cfg["add_attention"]:
        h = attention("mid_block.attentions.0", h)
    h = resnet("mid_block.resnets.1", h, temb)
    for u, kind in enumerate(cfg["up_block_types"]):
        for j in range(L + 1):
            h = resnet(f"up_blocks.{u}.resnets.{j}", torch.cat([h, res.pop()], dim=1), temb)
            if kind == "AttnUpBlock2D":
                h = attention(f"up_blocks.{u}.attentions.{j}", h)
        if u < K - 1:
            h = conv(f"up_blocks.{u}.upsamplers.0.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return conv("conv_out", F.silu(norm("conv_norm_out", h)))


def reference_alphas_cumprod(scheduler):
    """DDPMScheduler's alphas_cumprod, float32 as diffusers computes it."""
    cfg = {**SCHEDULER, **scheduler}
    T, start, end = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    if cfg["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float32) ** 2
    else:                                                             # squaredcos_cap_v2: betas_for_alpha_bar

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((k + 1) / T) / alpha_bar(k / T), 0.999) for k in range(T)],
                             dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def assert_same_as_diffusers(model, weights, config, T=1000, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], config["sample_size"], config["sample_size"], generator=g)
    for i in (0, 1, 37, T // 2, T - 1):
        expected = reference_unet(weights, config, x, torch.full((batch,), i, dtype=torch.long))
        with torch.no_grad():
            got = model(x, torch.full((batch,), (i + 1) / T))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    fractional = torch.tensor([12.25, 600.5][:batch])                   # karras-grid steps stay fractional
    with torch.no_grad():
        got = model(x, (fractional + 1) / T)
    torch.testing.assert_close(got, reference_unet(weights, config, x, fractional), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- tests
def test_the_course_layout_has_diffusers_parameter_count():
    assert sum(math.prod(shape) for shape in unet_shapes(COURSE).values()) == COURSE_PARAMETERS == 1_707_009
    net = md.nn.UNet2D(qkv_bias=True, num_train_timesteps=1000, flip_sin_to_cos=True)
    assert sum(p.numel() for p in net.parameters()) == COURSE_PARAMETERS
    assert sum(p.numel() for p in md.nn.UNet2D().parameters()) == 1_704_897          # minidiff's own, no q/k/v bias


@pytest.mark.parametrize("config, scheduler", [
    (COURSE, {}),
    (RGB, {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "_class_name": "DDIMScheduler",
           "set_alpha_to_one": True}),
], ids=["course-28x28-grey", "rgb-32x32-attention"])
def test_a_diffusers_folder_loads_as_a_unet2d_computing_what_diffusers_computes(tmp_path, config, scheduler):
    weights = write_pipeline(tmp_path / "pipe", config, scheduler)
    model, schedule = md.load_pretrained(tmp_path / "pipe")
    assert isinstance(model, md.nn.UNet2D) and not model.training
    assert_same_as_diffusers(model, weights, config)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), reference_alphas_cumprod(scheduler),
                               rtol=1e-5, atol=1e-7)
    assert model.prediction_type == scheduler.get("prediction_type", "epsilon")
    size = config["sample_size"]
    assert model.sample_shape == (config["in_channels"], size, size)
    x = md.sample(model, schedule, (1, *model.sample_shape), steps=2, progress=False)     # no flags needed
    assert x.shape == (1, config["in_channels"], size, size) and torch.isfinite(x).all()


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_schedule_equals_the_schedulers(tmp_path, kind):
    scheduler = {"beta_schedule": kind, "num_train_timesteps": 200,
                 **({"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {})}
    write_pipeline(tmp_path / "pipe", COURSE, scheduler)
    _, schedule = md.load_pretrained(tmp_path / "pipe")
    assert schedule.T == 200
    torch.testing.assert_close(schedule.alphas_cumprod.float(), reference_alphas_cumprod(scheduler),
                               rtol=1e-5, atol=1e-7)
    md.save_pretrained(*md.load_pretrained(tmp_path / "pipe"), tmp_path / "out", format="diffusers")
    written = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert written["beta_schedule"] == kind and written["trained_betas"] is None


@pytest.mark.parametrize("config", [COURSE, RGB], ids=["course", "rgb"])
def test_a_minidiff_unet2d_saved_as_diffusers_loads_in_diffusers_layout(tmp_path, config):
    T = 1000
    torch.manual_seed(0)
    model = md.nn.UNet2D(config["in_channels"], block_out_channels=config["block_out_channels"],
                         block_types=["attention" if b.startswith("Attn") else "plain"
                                      for b in config["down_block_types"]],
                         layers_per_block=config["layers_per_block"], norm_groups=config.get("norm_groups", 32)
                         if "norm_num_groups" not in config else config["norm_num_groups"],
                         attention_head_dim=config.get("attention_head_dim", 8), qkv_bias=True,
                         num_train_timesteps=T, flip_sin_to_cos=True, freq_shift=config.get("freq_shift", 0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))                       # every bias non-zero
    schedule = md.NoiseSchedule.linear(T)
    index = md.save_pretrained(model, schedule, tmp_path / "pipe", format="diffusers", prediction_type="v_prediction",
                               sample_shape=(config["in_channels"], 32, 32) if config is RGB else (1, 28, 28))
    assert index == str(tmp_path / "pipe" / "model_index.json")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text()) == {
        "_class_name": "DDPMPipeline", "_diffusers_version": "0.30.0",
        "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    unet_config = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert set(UNET_DEFAULTS) <= set(unet_config)
    assert {k: unet_config[k] for k in config} == config
    scheduler = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert set(scheduler) == set(SCHEDULER)
    assert scheduler["beta_schedule"] == "linear" and scheduler["prediction_type"] == "v_prediction"
    weights = load_file(str(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == unet_shapes(config)   # diffusers' names and shapes
    model.eval()
    assert_same_as_diffusers(model, weights, config, T)             # what diffusers would compute from the folder
    loaded, loaded_schedule = md.load_pretrained(tmp_path / "pipe")
    x, t = torch.randn(2, *loaded.sample_shape), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    assert loaded.prediction_type == "v_prediction"
    torch.testing.assert_close(loaded_schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-6, atol=0)
    md.save_pretrained(loaded, loaded_schedule, tmp_path / "again")   # and on into minidiff's own format
    again, _ = md.load_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(x, t), model(x, t))
    assert again.prediction_type == "v_prediction" and again.sample_shape == loaded.sample_shape


def test_a_diffusers_folder_round_trips_key_for_key(tmp_path):
    weights = write_pipeline(tmp_path / "pipe", COURSE)
    md.save_pretrained(*md.load_pretrained(tmp_path / "pipe"), tmp_path / "out", format="diffusers")
    written = load_file(str(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert written.keys() == weights.keys() and all(torch.equal(written[k], weights[k]) for k in weights)
    config = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert {k: config[k] for k in COURSE} == COURSE
    assert all(config[k] == v for k, v in UNET_DEFAULTS.items() if not k.startswith("_"))


def test_a_minidiff_unet2d_without_qkv_bias_exports_zero_biases(tmp_path):
    torch.manual_seed(0)
    model = md.nn.UNet2D(num_train_timesteps=1000, flip_sin_to_cos=True).eval()
    md.save_pretrained(model, md.NoiseSchedule.linear(1000), tmp_path / "pipe", format="diffusers",
                       sample_shape=(1, 28, 28))
    weights = load_file(str(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == unet_shapes(COURSE)
    assert not weights["mid_block.attentions.0.to_k.bias"].any()
    assert_same_as_diffusers(model, weights, COURSE)


def test_what_diffusers_cannot_express_is_refused(tmp_path):
    native = md.nn.UNet2D()                                           # embeds t * 1000, not the step index
    with pytest.raises(ValueError, match="num_train_timesteps=1000"):
        md.save_pretrained(native, md.NoiseSchedule.linear(1000), tmp_path / "a", format="diffusers",
                           sample_shape=(1, 28, 28))
    diffusers_time = md.nn.UNet2D(num_train_timesteps=1000, flip_sin_to_cos=True)
    with pytest.raises(ValueError, match="sample_shape"):
        md.save_pretrained(diffusers_time, md.NoiseSchedule.linear(1000), tmp_path / "b", format="diffusers")
    with pytest.raises(ValueError, match="format must be"):
        md.save_pretrained(diffusers_time, md.NoiseSchedule.linear(1000), tmp_path / "c", format="onnx")
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.parametrize("where, change, named", [
    ("unet", {"center_input_sample": True}, "center_input_sample"),
    ("unet", {"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ("unet", {"num_class_embeds": 10}, "num_class_embeds"),
    ("unet", {"some_new_setting": 1}, "some_new_setting"),
    ("unet", {"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}, "up_block_types"),
    ("unet", {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D"]}, "down_block_types"),
    ("unet", {"norm_eps": 1e-6}, "norm_eps"),
    ("scheduler", {"beta_schedule": "sigmoid"}, "beta_schedule"),
    ("scheduler", {"some_new_setting": 1}, "some_new_setting"),
    ("scheduler", {"prediction_type": "flow"}, "prediction_type"),
])
def test_a_setting_minidiff_cannot_honour_is_refused_by_name(tmp_path, where, change, named):
    write_pipeline(tmp_path / "pipe", {**COURSE, **(change if where == "unet" else {})},
                   change if where == "scheduler" else None,
                   weights=random_weights(COURSE))
    with pytest.raises(CheckpointError, match=named):
        md.load_pretrained(tmp_path / "pipe")


def test_a_pickled_bin_is_read_weights_only_and_old_attention_names_are_renamed(tmp_path):
    weights = write_pipeline(tmp_path / "pipe", COURSE)
    os.remove(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    old = {}
    for name, tensor in weights.items():                             # diffusers < 0.15 named attention this way
        for new, before in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".{new}." in name and ".attentions." in name:
                name = name.replace(f".{new}.", f".{before}.")
        old[name] = tensor
    torch.save(old, tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin")
    model, _ = md.load_pretrained(tmp_path / "pipe")
    assert_same_as_diffusers(model, weights, COURSE)


class _Trap:
    """Unpickling this runs open(path, "w"): a file appears if the pickle is ever executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_code_running_pickle_never_runs(tmp_path):
    write_pipeline(tmp_path / "pipe", COURSE)
    os.remove(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": _Trap(str(marker))}, tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        md.load_pretrained(tmp_path / "pipe")
    assert not marker.exists()
    assert main(["sample", "--checkpoint", str(tmp_path / "pipe"), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert not marker.exists()


def test_the_cli_samples_a_diffusers_folder_at_its_size(tmp_path, capsys):
    write_pipeline(tmp_path / "pipe", COURSE, {"prediction_type": "v_prediction"})
    assert main(["sample", "--checkpoint", str(tmp_path / "pipe"), "--n", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "grid.png"), "--out-dir", str(tmp_path / "each")]) == 0
    assert {Image.open(p).size for p in (tmp_path / "each").glob("*.png")} == {(28, 28)}
    (tmp_path / "pipe" / "unet" / "config.json").write_text(json.dumps({**UNET_DEFAULTS, **COURSE,
                                                                        "sample_size": None}))
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "pipe"), "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_the_readme_export_runs_as_written(tmp_path, monkeypatch):
    import re
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        section = f.read().split("**From minidiff into diffusers.**")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README export", "exec"), {})
    weights = load_file(str(tmp_path / "digits_for_diffusers" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == unet_shapes(COURSE)
    model, schedule = md.load_pretrained(tmp_path / "digits_for_diffusers")
    assert model.sample_shape == (1, 28, 28) and schedule.T == 1000
