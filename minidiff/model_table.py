"""The networks a checkpoint can name, and their constructor kwargs as plain data.

A saved model records ``{"class": name, "kwargs": {...}}``; ``build_model`` rebuilds it from an explicit
name -> class table (``model_classes()``), never from a dotted path or a pickle. A class of your own is
passed explicitly: ``build_model("MyNet", {"MyNet": MyNet}, ...)``.
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional

from torch import nn

from .file_io import CheckpointError

SDE_KEY = "__sde__"       # a constructor kwarg that is an SDE object is stored as {SDE_KEY: sde.to_config()}


def model_classes() -> Dict[str, type]:
    """The networks a checkpoint can name: an explicit dict ``name -> class``.

    Imported here, not at module import, so that reading this file stays cheap.
    """
    from .nn.autoencoder import AutoEncoder
    from .nn.basic_unet import BasicUNet
    from .nn.context_unet import ContextUnet
    from .nn.dit import DiT
    from .nn.score_unet import ConditionalScoreUNet, LatentScoreUNet, ResidualScoreUNet, ScoreUNet
    from .nn.unet2d import UNet2D
    return {"ContextUnet": ContextUnet, "ScoreUNet": ScoreUNet, "ResidualScoreUNet": ResidualScoreUNet,
            "ConditionalScoreUNet": ConditionalScoreUNet, "LatentScoreUNet": LatentScoreUNet,
            "BasicUNet": BasicUNet, "UNet2D": UNet2D, "AutoEncoder": AutoEncoder, "DiT": DiT}


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
    """{"class": name, "kwargs": plain kwargs or None} for `model` (explicit kwargs win over minidiff_spec).

    A network whose constructor takes `sde` (the score UNets) records the SDE it computes with now,
    `model.sde`, unless the explicit kwargs name one: hand-written kwargs often leave it out, and a model
    rebuilt without it would return the raw network output instead of the score.
    """
    if model_kwargs is not None:
        name, kwargs = type(model).__name__, dict(model_kwargs)
    else:
        spec = getattr(model, "minidiff_spec", None)
        if spec is None:
            return {"class": type(model).__name__, "kwargs": None}
        name, kwargs = spec["class"], decode_kwargs(spec["kwargs"])
        kwargs.pop("sde", None)                     # the attribute may have been set since construction
    if "sde" not in kwargs and hasattr(model, "sde") and _takes_sde(type(model)):
        kwargs["sde"] = model.sde
    return {"class": name, "kwargs": encode_kwargs(kwargs)}


def _takes_sde(cls: type) -> bool:
    try:
        return "sde" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):                 # no introspectable signature
        return False


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


# ---------------------------------------------------------------------------------- the sample shape
def check_sample_shape(shape, name: str = "sample_shape") -> Optional[tuple]:
    """`shape` as a tuple of three ints >= 1 (channels, height, width), or None; ValueError naming `name`."""
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise ValueError(f"{name} must be (channels, height, width), three ints >= 1, got {shape!r}")
    return tuple(int(v) for v in shape)


def sample_shape_of(model: nn.Module, given=None) -> Optional[tuple]:
    """(C, H, W) of one sample `model` makes: `given` (checked), else ``model.sample_shape`` (set by the
    loaders from what a file records), else the size its architecture fixes (a ContextUnet's `height`),
    else None: nothing is guessed."""
    if given is not None:
        return check_sample_shape(given)
    recorded = getattr(model, "sample_shape", None)
    if recorded is not None:
        return check_sample_shape(tuple(recorded), f"{type(model).__name__}.sample_shape")
    height, channels = getattr(model, "height", None), getattr(model, "in_channels", None)
    if type(model).__name__ == "ContextUnet" and isinstance(height, int) and isinstance(channels, int):
        return (channels, height, height)                 # its up-path ends at exactly height x height
    return None


def in_channels_of(model: nn.Module, spec: Optional[dict] = None) -> Optional[int]:
    """The channels `model` takes: its `in_channels` attribute, the recorded kwarg, or the constructor's
    default for that argument (exact, not a guess); None if the class has no such argument."""
    import inspect
    value = getattr(model, "in_channels", None)
    if isinstance(value, int):
        return value
    kwargs = (spec or {}).get("kwargs") or {}
    if isinstance(kwargs.get("in_channels"), int):
        return kwargs["in_channels"]
    parameter = inspect.signature(type(model)).parameters.get("in_channels")
    if parameter is not None and isinstance(parameter.default, int):
        return parameter.default
    return None
