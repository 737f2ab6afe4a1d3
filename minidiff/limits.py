"""Size limits: every size or count a user gives is checked against what it would allocate, BEFORE allocating.

A typo such as ``--scale 1000000`` or ``--image-size 100000`` must end with one line naming the argument,
not with the kernel killing the machine. The limits (README, "Reliability"):

    MAX_IMAGE_SIDE     4096 pixels: the side of a training image (--image-size, data "size", a model's height)
    MAX_PICTURE_SIDE   65535 pixels: the width and height of a written PNG/GIF grid (GIF's own format limit)
    memory_limit()     estimated memory of one command: this machine's RAM (or the CUDA device's memory for
                       what lives there); the environment variable MINIDIFF_MEMORY_LIMIT_GB sets another

Estimates: images are 4-byte floats; a model's parameters are counted by building it on the "meta" device
(no memory); its activations by one forward pass on the meta device, summing every layer's output.
Training keeps all of them for the backward pass (plus weights, gradients, EMA and two AdamW moments: 5 x
the parameters); sampling without gradients keeps about a quarter alive at once (ContextUnet: measured 0.19).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import nn

MAX_IMAGE_SIDE = 4096
MAX_PICTURE_SIDE = 65535
INFERENCE_FRACTION = 0.25          # of the summed layer outputs alive at once in a no-grad forward pass
TRAINING_STATE_COPIES = 5          # weights, gradients, EMA weights, AdamW's two moments
FLOAT_BYTES = 4


def memory_limit(device=None) -> int:
    """Bytes one command may plan to use on `device` (default: the CPU's RAM); see the module docstring."""
    override = os.environ.get("MINIDIFF_MEMORY_LIMIT_GB")
    if override:
        try:
            gigabytes = float(override)
        except ValueError:
            raise ValueError(f"MINIDIFF_MEMORY_LIMIT_GB must be a number of GiB, got {override!r}") from None
        if not gigabytes > 0:
            raise ValueError(f"MINIDIFF_MEMORY_LIMIT_GB must be > 0, got {override!r}")
        return int(gigabytes * 2**30)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 3e12 -> '2.7 TiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(nbytes: float, what: str, device=None) -> None:
    """ValueError when `what` (a phrase naming the argument) needs more than memory_limit(device)."""
    limit = memory_limit(device)
    if nbytes > limit:
        where = "MINIDIFF_MEMORY_LIMIT_GB" if os.environ.get("MINIDIFF_MEMORY_LIMIT_GB") else \
            f"this machine's {'GPU' if torch.device(device or 'cpu').type == 'cuda' else 'RAM'}"
        raise ValueError(f"{what} needs about {format_bytes(nbytes)}, more than the limit of {format_bytes(limit)} "
                         f"({where}; set MINIDIFF_MEMORY_LIMIT_GB to change it)")


def check_int(value, name: str, low: int = 1, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high], else ValueError naming `name` (bools and floats refused)."""
    import numpy as np
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        accepted = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {accepted}, got {value}")
    return int(value)


def check_image_side(value, name: str) -> int:
    """A training image side in [1, MAX_IMAGE_SIDE]."""
    return check_int(value, name, 1, MAX_IMAGE_SIDE)


def grid_size(n: int, height: int, width: int, nrow: Optional[int], scale: int, padding: int = 1) -> tuple:
    """(height, width) in pixels of imaging.grid_image's picture of n images of height x width."""
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    return ((rows * (height + padding) + padding) * scale, (nrow * (width + padding) + padding) * scale)


def check_grid(n: int, height: int, width: int, nrow: Optional[int], scale: int, names=("n", "nrow", "scale"),
               frames: int = 1) -> None:
    """The picture imaging.grid_image would make of n images: each side <= MAX_PICTURE_SIDE, its memory (RGB,
    and `frames` of them for a GIF) within memory_limit(). `names`: what the caller calls n, nrow and scale."""
    check_int(n, names[0], 1)
    if nrow is not None:
        check_int(nrow, names[1], 1)
    check_int(scale, names[2], 1)
    picture_h, picture_w = grid_size(n, height, width, nrow, scale)
    given = ", ".join(f"{name} {value}" for name, value in zip(names, (n, nrow, scale)) if value is not None)
    if max(picture_h, picture_w) > MAX_PICTURE_SIDE:
        raise ValueError(f"{given}: the grid of {n:,} images of {height}x{width} would be {picture_w:,} x "
                         f"{picture_h:,} pixels; a picture side is at most {MAX_PICTURE_SIDE:,} pixels")
    unscaled = (picture_h // scale) * (picture_w // scale) * 3
    check_memory(frames * (picture_h * picture_w * 3 + unscaled), f"{given}: a grid picture of "
                 f"{picture_w:,} x {picture_h:,} pixels" + (f" x {frames} frames" if frames > 1 else ""))


# ------------------------------------------------------------------------------------- networks
def _meta(tensor):
    return tensor if tensor is None else torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def activation_bytes(model: nn.Module, image_shape: Sequence[int], context=None) -> Optional[float]:
    """Bytes of every layer output of ONE forward pass of `model` on one image of `image_shape` [C, H, W],
    measured on the meta device (nothing is allocated); None when the model cannot run on meta tensors.
    context: one sample's context (a tensor without the batch axis) or None."""
    from torch.func import functional_call
    total = [0]

    def count(module, inputs, output):
        if torch.is_tensor(output):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    state = {name: _meta(value) for name, value in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty((1, *image_shape), device="meta")
    context = None if context is None else _meta(torch.as_tensor(context)[None])
    try:
        with torch.no_grad():
            functional_call(model, state, (x, torch.ones(1, device="meta"), context))
    except Exception:                                          # noqa: BLE001 (an estimate only; the real call decides)
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return float(max(total[0], FLOAT_BYTES * math.prod(image_shape)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, kwargs: dict, where: str = "model") -> Optional[nn.Module]:
    """The network `name`(**kwargs) built on the meta device (no memory), to count its parameters and
    activations before building it for real; None when it cannot be built there. Constructor errors
    (a bad kwarg) are raised as ValueError naming `where`."""
    from .model_table import build_model
    try:
        with torch.device("meta"):
            return build_model(name, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: cannot build {name} from {kwargs}: {error}") from None
    except RuntimeError as error:
        if "overflow" in str(error).lower():                   # a width so large that its tensor size overflows
            raise ValueError(f"{where}: {name} from {kwargs} is far too large: {str(error).splitlines()[0]}") from None
        return None                                            # e.g. a constructor that computes with .item()
    except Exception:                                          # noqa: BLE001 (an estimate only)
        return None


def check_training_memory(model: nn.Module, image_shape, context, batch: int, device=None,
                          what: str = "training") -> None:
    """Weights, gradients, EMA and AdamW state of `model`, plus the activations of `batch` images kept for
    the backward pass, within memory_limit(device). image_shape [C, H, W]; context one sample's or None."""
    state = TRAINING_STATE_COPIES * FLOAT_BYTES * parameter_count(model)
    check_memory(state, f"{type(model).__name__} with {parameter_count(model):,} parameters "
                 f"(weights, gradients, EMA and AdamW state)", device)
    per_image = activation_bytes(model, image_shape, context)
    if per_image is not None:
        size = "x".join(map(str, image_shape))
        check_memory(state + batch * per_image, f"{what}: a batch of {batch} images of {size} "
                     f"through {type(model).__name__} ({format_bytes(per_image)} of activations per image)", device)


def check_sampling_memory(model: nn.Module, n: int, image_shape, context=None, device=None, trajectory: int = 0,
                          name: str = "--n") -> None:
    """n samples of image_shape [C, H, W] drawn at once: on `device` the images and the network's activations
    without gradients; on the CPU the result and `trajectory` saved copies of it. Within memory_limit()."""
    images = n * FLOAT_BYTES * math.prod(image_shape)
    per_image = activation_bytes(model, image_shape, context) or 0.0
    on_device = 2 * images + n * INFERENCE_FRACTION * per_image
    on_cpu = images * (1 + trajectory)
    what = f"{name} {n}: {n:,} samples of {'x'.join(map(str, image_shape))}"
    extra = f" with a trajectory of {trajectory} saved steps" if trajectory else ""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu":
        check_memory(on_device + on_cpu, what + extra)
    else:
        check_memory(on_cpu, what + extra)
        check_memory(on_device, what, device)
