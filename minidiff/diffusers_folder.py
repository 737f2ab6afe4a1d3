"""diffusers pipeline folders, read and written without diffusers: a UNet2DModel + DDPMScheduler as a UNet2D.

The layout ``DDPMPipeline.save_pretrained`` writes (and the Hugging Face course shares):

    my_pipeline/
      model_index.json                          {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                 "scheduler": ["diffusers", "DDPMScheduler"], ...}
      unet/config.json                          UNet2DModel's constructor arguments
      unet/diffusion_pytorch_model.safetensors  its weights, under diffusers' names
      scheduler/scheduler_config.json           DDPMScheduler's: num_train_timesteps, beta_schedule, prediction_type..

    model, schedule = md.load_pretrained("my_pipeline")          # an md.nn.UNet2D and an md.NoiseSchedule
    x = md.sample(model, schedule, (16, *model.sample_shape))    # model.prediction_type comes from the scheduler
    md.save_pretrained(model, schedule, "again", format="diffusers")

How the two models meet. diffusers calls ``unet(x, i)`` with the step index i; minidiff calls
``model(x, t)`` with t = (i + 1) / T. A UNet2D built with ``num_train_timesteps=T`` turns t back into i
(nn/unet2d.py), ``flip_sin_to_cos`` and ``freq_shift`` lay out the sinusoidal features as diffusers' Timesteps
does, and ``qkv_bias=True`` gives the attention diffusers' q/k/v biases; the rest of UNet2DModel (DownBlock2D,
AttnDownBlock2D, UNetMidBlock2D, AttnUpBlock2D, UpBlock2D, ResnetBlock2D, Attention with its group norm,
conv_norm_out) is the same arithmetic as UNet2D's, so only the weights' names differ (``diffusers_name``).

Every setting in the two configs is either honoured or refused with an error naming it. Sampling-loop settings of
the scheduler (clip_sample, variance_type, timestep_spacing, thresholding, ...) describe diffusers' sampler, not
the model: minidiff's samplers take their own options per call, so those keys are read and not used (listed in
SAMPLING_KEYS). A folder whose weights are only a pickled ``diffusion_pytorch_model.bin`` is read with
``torch.load(weights_only=True)``, which refuses anything that would run code.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .file_io import (
    CheckpointError,
    PathLike,
    atomic_folder,
    atomic_save_safetensors,
    atomic_write_text,
    safe_load_safetensors,
    safe_torch_load,
)
from .schedule import PREDICTION_TYPES, NoiseSchedule

DIFFUSERS_VERSION = "0.30.0"       # the version written into the configs (the format has been stable since 0.19)
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
WEIGHTS, PICKLED_WEIGHTS = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"

# UNet2DModel settings minidiff honours only at this value (anything else is refused by name)
FIXED_UNET = {"center_input_sample": False, "time_embedding_type": "positional", "mid_block_type": "UNetMidBlock2D",
              "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv",
              "act_fn": "silu", "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "class_embed_type": None,
              "num_class_embeds": None, "attention_legacy_order": False}
HONOURED_UNET = ("sample_size", "in_channels", "out_channels", "freq_shift", "flip_sin_to_cos", "down_block_types",
                 "up_block_types", "block_out_channels", "layers_per_block", "dropout", "attention_head_dim",
                 "norm_num_groups", "attn_norm_num_groups", "add_attention", "time_embedding_dim",
                 "num_train_timesteps")
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr", "prediction_type")
SAMPLING_KEYS = ("variance_type", "clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio",
                 "sample_max_value", "timestep_spacing", "steps_offset", "set_alpha_to_one")
DOWN_TYPES = {"plain": "DownBlock2D", "attention": "AttnDownBlock2D"}
UP_TYPES = {"plain": "UpBlock2D", "attention": "AttnUpBlock2D"}


# ------------------------------------------------------------------------------------------ names
# minidiff UNet2D name -> diffusers UNet2DModel name, one rule per part (applied in this order)
_RULES = [
    (r"^time_mlp\.0\.", "time_embedding.linear_1."),
    (r"^time_mlp\.2\.", "time_embedding.linear_2."),
    (r"^down\.(\d+)\.resample\.conv\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^up\.(\d+)\.resample\.conv\.", r"up_blocks.\1.upsamplers.0.conv."),
    (r"^down\.(\d+)\.", r"down_blocks.\1."),
    (r"^up\.(\d+)\.", r"up_blocks.\1."),
    (r"^mid_resnet1\.", "mid_block.resnets.0."),
    (r"^mid_resnet2\.", "mid_block.resnets.1."),
    (r"^mid_attention\.", "mid_block.attentions.0."),
    (r"\.emb_proj\.", ".time_emb_proj."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.\d+)\.attn\.to_out\.", r"\1.to_out.0."),
    (r"(attentions\.\d+)\.attn\.", r"\1."),
    (r"^norm_out\.", "conv_norm_out."),
]
# attention weights as diffusers wrote them before 0.15 (still found in shared .bin files)
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_name(name: str) -> str:
    """A UNet2D state_dict name -> UNet2DModel's: "down.1.attentions.0.attn.to_out.weight" ->
    "down_blocks.1.attentions.0.to_out.0.weight"."""
    for pattern, replacement in _RULES:
        name = re.sub(pattern, replacement, name)
    return name


def _current_name(name: str) -> str:
    """diffusers' pre-0.15 attention names (query, key, value, proj_attn) -> today's."""
    match = re.match(r"^(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", name)
    return f"{match[1]}.{_OLD_ATTENTION[match[2]]}.{match[3]}" if match else name


# ------------------------------------------------------------------------------------------ configs
def unet_kwargs_from_config(config: dict, T: int, where: str) -> Tuple[dict, Optional[tuple]]:
    """UNet2DModel's config.json -> (UNet2D kwargs, sample shape (C, H, W) or None). Refuses what it cannot honour."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{where}: _class_name {config['_class_name']!r} is not UNet2DModel, the only "
                              f"diffusers model minidiff reads")
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in FIXED_UNET:
            if value != FIXED_UNET[key] and not (key == "norm_eps" and math.isclose(value, 1e-5)):
                raise CheckpointError(f"{where}: {key}={value!r} is not supported by minidiff's UNet2D "
                                      f"(only {FIXED_UNET[key]!r})")
        elif key not in HONOURED_UNET:
            raise CheckpointError(f"{where}: unknown UNet2DModel setting {key!r}; minidiff reads "
                                  f"{sorted(HONOURED_UNET)} and {sorted(FIXED_UNET)} at their defaults")
    channels = list(config.get("block_out_channels", (224, 448, 672, 896)))
    down = list(config.get("down_block_types", ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                                "AttnDownBlock2D")))
    up = list(config.get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    kinds = []
    for name in down:
        if name not in DOWN_TYPES.values():
            raise CheckpointError(f"{where}: down_block_types entry {name!r} is not supported (only "
                                  f"{list(DOWN_TYPES.values())})")
        kinds.append("attention" if name == "AttnDownBlock2D" else "plain")
    if up != [UP_TYPES[kind] for kind in reversed(kinds)]:
        raise CheckpointError(f"{where}: up_block_types {up} must mirror down_block_types {down} (UNet2D gives each "
                              f"level one kind, down and up): expected {[UP_TYPES[k] for k in reversed(kinds)]}")
    groups = config.get("norm_num_groups", 32)
    if config.get("attn_norm_num_groups") not in (None, groups):
        raise CheckpointError(f"{where}: attn_norm_num_groups={config['attn_norm_num_groups']!r} differs from "
                              f"norm_num_groups={groups!r}; minidiff's UNet2D uses one group count")
    if config.get("time_embedding_dim") not in (None, 4 * channels[0]):
        raise CheckpointError(f"{where}: time_embedding_dim={config['time_embedding_dim']!r} is not supported "
                              f"(only 4 * block_out_channels[0] = {4 * channels[0]})")
    in_channels = config.get("in_channels", 3)
    kwargs = {"in_channels": in_channels, "out_channels": config.get("out_channels", 3),
              "block_out_channels": channels, "block_types": kinds,
              "layers_per_block": config.get("layers_per_block", 2), "norm_groups": groups,
              "dropout": float(config.get("dropout", 0.0)), "attention_head_dim": config.get("attention_head_dim", 8),
              "mid_attention": bool(config.get("add_attention", True)), "qkv_bias": True,
              "num_train_timesteps": T, "flip_sin_to_cos": bool(config.get("flip_sin_to_cos", True)),
              "freq_shift": config.get("freq_shift", 0)}
    size = config.get("sample_size")
    if size is None:
        return kwargs, None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return kwargs, (in_channels, int(height), int(width))


def unet_config(model: nn.Module, sample_shape: tuple) -> dict:
    """The config.json UNet2DModel.from_pretrained reads for this UNet2D (the keys diffusers writes)."""
    kinds = model.block_types
    height, width = sample_shape[1:]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu", "add_attention": model.mid_attention_on, "attention_head_dim": model.attention_head_dim,
        "attn_norm_num_groups": None, "block_out_channels": list(model.block_out_channels),
        "center_input_sample": False, "class_embed_type": None,
        "down_block_types": [DOWN_TYPES[k] for k in kinds], "downsample_padding": 1, "downsample_type": "conv",
        "dropout": model.dropout_p, "flip_sin_to_cos": model.time_embed.flip_sin_to_cos,
        "freq_shift": _plain_number(model.time_embed.freq_shift), "in_channels": model.in_channels,
        "layers_per_block": model.layers_per_block, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": model.norm_groups, "num_class_embeds": None, "num_train_timesteps": None,
        "out_channels": model.out_channels, "resnet_time_scale_shift": "default",
        "sample_size": height if height == width else [height, width], "time_embedding_type": "positional",
        "up_block_types": [UP_TYPES[k] for k in reversed(kinds)], "upsample_type": "conv",
    }


def schedule_from_config(config: dict, where: str) -> Tuple[NoiseSchedule, str]:
    """DDPMScheduler / DDIMScheduler's scheduler_config.json -> (NoiseSchedule, prediction_type).

    The betas are computed as diffusers computes them (float32), so alphas_cumprod agree to float32 precision."""
    if config.get("_class_name", "DDPMScheduler") not in SCHEDULERS:
        raise CheckpointError(f"{where}: scheduler {config['_class_name']!r} is not supported (only {SCHEDULERS})")
    for key in config:
        if not key.startswith("_") and key not in SCHEDULE_KEYS + SAMPLING_KEYS:
            raise CheckpointError(f"{where}: unknown scheduler setting {key!r}")
    T = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    elif kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        betas = diffusers_betas(kind, T, start, end)
    else:
        raise CheckpointError(f"{where}: beta_schedule {kind!r} is not supported (only 'linear', 'scaled_linear', "
                              f"'squaredcos_cap_v2' or trained_betas)")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(f"{where}: prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    try:
        return NoiseSchedule.from_betas(betas.double(), zero_terminal_snr=zero_snr), prediction_type
    except ValueError as error:
        raise CheckpointError(f"{where}: {error}") from None


def diffusers_betas(kind: str, T: int, beta_start: float = 0.0001, beta_end: float = 0.02) -> torch.Tensor:
    """The float32 betas diffusers' schedulers compute for beta_schedule `kind` (T of them)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if kind == "scaled_linear":                       # sqrt(beta) evenly spaced
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":                   # Nichol & Dhariwal 2021 Eq. 17, s = 0.008, beta <= 0.999
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float32)
    raise ValueError(f"unknown beta_schedule {kind!r}")


def scheduler_config(schedule: NoiseSchedule, prediction_type: str) -> dict:
    """DDPMScheduler's scheduler_config.json for `schedule`: a named beta_schedule when the betas are one (to
    float32 precision), else trained_betas."""
    config = schedule.to_config()
    betas = torch.tensor(config["betas"], dtype=torch.float64)
    T, start, end = len(betas), float(betas[0]), float(betas[-1])
    named = {"beta_schedule": "linear", "trained_betas": None}
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        if torch.allclose(diffusers_betas(kind, T, start, end).double(), betas, rtol=1e-6, atol=0):
            named = {"beta_schedule": kind, "trained_betas": None}
            break
    else:
        named["trained_betas"] = betas.tolist()
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, "beta_end": end,
            **named, "beta_start": start, "clip_sample": True, "clip_sample_range": 1.0,
            "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": T, "prediction_type": prediction_type,
            "rescale_betas_zero_snr": bool(config.get("zero_terminal_snr", False)), "sample_max_value": 1.0,
            "steps_offset": 0, "thresholding": False, "timestep_spacing": "leading", "variance_type": "fixed_small"}


def _plain_number(value: float):
    return int(value) if float(value).is_integer() else float(value)


# ------------------------------------------------------------------------------------------ reading
def _read_json(path: str) -> dict:
    """The JSON object in `path` (presets.read_json: errors name the file); a missing file is a CheckpointError."""
    from .presets import read_json
    if not os.path.isfile(path):
        raise CheckpointError(f"diffusers folder incomplete: {path} not found")
    return read_json(path)


def read_unet_weights(unet_folder: str) -> Dict[str, torch.Tensor]:
    """unet/diffusion_pytorch_model.safetensors, else the pickled .bin read with weights_only=True (a pickle
    that would run code is refused), with pre-0.15 attention names renamed."""
    path = os.path.join(unet_folder, WEIGHTS)
    if os.path.isfile(path):
        weights = safe_load_safetensors(path)
    elif os.path.isfile(os.path.join(unet_folder, PICKLED_WEIGHTS)):
        weights = safe_torch_load(os.path.join(unet_folder, PICKLED_WEIGHTS), "cpu", what="weights file")
        if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
            raise CheckpointError(f"{os.path.join(unet_folder, PICKLED_WEIGHTS)} is not a state_dict")
    else:
        raise CheckpointError(f"diffusers folder incomplete: {unet_folder} has neither {WEIGHTS} nor {PICKLED_WEIGHTS}")
    return {_current_name(name): tensor for name, tensor in weights.items()}


def load_diffusers(folder: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, NoiseSchedule]:
    """(UNet2D, NoiseSchedule) from a DDPMPipeline / DDIMPipeline folder; see the module docstring.

    The model is in eval mode, carries ``model.sample_shape`` (from sample_size, when the config has one) and
    ``model.prediction_type`` (from the scheduler), and can be re-saved in either format."""
    from .checkpoint import remember_recorded
    from .model_table import build_model
    folder = os.fspath(folder)
    index_path = os.path.join(folder, "model_index.json")
    index = _read_json(index_path)
    if index.get("_class_name") not in PIPELINES:
        raise CheckpointError(f"{index_path}: pipeline {index.get('_class_name')!r} is not supported "
                              f"(only {PIPELINES})")
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if key not in ("unet", "scheduler"):
            raise CheckpointError(f"{index_path}: component {key!r} is not supported (only unet and scheduler)")
        wanted = ["UNet2DModel"] if key == "unet" else list(SCHEDULERS)
        if not isinstance(value, list) or len(value) != 2 or value[1] not in wanted:
            raise CheckpointError(f"{index_path}: {key} must be [\"diffusers\", one of {wanted}], got {value!r}")
    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    schedule, prediction_type = schedule_from_config(_read_json(scheduler_path), scheduler_path)
    config_path = os.path.join(folder, "unet", "config.json")
    kwargs, sample_shape = unet_kwargs_from_config(_read_json(config_path), schedule.T, config_path)
    try:
        model = build_model("UNet2D", **kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: cannot build the UNet2D it describes: {error}") from None
    load_diffusers_weights(model, read_unet_weights(os.path.join(folder, "unet")), os.path.join(folder, "unet"))
    remember_recorded(model, sample_shape, prediction_type, config_path)
    return model.to(device).eval(), schedule


def load_diffusers_weights(model: nn.Module, weights: Dict[str, torch.Tensor], where: str) -> None:
    """Load a UNet2DModel state_dict (diffusers' names) into a UNet2D; every name and shape must match."""
    ours = {diffusers_name(name): name for name in model.state_dict()}
    missing, unexpected = sorted(set(ours) - set(weights)), sorted(set(weights) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not fit the config: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    state = {}
    for name, tensor in weights.items():
        expected = model.state_dict()[ours[name]].shape
        if tensor.shape != expected:
            raise CheckpointError(f"{where}: {name} has shape {tuple(tensor.shape)}, the config needs "
                                  f"{tuple(expected)}")
        state[ours[name]] = tensor
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------ writing
def save_diffusers(model: nn.Module, schedule: Any, folder: PathLike, prediction_type: Optional[str] = None,
                   sample_shape=None) -> str:
    """Write `model` (a UNet2D with diffusers' time convention) and `schedule` as a DDPMPipeline folder
    (atomically, as save_pretrained does); return the model_index.json path."""
    from .guidance import model_prediction_type
    from .model_table import sample_shape_of
    from .nn.unet2d import UNet2D
    folder_name = os.fspath(folder)
    if not isinstance(model, UNet2D):
        raise TypeError(f"format='diffusers' writes a UNet2D (diffusers' UNet2DModel), got {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"format='diffusers' needs the NoiseSchedule the model was trained with, got "
                        f"{type(schedule).__name__}")
    if model.num_train_timesteps != schedule.T:
        embeds = "t * time_scale" if model.num_train_timesteps is None else f"i = t * {model.num_train_timesteps} - 1"
        raise ValueError(f"this UNet2D embeds {embeds}; diffusers' UNet2DModel embeds the step index i of the "
                         f"{schedule.T}-step schedule: build the UNet2D with num_train_timesteps={schedule.T} (and "
                         f"flip_sin_to_cos=True for diffusers' default layout) to share it as a diffusers folder")
    for name, bad in (("num_class_embeds", model.num_class_embeds is not None),
                      ("time_scale_shift", model.time_scale_shift)):
        if bad:
            raise ValueError(f"format='diffusers': a UNet2D with {name} set has no UNet2DModel equivalent minidiff "
                             f"writes (diffusers' mid-block attention then differs)")
    shape = sample_shape_of(model, sample_shape)
    if shape is None:
        raise ValueError(f"cannot save to {folder_name}: the shape of the model's samples is not known; pass "
                         f"sample_shape=(channels, height, width)")
    if shape[0] != model.in_channels:
        raise ValueError(f"sample_shape {shape} has {shape[0]} channels, the UNet2D takes {model.in_channels}")
    prediction_type = model_prediction_type(model, prediction_type)
    weights = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().clone()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"refusing to save {folder_name}: weight {name!r} is not finite")
        weights[diffusers_name(name)] = tensor
    for name, module in model.named_modules():          # UNet2DModel's attention always has q/k/v biases:
        if name.endswith(".attn") and module.to_q.bias is None:   # zero ones compute the same as none
            prefix = diffusers_name(name + ".to_q.weight").rsplit(".to_q.", 1)[0]
            for part in ("to_q", "to_k", "to_v"):
                weights[f"{prefix}.{part}.bias"] = torch.zeros(module.to_q.out_features)
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    with atomic_folder(folder_name) as tmp:
        for sub in ("unet", "scheduler"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        atomic_save_safetensors(weights, os.path.join(tmp, "unet", WEIGHTS), metadata={"format": "pt"})
        atomic_write_text(_json(unet_config(model, shape)), os.path.join(tmp, "unet", "config.json"))
        atomic_write_text(_json(scheduler_config(schedule, prediction_type)),
                          os.path.join(tmp, "scheduler", "scheduler_config.json"))
        atomic_write_text(_json(index), os.path.join(tmp, "model_index.json"))
    return os.path.join(folder_name, "model_index.json")


def _json(value: dict) -> str:
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"
