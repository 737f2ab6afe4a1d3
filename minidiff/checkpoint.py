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
    }

Three safety rules, each with a test:
  * reading uses ONLY ``weights_only=True``: a file that needs arbitrary unpickling is refused;
  * writing is atomic (temporary file in the same folder, flush + fsync, ``os.replace``, fsync the
    folder), so a crash or a full disk mid-write leaves the previous checkpoint readable;
  * non-finite weights are never written.

Models are rebuilt from an explicit name -> class table (``model_classes()``); a model class of your
own is passed explicitly: ``load_model(path, model_classes={"MyNet": MyNet})``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .schedule import NoiseSchedule

PathLike = Union[str, os.PathLike]
SDE_KEY = "__sde__"       # a constructor kwarg that is an SDE object is stored as {SDE_KEY: sde.to_config()}


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, unsafe or not a minidiff checkpoint."""


# ---------------------------------------------------------------------------------- model classes
def model_classes() -> Dict[str, type]:
    """The networks a checkpoint can name: an explicit dict ``name -> class``.

    Imported here, not at module import, so that reading this file stays cheap.
    """
    from .nn.autoencoder import AutoEncoder
    from .nn.basic_unet import BasicUNet
    from .nn.context_unet import ContextUnet
    from .nn.score_unet import ConditionalScoreUNet, LatentScoreUNet, ResidualScoreUNet, ScoreUNet
    from .nn.unet2d import UNet2D
    return {"ContextUnet": ContextUnet, "ScoreUNet": ScoreUNet, "ResidualScoreUNet": ResidualScoreUNet,
            "ConditionalScoreUNet": ConditionalScoreUNet, "LatentScoreUNet": LatentScoreUNet,
            "BasicUNet": BasicUNet, "UNet2D": UNet2D, "AutoEncoder": AutoEncoder}


def build_model(name: str, classes: Optional[Dict[str, type]] = None, **kwargs) -> nn.Module:
    """Build network `name` with `kwargs` and remember both on ``model.minidiff_spec``.

    `classes` adds classes of your own to the table of ``model_classes()``.
    ``build_model("ContextUnet", n_feat=64, n_cfeat=5, height=16)``; the Trainer and
    ``save_checkpoint`` read ``minidiff_spec`` so the file can rebuild the model with no user code.
    """
    table = {**model_classes(), **(classes or {})}
    if name not in table:
        raise CheckpointError(f"unknown model class {name!r}; known: {sorted(table)} "
                              f"(pass model_classes={{{name!r}: YourClass}} for a class of your own)")
    model = table[name](**decode_kwargs(encode_kwargs(kwargs)))
    model.minidiff_spec = {"class": name, "kwargs": encode_kwargs(kwargs)}
    return model


def model_spec(model: nn.Module, model_kwargs: Optional[dict] = None) -> dict:
    """{"class": name, "kwargs": plain kwargs or None} for `model` (explicit kwargs win over minidiff_spec)."""
    if model_kwargs is not None:
        return {"class": type(model).__name__, "kwargs": encode_kwargs(model_kwargs)}
    spec = getattr(model, "minidiff_spec", None)
    if spec is not None:
        return {"class": spec["class"], "kwargs": encode_kwargs(spec["kwargs"])}
    return {"class": type(model).__name__, "kwargs": None}


def encode_kwargs(kwargs: dict) -> dict:
    """Constructor kwargs as plain data: an SDE object becomes {SDE_KEY: its to_config()}, tuples lists."""
    def encode(value):
        if hasattr(value, "to_config") and not isinstance(value, (dict, list, tuple)):
            return {SDE_KEY: value.to_config()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(f"cannot record constructor argument of type {type(value).__name__}: {value!r}")
    return {k: encode(v) for k, v in kwargs.items()}


def decode_kwargs(kwargs: dict) -> dict:
    """The inverse of ``encode_kwargs``: {SDE_KEY: config} is rebuilt with ``sde_from_config``."""
    def decode(value):
        if isinstance(value, dict) and set(value) == {SDE_KEY}:
            from .sde import sde_from_config
            return sde_from_config(value[SDE_KEY])
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value
    return {k: decode(v) for k, v in kwargs.items()}


# ---------------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict:
    """The state of every random number generator training touches, as plain data."""
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ---------------------------------------------------------------------------------- writing
def make_checkpoint(model: nn.Module, *, model_kwargs: Optional[dict] = None, schedule: Optional[NoiseSchedule] = None,
                    sde=None, ema_model: Optional[nn.Module] = None, optimizer=None, grad_scaler=None,
                    step: int = 0, rng: Optional[dict] = None, data: Optional[dict] = None,
                    train_config: Optional[dict] = None) -> dict:
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


def atomic_write(path: PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call write(file) on a temporary file beside `path`, flush + fsync, rename over `path`, fsync the folder.

    Readers see either the old file or the complete new one, never a half-written one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write {path} ({error.strerror or error}); "
                                       f"the previous file, if any, is untouched") from error
        raise
    _fsync_folder(folder)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """torch.save(obj) to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write `text` to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
def safe_torch_load(path: PathLike, map_location: Union[str, torch.device] = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` after checking every zip entry's CRC-32. Errors name the path.

    FileNotFoundError for a missing file; CheckpointError (a ValueError) for a truncated or corrupt file,
    or one that would need arbitrary unpickling (which could run code) to read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt: not a torch zip file")
    try:                                                  # every entry's CRC-32: catches flipped bytes too
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt: entry {damaged!r} fails its CRC-32 check")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"refusing to load {path}: it holds pickled Python objects that only "
                              f"weights_only=False could rebuild, and that could run arbitrary code "
                              f"({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read: {error}") from None


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
               model_classes: Optional[Dict[str, type]] = None) -> nn.Module:
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
                  model_classes: Optional[Dict[str, type]] = None) -> Tuple[nn.Module, Any]:
    """(model, schedule_or_sde): everything needed to sample from the checkpoint at `path`."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, ema, device, model_classes, os.fspath(path))
    return model, schedule_or_sde_from_checkpoint(checkpoint)
