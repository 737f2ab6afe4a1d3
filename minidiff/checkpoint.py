"""Self-describing, safe, atomic checkpoints, and loading a model by path.

A checkpoint is ONE file holding a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(path, weights_only=True)`` can read it without running any pickled code:

    {
      "minidiff_version": "0.1.0",
      "model":    {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 64, ...}},
      "schedule": NoiseSchedule.to_config() or None,     # discrete-time models
      "sde":      sde.to_config() or None,               # score models
      "state_dict": ..., "ema_state_dict": ... or None,  # weights; sampling uses the EMA ones
      "optimizer": ... or None, "grad_scaler": ... or None,
      "step": int, "rng": {...}, "data": {...}, "train_config": {...} or None,
      "class_names": ["cat", "dog", ...] or None,        # what context k means (conditional models)
      "sample_shape": [C, H, W] or None,                 # one sample's shape: what `minidiff sample` draws
    }

Three safety rules, each with a test:
  * reading uses ONLY ``weights_only=True``: a file that needs arbitrary unpickling is refused;
  * writing is atomic (temporary file in the same folder, flush + fsync, ``os.replace``, fsync the
    folder), so a crash or a full disk mid-write leaves the previous checkpoint readable;
  * non-finite weights are never written.

Models are rebuilt from an explicit name -> class table (model_table.py); a model class of your
own is passed explicitly: ``load_model(path, model_classes={"MyNet": MyNet})``. The atomic writes and the
safe reads live in file_io.py, the RNG states in rng_state.py.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

# re-exported, so that minidiff.checkpoint keeps every public name it had before the split
from . import __version__
from .file_io import (  # noqa: F401
    CheckpointError,
    PathLike,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    safe_torch_load,
)
from .model_table import (  # noqa: F401
    SDE_KEY,
    build_model,
    check_sample_shape,
    decode_kwargs,
    encode_kwargs,
    model_classes,
    model_spec,
    sample_shape_of,
)
from .rng_state import get_rng_state, set_rng_state  # noqa: F401
from .schedule import PREDICTION_TYPES, NoiseSchedule
from .sde import sde_from_config


# ---------------------------------------------------------------------------------- writing
def make_checkpoint(model: nn.Module, *, model_kwargs: Optional[dict] = None, schedule: Optional[NoiseSchedule] = None,
                    sde=None, ema_model: Optional[nn.Module] = None, optimizer=None, grad_scaler=None,
                    step: int = 0, rng: Optional[dict] = None, data: Optional[dict] = None,
                    train_config: Optional[dict] = None, class_names: Optional[list] = None,
                    sample_shape=None) -> dict:
    """Assemble the checkpoint dict (see the module docstring). Tensors are copied to the CPU.

    sample_shape: (C, H, W) of one sample (default: what ``model_table.sample_shape_of(model)`` knows)."""
    shape = sample_shape_of(model, sample_shape)
    return {
        "minidiff_version": __version__,
        "model": model_spec(model, model_kwargs),
        "schedule": schedule.to_config() if schedule is not None else None,
        "sde": sde.to_config() if sde is not None else None,
        "state_dict": _cpu(model.state_dict()),
        "ema_state_dict": _cpu(ema_model.state_dict()) if ema_model is not None else None,
        "optimizer": _cpu(optimizer.state_dict()) if optimizer is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None and grad_scaler.is_enabled() else None,
        "step": int(step),
        "rng": rng if rng is not None else get_rng_state(),
        "data": data or {},
        "train_config": train_config,
        "class_names": list(class_names) if class_names is not None else None,
        "sample_shape": list(shape) if shape is not None else None,
    }


def save_checkpoint(path: PathLike, model: nn.Module, **kwargs) -> dict:
    """Check the weights are finite, then write ``make_checkpoint(model, **kwargs)`` atomically to `path`."""
    checkpoint = make_checkpoint(model, **kwargs)
    write_checkpoint(path, checkpoint)
    return checkpoint


def write_checkpoint(path: PathLike, checkpoint: dict) -> None:
    """Refuse non-finite weights (FloatingPointError), then write `checkpoint` atomically."""
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in (checkpoint.get(key) or {}).items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise FloatingPointError(f"refusing to write checkpoint {os.fspath(path)} at step "
                                         f"{checkpoint.get('step')}: {key}[{name!r}] is not finite")
    atomic_torch_save(checkpoint, path)


def _cpu(obj):
    """A copy of nested dicts/lists with every tensor detached and moved to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------- reading
def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` only (see safe_torch_load), then check its
    structure (``validate_checkpoint``). Errors name the path, and the entry at fault."""
    checkpoint = safe_torch_load(path, map_location, what="checkpoint")
    if not isinstance(checkpoint, dict) or "minidiff_version" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not a minidiff checkpoint "
                              f"(no 'minidiff_version' / 'model' entries)")
    validate_checkpoint(checkpoint, os.fspath(path))
    return checkpoint


def validate_checkpoint(checkpoint: dict, path: str = "checkpoint", training: bool = False) -> None:
    """CheckpointError naming `path` and the entry when a loadable file holds the wrong kinds of values.

    Every entry that is present must have the type make_checkpoint writes; "minidiff_version", "model"
    and "state_dict" must be present (and, with `training`, also "step" and "rng", which resuming needs).
    The schedule or SDE is rebuilt, so a bad table fails here too, not deep inside a sampler.
    """
    def fail(entry: str, expected: str, value: Any = None, got: bool = True):
        shown = f", got {_describe(value)}" if got else ""
        raise CheckpointError(f"{path}: damaged checkpoint: {entry!r} must be {expected}{shown}")

    required = ("minidiff_version", "model", "state_dict") + (("step", "rng") if training else ())
    for key in required:
        if key not in checkpoint:
            fail(key, "present", got=False)
    if not isinstance(checkpoint["minidiff_version"], str):
        fail("minidiff_version", "a string", checkpoint["minidiff_version"])
    spec = checkpoint["model"]
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        fail("model", '{"class": name, "kwargs": {...}}', spec)
    if spec.get("kwargs") is not None and not isinstance(spec["kwargs"], dict):
        fail("model.kwargs", "a dict of constructor arguments or None", spec["kwargs"])
    _check_weights(checkpoint["state_dict"], "state_dict", fail)
    if checkpoint.get("ema_state_dict") is not None:
        _check_weights(checkpoint["ema_state_dict"], "ema_state_dict", fail)
        if set(checkpoint["ema_state_dict"]) != set(checkpoint["state_dict"]):
            fail("ema_state_dict", "the same parameter names as 'state_dict'", got=False)
    optimizer = checkpoint.get("optimizer")
    if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
                                      and isinstance(optimizer.get("param_groups"), list)
                                      and all(isinstance(g, dict) for g in optimizer["param_groups"])):
        fail("optimizer", 'an optimizer state_dict {"state": {...}, "param_groups": [...]} or None', optimizer)
    for key, kind in (("grad_scaler", dict), ("train_config", dict), ("data", dict)):
        if checkpoint.get(key) is not None and not isinstance(checkpoint[key], kind):
            fail(key, "a dict or None", checkpoint[key])
    prediction_type = (checkpoint.get("train_config") or {}).get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:                        # sampling reads it
        fail("train_config.prediction_type", f"one of {PREDICTION_TYPES}", prediction_type)
    if "step" in checkpoint and not _is_int(checkpoint["step"], minimum=0):
        fail("step", "an integer >= 0", checkpoint["step"])
    data = checkpoint.get("data") or {}
    for key in ("epoch", "batch_in_epoch"):
        if key in data and not _is_int(data[key], minimum=0):
            fail(f"data.{key}", "an integer >= 0", data[key])
    history = data.get("history", [])
    if not isinstance(history, list) or not all(
            isinstance(row, (list, tuple)) and len(row) == 3 and all(_is_number(v) for v in row) for row in history):
        fail("data.history", "a list of [step, loss, lr] rows of numbers", history)
    names = checkpoint.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        fail("class_names", "a list of strings or None", names)
    shape = checkpoint.get("sample_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(_is_int(v, minimum=1) for v in shape)):
        fail("sample_shape", "[channels, height, width] (three ints >= 1) or None", shape)
    if "rng" in checkpoint:
        _check_rng(checkpoint["rng"], fail)
    for key in ("schedule", "sde"):
        if checkpoint.get(key) is not None:
            if not isinstance(checkpoint[key], dict):
                fail(key, "a dict or None", checkpoint[key])
            try:
                schedule_or_sde_from_checkpoint({key: checkpoint[key]})
            except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as error:
                message = " ".join(str(error).split())[:200]
                raise CheckpointError(f"{path}: damaged checkpoint: bad {key!r} entry: "
                                      f"{'missing ' if isinstance(error, KeyError) else ''}{message}") from None


def _check_weights(weights: Any, entry: str, fail) -> None:
    if not isinstance(weights, dict) or not weights:
        fail(entry, "a non-empty dict of parameter name -> tensor", weights)
    for name, value in weights.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            fail(f"{entry}[{name!r}]", "a tensor", value)


def _check_rng(rng: Any, fail) -> None:
    """The structure rng_state.get_rng_state writes."""
    if not isinstance(rng, dict):
        fail("rng", "a dict of random generator states", rng)
    state = rng.get("torch")
    if not (torch.is_tensor(state) and state.dtype == torch.uint8 and state.ndim == 1 and state.numel() > 0):
        fail("rng.torch", "a non-empty uint8 tensor (torch.get_rng_state())", state)
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, list) and all(torch.is_tensor(s) and s.dtype == torch.uint8 for s in cuda)):
        fail("rng.cuda", "a list of uint8 tensors", cuda)
    numpy_state = rng.get("numpy")
    if not (isinstance(numpy_state, dict) and torch.is_tensor(numpy_state.get("key"))
            and tuple(numpy_state["key"].shape) == (624,) and not numpy_state["key"].is_floating_point()
            and _is_int(numpy_state.get("pos"), minimum=0) and numpy_state["pos"] <= 624
            and _is_int(numpy_state.get("has_gauss"), minimum=0) and _is_number(numpy_state.get("cached_gaussian"))):
        fail("rng.numpy", '{"key": 624 integers, "pos": 0..624, "has_gauss": int, "cached_gaussian": float}',
             numpy_state)
    python = rng.get("python")
    if not (isinstance(python, dict) and _is_int(python.get("version"))
            and isinstance(python.get("internal"), (list, tuple)) and len(python["internal"]) == 625
            and all(_is_int(v, minimum=0) for v in python["internal"])
            and (python.get("gauss_next") is None or _is_number(python["gauss_next"]))):
        fail("rng.python", '{"version": int, "internal": 625 integers, "gauss_next": float or None}', python)


def _is_int(value: Any, minimum: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    """A short description of a bad value for an error line: its type, and its start when short."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def model_from_checkpoint(checkpoint: dict, ema: bool = True, device: Union[str, torch.device] = "cpu",
                          classes: Optional[Dict[str, type]] = None, path: str = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint dict describes; EMA weights when present and `ema`."""
    spec = checkpoint["model"]
    if spec.get("kwargs") is None:
        raise CheckpointError(f"{path} does not record how to build its {spec.get('class')} model; pass "
                              f"model_kwargs= when saving, or build the model yourself and load 'state_dict'")
    try:
        model = build_model(spec["class"], classes, **decode_kwargs(spec["kwargs"]))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, ValueError, RuntimeError, KeyError, OverflowError) as error:
        message = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: damaged checkpoint: 'model.kwargs' cannot build a {spec['class']}: "
                              f"{message}") from None
    weights = checkpoint["ema_state_dict"] if ema and checkpoint.get("ema_state_dict") is not None \
        else checkpoint["state_dict"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit a {spec['class']}({spec['kwargs']}): "
                              f"{weights_mismatch(error)}") from None
    remember_recorded(model, checkpoint.get("sample_shape"), (checkpoint.get("train_config") or {}).get(
        "prediction_type"), path)
    return model.to(device).eval()


def weights_mismatch(error: Exception) -> str:
    """The first line of load_state_dict's error, shortened: the full list can run to many kilobytes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return (detail[:300] + "...") if len(detail) > 300 else detail + more


def remember_recorded(model: nn.Module, sample_shape, prediction_type: Optional[str], path: str) -> None:
    """Attach what a file records to the loaded model: ``model.sample_shape`` (C, H, W) and
    ``model.prediction_type``, which ``minidiff.sample``, the Stepper and the CLI then use."""
    try:
        shape = check_sample_shape(sample_shape, "sample_shape")
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if shape is not None:
        model.sample_shape = shape
    if prediction_type is not None:
        from .schedule import PREDICTION_TYPES
        if prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(f"{path}: prediction_type must be one of {PREDICTION_TYPES}, "
                                  f"got {prediction_type!r}")
        model.prediction_type = prediction_type


def load_model(path: PathLike, ema: bool = True, device: Union[str, torch.device] = "cpu",
               model_classes: Optional[Dict[str, type]] = None) -> nn.Module:  # noqa: F811
    """Rebuild the model saved at `path` (EMA weights by default), in eval mode on `device`."""
    checkpoint = load_checkpoint(path)
    return model_from_checkpoint(checkpoint, ema, device, model_classes, os.fspath(path))


def schedule_or_sde_from_checkpoint(checkpoint: dict):
    """The NoiseSchedule or SDE the model was trained with (None if the file records neither)."""
    if checkpoint.get("sde") is not None:
        return sde_from_config(checkpoint["sde"])
    if checkpoint.get("schedule") is not None:
        return NoiseSchedule.from_config(checkpoint["schedule"])
    return None


def load_pipeline(path: PathLike, ema: bool = True, device: Union[str, torch.device] = "cpu",
                  model_classes: Optional[Dict[str, type]] = None) -> Tuple[nn.Module, Any]:  # noqa: F811
    """(model, schedule_or_sde): everything needed to sample from the checkpoint at `path`."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, ema, device, model_classes, os.fspath(path))
    return model, schedule_or_sde_from_checkpoint(checkpoint)
