"""Pretrained folders: a trained model and its noise process, saved as a small readable folder.

A checkpoint (checkpoint.py) is one file for RESUMING training: optimiser state, RNG state, both sets
of weights. A pretrained folder is for SHARING and SAMPLING: the weights as safetensors files (raw tensors
and a JSON header: reading one cannot run code) and a JSON index you can open in a text editor.

    my_model/
      minidiff.json        the index: which class to build with which kwargs, the schedule or SDE, the weights files
      model.safetensors    the model's weights
      ema.safetensors      the EMA weights, when saved (load_pretrained uses them by default)

    {
      "format": "minidiff-pretrained",
      "format_version": 2,
      "minidiff_version": "0.1.0",
      "model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 64, "n_cfeat": 5, "height": 16}},
      "schedule": {"betas": [0.0001, ...], "zero_terminal_snr": false},     # discrete-time models, else null
      "sde": null,                                                          # score models: {"class": "VESDE", ...}
      "prediction_type": "epsilon",                                         # or null when not known
      "class_names": ["cat", "dog"],                                        # what context k means, or null
      "sampling": {"sampler": "ddim", "steps": 4, "spacing": "trailing"},   # how to sample it, or null
      "sample_shape": [3, 16, 16],                                          # one sample: channels, height, width
      "weights": "model.safetensors",
      "ema_weights": "ema.safetensors",                                     # or null
      "sha256": {"model.safetensors": "3f1c...", "ema.safetensors": "9a0b..."}
    }

    md.save_pretrained(model, schedule, "my_model", ema_model=ema)
    model, schedule = md.load_pretrained("my_model")
    x = md.sample(model, schedule, (16, *model.sample_shape))   # model.prediction_type is used too

``save_pretrained(..., format="diffusers")`` writes a diffusers pipeline folder instead, and
``load_pretrained`` reads those too (diffusers_folder.py).

Folders of format_version 1 (weights in ``model.pt``, a state_dict read with ``torch.load(weights_only=True)``
only) still load. Non-finite weights are never written. A save is atomic as a whole: the new files are
written into a temporary sibling folder that is then swapped in, so a save that fails (a full disk, a
crash) leaves the previous folder loadable and a half-written folder never carries an index.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from . import __version__
from .checkpoint import load_checkpoint, model_from_checkpoint, remember_recorded, schedule_or_sde_from_checkpoint
from .file_io import (
    CheckpointError,
    PathLike,
    atomic_folder,
    atomic_save_safetensors,
    atomic_write_text,
    safe_load_safetensors,
    safe_torch_load,
    sha256_of,
)
from .model_table import build_model, decode_kwargs, model_spec, sample_shape_of
from .samplers import SAMPLERS
from .schedule import SPACINGS, NoiseSchedule
from .sde import SDE, sde_from_config

FORMAT, FORMAT_VERSION = "minidiff-pretrained", 2
INDEX_NAME, WEIGHTS_NAME, EMA_WEIGHTS_NAME = "minidiff.json", "model.safetensors", "ema.safetensors"


# ---------------------------------------------------------------------------------- writing
def save_pretrained(model: nn.Module, schedule_or_sde: Any, folder: PathLike, *,
                    ema_model: Optional[nn.Module] = None, model_kwargs: Optional[dict] = None,
                    prediction_type: Optional[str] = None, class_names: Optional[list] = None,
                    sampling: Optional[dict] = None, sample_shape=None, format: str = "minidiff") -> str:
    """Write `model` (or `ema_model`, when given) and its noise process to `folder`; return the index path.

    `schedule_or_sde`: the NoiseSchedule or SDE the model was trained with (None for, say, an
    autoencoder). `model_kwargs`: the constructor kwargs, needed unless the model was made with
    ``build_model`` or loaded by minidiff (then ``model.minidiff_spec`` remembers them).
    `prediction_type`: what the network predicts ("epsilon", "sample", "v_prediction"), if you know.
    `class_names`: the name of each class id, for a class-conditional model (``minidiff sample --context NAME``).
    `sampling`: how the model is meant to be sampled, {"sampler", "steps", "spacing"} (any of them), e.g. a
    distilled model's own grid; ``minidiff sample`` uses it when no --sampler/--steps/--spacing is given.
    `sample_shape`: (C, H, W) of one sample; default ``model.sample_shape`` (a loaded model has it) or the
    size the architecture fixes (ContextUnet). A model with a noise process must have one: nothing guesses it.
    `format`: "minidiff" (this layout) or "diffusers" (a DDPMPipeline folder, see diffusers_folder.py;
    a UNet2D with diffusers' time convention, a NoiseSchedule; returns the model_index.json path).
    """
    if format == "diffusers":
        from .diffusers_folder import save_diffusers
        if ema_model is not None or model_kwargs is not None or class_names is not None or sampling is not None:
            raise ValueError("format='diffusers' takes no ema_model, model_kwargs, class_names or sampling: pass "
                             "the weights to share as `model`")
        return save_diffusers(model, schedule_or_sde, folder, prediction_type=prediction_type,
                              sample_shape=sample_shape)
    if format != "minidiff":
        raise ValueError(f"format must be 'minidiff' or 'diffusers', got {format!r}")
    spec = model_spec(model, model_kwargs)
    if spec["kwargs"] is None:
        raise CheckpointError(f"cannot save {spec['class']} to {os.fspath(folder)}: its constructor kwargs are "
                              f"unknown; pass model_kwargs={{...}} (or build it with minidiff.model_table.build_model)")
    schedule, sde = _split_process(schedule_or_sde)
    shape = sample_shape_of(model, sample_shape) or (sample_shape_of(ema_model) if ema_model is not None else None)
    if shape is None and (schedule is not None or sde is not None):
        raise ValueError(f"cannot save {spec['class']} to {os.fspath(folder)}: the shape of its samples is not "
                         f"known; pass sample_shape=(channels, height, width)")
    if prediction_type is None:
        prediction_type = getattr(model, "prediction_type", None)
    files = {WEIGHTS_NAME: finite_weights(model, folder)}
    if ema_model is not None:
        files[EMA_WEIGHTS_NAME] = finite_weights(ema_model, folder)
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "minidiff_version": __version__,
        "model": spec,
        "schedule": schedule.to_config() if schedule is not None else None,
        "sde": sde.to_config() if sde is not None else None,
        "prediction_type": prediction_type,
        "class_names": [str(name) for name in class_names] if class_names is not None else None,
        "sampling": check_sampling(sampling, "sampling") if sampling is not None else None,
        "sample_shape": list(shape) if shape is not None else None,
        "weights": WEIGHTS_NAME,
        "ema_weights": EMA_WEIGHTS_NAME if ema_model is not None else None,
    }
    return write_folder(folder, index, files)


def write_folder(folder: PathLike, index: dict, files: Dict[str, Dict[str, torch.Tensor]]) -> str:
    """Write `files` ({file name: state_dict}) as safetensors, then `index` (with their SHA-256) as
    minidiff.json, atomically as a whole (file_io.atomic_folder); return the index path."""
    with atomic_folder(folder) as tmp:          # a failed save leaves the previous folder as it was
        for name, weights in files.items():
            atomic_save_safetensors(weights, os.path.join(tmp, name))
        index = {**index, "sha256": {name: sha256_of(os.path.join(tmp, name)) for name in files}}
        atomic_write_text(_readable_json(index) + "\n", os.path.join(tmp, INDEX_NAME))
    return os.path.join(os.fspath(folder), INDEX_NAME)


def finite_weights(model: nn.Module, folder: PathLike) -> Dict[str, torch.Tensor]:
    """A CPU copy of model.state_dict(); FloatingPointError if a weight is not finite."""
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"refusing to save {os.fspath(folder)}: weight {name!r} is not finite")
    return weights


def export_checkpoint(checkpoint_path: PathLike, folder: PathLike, ema: bool = True,
                      model_classes: Optional[Dict[str, type]] = None, sample_shape=None) -> str:
    """Turn a training checkpoint into a pretrained folder (with its EMA weights, if `ema` and it has them).

    sample_shape: (C, H, W), needed only for a checkpoint written before checkpoints recorded it."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint, False, "cpu", model_classes, os.fspath(checkpoint_path))
    ema_model = None
    if ema and checkpoint.get("ema_state_dict") is not None:
        ema_model = model_from_checkpoint(checkpoint, True, "cpu", model_classes, os.fspath(checkpoint_path))
    prediction_type = (checkpoint.get("train_config") or {}).get("prediction_type")
    return save_pretrained(model, schedule_or_sde_from_checkpoint(checkpoint), folder, ema_model=ema_model,
                           prediction_type=prediction_type, class_names=checkpoint.get("class_names"),
                           sample_shape=sample_shape)


def check_sampling(sampling: Any, name: str) -> dict:
    """A sampling entry {"sampler": str, "steps": int >= 1, "spacing": str}, each optional; ValueError names it."""
    if not isinstance(sampling, dict):
        raise ValueError(f"{name} must be a dict with keys sampler, steps, spacing, got {sampling!r}")
    unknown = set(sampling) - {"sampler", "steps", "spacing"}
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; it takes sampler, steps and spacing")
    if "sampler" in sampling and sampling["sampler"] not in SAMPLERS:
        raise ValueError(f"{name}: sampler must be one of {tuple(SAMPLERS)}, got {sampling['sampler']!r}")
    steps = sampling.get("steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name}: steps must be an integer >= 1, got {steps!r}")
    if "spacing" in sampling and sampling["spacing"] not in SPACINGS:
        raise ValueError(f"{name}: spacing must be one of {SPACINGS}, got {sampling['spacing']!r}")
    return dict(sampling)


def _split_process(schedule_or_sde) -> Tuple[Optional[NoiseSchedule], Any]:
    """(schedule, None), (None, sde) or (None, None)."""
    if schedule_or_sde is None or isinstance(schedule_or_sde, NoiseSchedule):
        return schedule_or_sde, None
    if isinstance(schedule_or_sde, SDE):
        return None, schedule_or_sde
    raise TypeError(f"schedule_or_sde must be a NoiseSchedule, an SDE or None, got {type(schedule_or_sde).__name__}")


def _readable_json(value: Any, depth: int = 0) -> str:
    """JSON with one dict entry per line and every list on ONE line (the T betas stay a single line)."""
    if isinstance(value, dict) and value:
        pad = "  " * (depth + 1)
        entries = [f"{pad}{json.dumps(str(key))}: {_readable_json(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(entries) + "\n" + "  " * depth + "}"
    return json.dumps(value, allow_nan=False)        # floats are written exactly (repr), so betas round-trip


# ---------------------------------------------------------------------------------- reading
def read_index(folder: PathLike) -> dict:
    """The parsed minidiff.json of a pretrained folder, checked. Errors name the file.

    FileNotFoundError / NotADirectoryError for a missing folder or a file given instead of a folder;
    CheckpointError (a ValueError) for a missing index, invalid JSON or a different format.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"pretrained folder not found: {folder}")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is a file, not a pretrained folder (a checkpoint file? "
                                 f"use minidiff.load_pipeline)")
    path = os.path.join(folder, INDEX_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder} is not a minidiff pretrained folder: it has no {INDEX_NAME} "
                              f"(not written by save_pretrained, or the save did not finish)")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minidiff pretrained index (its \"format\" is not {FORMAT!r})")
    if not isinstance(index.get("format_version"), int) or index["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {index.get('format_version')!r}; this minidiff reads "
                              f"versions up to {FORMAT_VERSION} (written by a newer minidiff?)")
    for key in ("model", "weights"):
        if key not in index:
            raise CheckpointError(f"{path} has no {key!r} entry")
    for key in ("weights", "ema_weights"):
        weights = index.get(key)
        if key == "ema_weights" and weights is None:
            continue
        if not isinstance(weights, str) or os.path.basename(weights) != weights or weights in ("", ".", ".."):
            raise CheckpointError(f"{path}: \"{key}\" must be a file name inside the folder, got {weights!r}")
    if index.get("sampling") is not None:
        try:
            check_sampling(index["sampling"], f"{path}: \"sampling\"")
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    if not isinstance(index.get("sha256", {}), dict):
        raise CheckpointError(f"{path}: \"sha256\" must be {{file name: hex digest}}, got {index['sha256']!r}")
    return index


def load_pretrained(folder: PathLike, device: Union[str, torch.device] = "cpu",
                    model_classes: Optional[Dict[str, type]] = None, ema: bool = True) -> Tuple[nn.Module, Any]:
    """(model, schedule_or_sde) from a folder written by ``save_pretrained``; the model in eval mode.

    Also reads a diffusers DDPMPipeline / DDIMPipeline folder (model_index.json; see diffusers_folder.py)
    and a TextToImage folder (then (pipe, schedule)). The loaded model carries what the folder records:
    ``model.sample_shape`` (C, H, W) and ``model.prediction_type``, used by ``minidiff.sample`` and the CLI.

    The EMA weights when the folder has them and `ema`, else the plain ones.
    The model is rebuilt from the index's class and kwargs (`model_classes` adds classes of your own,
    as in ``load_model``), then its weights are loaded strictly: every name and shape must match.
    schedule_or_sde is a NoiseSchedule, an SDE, or None if the folder records neither.
    """
    if is_diffusers_folder(folder):
        from .diffusers_folder import load_diffusers
        return load_diffusers(folder, device)
    index = read_index(folder)
    if index.get("pipeline") == "TextToImage":
        from .text_to_image import TextToImage  # imported here: text_to_image.py imports this module
        pipe = TextToImage.load_pretrained(folder, device)
        return pipe, pipe.schedule
    index_path = os.path.join(os.fspath(folder), INDEX_NAME)
    spec = index["model"]
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(f"{index_path}: \"model\" must be {{\"class\": name, \"kwargs\": {{...}}}}, got {spec!r}")
    try:
        model = build_model(spec.get("class"), model_classes, **decode_kwargs(spec["kwargs"]))
    except CheckpointError as error:
        raise CheckpointError(f"{index_path}: {error}") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{index_path}: cannot build {spec.get('class')}({spec['kwargs']}): {error}") from None
    weights_name = index["ema_weights"] if ema and index.get("ema_weights") else index["weights"]
    weights_path = os.path.join(os.fspath(folder), weights_name)
    try:
        model.load_state_dict(read_weights(folder, index, weights_name))
    except RuntimeError as error:
        raise CheckpointError(f"{weights_path}: the weights do not fit {spec['class']}({spec['kwargs']}) "
                              f"named in {INDEX_NAME}: {error}") from None
    remember_recorded(model, index.get("sample_shape"), index.get("prediction_type"), index_path)
    return model.to(device).eval(), _process_from_index(index, index_path)


def is_diffusers_folder(folder: PathLike) -> bool:
    """True for a folder holding diffusers' model_index.json and no minidiff.json."""
    folder = os.fspath(folder)
    return os.path.isfile(os.path.join(folder, "model_index.json")) and \
        not os.path.isfile(os.path.join(folder, INDEX_NAME))


def _process_from_index(index: dict, index_path: str):
    """The NoiseSchedule or SDE the index records (None if neither)."""
    schedule, sde = index.get("schedule"), index.get("sde")
    if schedule is not None and sde is not None:
        raise CheckpointError(f"{index_path} records both a schedule and an SDE; keep one of them")
    try:
        if sde is not None:
            return sde_from_config(sde)
        if schedule is not None:
            return NoiseSchedule.from_config(schedule)
    except (KeyError, TypeError, ValueError) as error:
        entry = "sde" if sde is not None else "schedule"
        raise CheckpointError(f"{index_path}: bad {entry!r} entry: {error}") from None
    return None


def read_weights(folder: PathLike, index: dict, name: str) -> Dict[str, torch.Tensor]:
    """The state_dict in file `name` of `folder`, read safely: a .safetensors file (checked against the
    index's SHA-256 when it records one), or an older folder's torch file (CRC check, weights_only=True;
    see file_io.safe_torch_load). CheckpointError names the file."""
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise CheckpointError(f"{os.path.join(os.fspath(folder), INDEX_NAME)}: a weights entry must be a file name "
                              f"inside the folder, got {name!r}")
    path, sha256 = os.path.join(os.fspath(folder), name), index.get("sha256", {}).get(name)
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise CheckpointError(f"weights file not found: {path} (named in {INDEX_NAME})")
        if sha256 is not None and sha256_of(path) != sha256:
            raise CheckpointError(f"{path} is corrupt: its SHA-256 differs from the one {INDEX_NAME} records")
        return safe_load_safetensors(path)
    state_dict = safe_torch_load(path, "cpu", what="weights file")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of parameter name -> tensor)")
    return state_dict
