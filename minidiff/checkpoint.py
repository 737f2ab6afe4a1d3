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
from .file_io import (  # noqa: F401
    CheckpointError,
    PathLike,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    safe_torch_load,
)
from .model_table import SDE_KEY, build_model, decode_kwargs, encode_kwargs, model_classes, model_spec  # noqa: F401
from .rng_state import get_rng_state, set_rng_state  # noqa: F401
from .schedule import NoiseSchedule


# ---------------------------------------------------------------------------------- writing
def make_checkpoint(model: nn.Module, *, model_kwargs: Optional[dict] = None, schedule: Optional[NoiseSchedule] = None,
                    sde=None, ema_model: Optional[nn.Module] = None, optimizer=None, grad_scaler=None,
                    step: int = 0, rng: Optional[dict] = None, data: Optional[dict] = None,
                    train_config: Optional[dict] = None, class_names: Optional[list] = None) -> dict:
    """Assemble the checkpoint dict (see the module docstring). Tensors are copied to the CPU."""
    from . import __version__
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
    """Read a checkpoint with ``torch.load(weights_only=True)`` only (see safe_torch_load). Errors name the path."""
    checkpoint = safe_torch_load(path, map_location, what="checkpoint")
    if not isinstance(checkpoint, dict) or "minidiff_version" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not a minidiff checkpoint "
                              f"(no 'minidiff_version' / 'model' entries)")
    return checkpoint


def model_from_checkpoint(checkpoint: dict, ema: bool = True, device: Union[str, torch.device] = "cpu",
                          classes: Optional[Dict[str, type]] = None, path: str = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint dict describes; EMA weights when present and `ema`."""
    spec = checkpoint["model"]
    if spec.get("kwargs") is None:
        raise CheckpointError(f"{path} does not record how to build its {spec.get('class')} model; pass "
                              f"model_kwargs= when saving, or build the model yourself and load 'state_dict'")
    model = build_model(spec["class"], classes, **decode_kwargs(spec["kwargs"]))
    weights = checkpoint["ema_state_dict"] if ema and checkpoint.get("ema_state_dict") is not None \
        else checkpoint["state_dict"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit a {spec['class']}({spec['kwargs']}): {error}") from None
    return model.to(device).eval()


def load_model(path: PathLike, ema: bool = True, device: Union[str, torch.device] = "cpu",
               model_classes: Optional[Dict[str, type]] = None) -> nn.Module:  # noqa: F811
    """Rebuild the model saved at `path` (EMA weights by default), in eval mode on `device`."""
    checkpoint = load_checkpoint(path)
    return model_from_checkpoint(checkpoint, ema, device, model_classes, os.fspath(path))


def schedule_or_sde_from_checkpoint(checkpoint: dict):
    """The NoiseSchedule or SDE the model was trained with (None if the file records neither)."""
    if checkpoint.get("sde") is not None:
        from .sde import sde_from_config
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
