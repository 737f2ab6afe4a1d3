"""Pretrained folders: a trained model and its noise process, saved as a small readable folder.

A checkpoint (checkpoint.py) is one file for RESUMING training: optimiser state, RNG state, both sets
of weights. A pretrained folder is for SHARING and SAMPLING: one set of weights and a JSON index you
can open in a text editor to see what the model is.

    my_model/
      minidiff.json    the index: which class to build with which kwargs, the schedule or SDE, the weights file
      model.pt         the weights: a plain state_dict, read with torch.load(weights_only=True)

    {
      "format": "minidiff-pretrained",
      "format_version": 1,
      "minidiff_version": "0.1.0",
      "model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 64, "n_cfeat": 5, "height": 16}},
      "schedule": {"betas": [0.0001, ...], "zero_terminal_snr": false},     # discrete-time models, else null
      "sde": null,                                                          # score models: {"class": "VESDE", ...}
      "prediction_type": "epsilon",                                         # or null when not known
      "weights": "model.pt"
    }

    md.save_pretrained(ema_model, schedule, "my_model")
    model, schedule = md.load_pretrained("my_model")
    x = md.sample(model, schedule, (16, 3, 16, 16))

The same safety rules as checkpoints: weights are read with ``weights_only=True`` only (a file that
needs arbitrary unpickling is refused), non-finite weights are never written, and the weights are
written before the index, so a folder whose save did not finish has no index and is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .checkpoint import load_checkpoint, model_from_checkpoint, schedule_or_sde_from_checkpoint
from .file_io import CheckpointError, PathLike, atomic_torch_save, atomic_write_text, safe_torch_load
from .model_table import build_model, decode_kwargs, model_spec
from .schedule import NoiseSchedule

FORMAT, FORMAT_VERSION = "minidiff-pretrained", 1
INDEX_NAME, WEIGHTS_NAME = "minidiff.json", "model.pt"


# ---------------------------------------------------------------------------------- writing
def save_pretrained(model: nn.Module, schedule_or_sde: Any, folder: PathLike, *,
                    ema_model: Optional[nn.Module] = None, model_kwargs: Optional[dict] = None,
                    prediction_type: Optional[str] = None) -> str:
    """Write `model` (or `ema_model`, when given) and its noise process to `folder`; return the index path.

    `schedule_or_sde`: the NoiseSchedule or SDE the model was trained with (None for, say, an
    autoencoder). `model_kwargs`: the constructor kwargs, needed unless the model was made with
    ``build_model`` or loaded by minidiff (then ``model.minidiff_spec`` remembers them).
    `prediction_type`: what the network predicts ("epsilon", "sample", "v_prediction"), if you know.
    """
    from . import __version__
    spec = model_spec(model, model_kwargs)
    if spec["kwargs"] is None:
        raise CheckpointError(f"cannot save {spec['class']} to {os.fspath(folder)}: its constructor kwargs are "
                              f"unknown; pass model_kwargs={{...}} (or build it with minidiff.model_table.build_model)")
    schedule, sde = _split_process(schedule_or_sde)
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "minidiff_version": __version__,
        "model": spec,
        "schedule": schedule.to_config() if schedule is not None else None,
        "sde": sde.to_config() if sde is not None else None,
        "prediction_type": prediction_type,
        "weights": WEIGHTS_NAME,
    }
    source = ema_model if ema_model is not None else model
    weights = {name: tensor.detach().cpu().clone() for name, tensor in source.state_dict().items()}
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"refusing to save {os.fspath(folder)}: weight {name!r} is not finite")

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    index_path = os.path.join(folder, INDEX_NAME)
    if os.path.exists(index_path):              # an old index must never describe half-replaced weights
        os.unlink(index_path)
    atomic_torch_save(weights, os.path.join(folder, WEIGHTS_NAME))    # 1. the weights ...
    atomic_write_text(_readable_json(index) + "\n", index_path)      # 2. ... then the index that names them
    return index_path


def export_checkpoint(checkpoint_path: PathLike, folder: PathLike, ema: bool = True,
                      model_classes: Optional[Dict[str, type]] = None) -> str:
    """Turn a training checkpoint into a pretrained folder (EMA weights by default); return the index path."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint, ema, "cpu", model_classes, os.fspath(checkpoint_path))
    prediction_type = (checkpoint.get("train_config") or {}).get("prediction_type")
    return save_pretrained(model, schedule_or_sde_from_checkpoint(checkpoint), folder,
                           prediction_type=prediction_type)


def _split_process(schedule_or_sde) -> Tuple[Optional[NoiseSchedule], Any]:
    """(schedule, None), (None, sde) or (None, None)."""
    from .sde import SDE
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
    weights = index["weights"]
    if not isinstance(weights, str) or os.path.basename(weights) != weights or weights in ("", ".", ".."):
        raise CheckpointError(f"{path}: \"weights\" must be a file name inside the folder, got {weights!r}")
    return index


def load_pretrained(folder: PathLike, device: Union[str, torch.device] = "cpu",
                    model_classes: Optional[Dict[str, type]] = None) -> Tuple[nn.Module, Any]:
    """(model, schedule_or_sde) from a folder written by ``save_pretrained``; the model in eval mode.

    The model is rebuilt from the index's class and kwargs (`model_classes` adds classes of your own,
    as in ``load_model``), then its weights are loaded strictly: every name and shape must match.
    schedule_or_sde is a NoiseSchedule, an SDE, or None if the folder records neither.
    """
    index = read_index(folder)
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
    weights_path = os.path.join(os.fspath(folder), index["weights"])
    try:
        model.load_state_dict(_load_state_dict(weights_path))
    except RuntimeError as error:
        raise CheckpointError(f"{weights_path}: the weights do not fit {spec['class']}({spec['kwargs']}) "
                              f"named in {INDEX_NAME}: {error}") from None
    return model.to(device).eval(), _process_from_index(index, index_path)


def _process_from_index(index: dict, index_path: str):
    """The NoiseSchedule or SDE the index records (None if neither)."""
    schedule, sde = index.get("schedule"), index.get("sde")
    if schedule is not None and sde is not None:
        raise CheckpointError(f"{index_path} records both a schedule and an SDE; keep one of them")
    try:
        if sde is not None:
            from .sde import sde_from_config
            return sde_from_config(sde)
        if schedule is not None:
            return NoiseSchedule.from_config(schedule)
    except (KeyError, TypeError, ValueError) as error:
        entry = "sde" if sde is not None else "schedule"
        raise CheckpointError(f"{index_path}: bad {entry!r} entry: {error}") from None
    return None


def _load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A plain state_dict, read safely (file_io.safe_torch_load: CRC check, weights_only=True)."""
    state_dict = safe_torch_load(path, "cpu", what="weights file")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of parameter name -> tensor)")
    return state_dict
