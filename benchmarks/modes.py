"""Execution modes: the same network run several ways, each a thin wrapper with the `model(x, t, context=None)`
interface, so `md.sample` (and anything else in minidiff) runs it unchanged.

    eager               fp32, as written
    bf16                the forward under torch.autocast(bfloat16); the output cast back to fp32, so the
                        sampler's arithmetic stays fp32
    channels_last       weights and inputs in NHWC memory layout (convolutions read it faster on
                        tensor-core GPUs and with oneDNN on CPUs)
    compile             torch.compile(model) (Inductor: fused kernels; C++ on the CPU, Triton on CUDA)
    cuda_graphs         the whole forward captured once in a torch.cuda.CUDAGraph and replayed: one
                        launch instead of one per kernel (fixed shapes; CUDA only)
    compile_cudagraphs  torch.compile(mode="reduce-overhead"): Inductor kernels replayed as CUDA graphs
    fast                channels_last + bf16 autocast, the two eager speed-ups together (no compiler), on
                        minidiff.nn.for_inference(model): BatchNorm folded into the convolutions and GELU
                        run on the NHWC view (same outputs, fewer and faster kernels). Where the device has
                        no fast bf16 (a CPU without native bf16 instructions, a GPU without bf16) it falls
                        back to channels_last fp32: see fast_bf16()

A wrapper is an nn.Module holding the network, so `parameters()` still finds the device and dtype.
"""

from __future__ import annotations

import copy
import shutil
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from minidiff.nn import for_inference

MODES = ("eager", "bf16", "channels_last", "compile", "cuda_graphs", "compile_cudagraphs", "fast")
CUDA_ONLY = ("cuda_graphs", "compile_cudagraphs")


def mode_unavailable(mode: str, device) -> Optional[str]:
    """Why `mode` cannot run on `device` (a sentence for the report), or None if it can."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = torch.device(device)
    if mode in CUDA_ONLY and device.type != "cuda":
        return f"{mode} needs a CUDA GPU"
    if mode.startswith("compile") and device.type == "cpu" and shutil.which("g++") is None \
            and shutil.which("c++") is None:
        return "torch.compile on the CPU needs a C++ compiler (none found)"
    return None


def fast_bf16(device) -> Tuple[bool, str]:
    """(whether the "fast" mode runs bf16 on `device`, a sentence saying why, for the report).

    CUDA: torch.cuda.is_bf16_supported(). CPU: oneDNN must be built in and report bf16 support
    (torch.ops.mkldnn._is_mkldnn_bf16_supported: an AVX-512 core or better), AND the CPU must have
    native bf16 dot-product instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo; where that file
    cannot be read, a torch CPU capability naming AMX). Without them oneDNN emulates bf16 with fp32
    arithmetic plus conversions, which is usually slower than plain fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"bf16 autocast + channels_last on {torch.cuda.get_device_name(device)}"
        return False, "this GPU has no bf16: the fast mode runs channels_last fp32"
    if device.type != "cpu":
        return False, f"no bf16 check for {device.type}: the fast mode runs channels_last fp32"
    capability = _cpu_capability()
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN: the fast mode runs channels_last fp32"
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = capability.startswith("AVX512")
    flags = _cpu_flags()
    native = ({"avx512_bf16", "amx_bf16"} & flags) if flags is not None else ({"AMX"} if "AMX" in capability else set())
    if onednn_bf16 and native:
        return True, (f"bf16 autocast + channels_last (CPU capability {capability}, native bf16: "
                      f"{', '.join(sorted(native))})")
    return False, (f"this CPU (capability {capability}) has no native bf16 instructions (avx512_bf16 / amx_bf16): "
                   "the fast mode falls back to channels_last fp32")


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def _cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


class Autocast(nn.Module):
    """Runs the network under torch.autocast(device, bfloat16); returns fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x, t, context).float()


class ChannelsLast(nn.Module):
    """A channels_last COPY of the network (the original is left as it was), fed channels_last inputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t, context)


class StaticShapes(nn.Module):
    """Replays one recorded forward of fixed shapes: inputs are copied into static buffers, the
    recorded work runs, and a copy of the static output is returned.

    With graph=True (CUDA) the forward is captured in a torch.cuda.CUDAGraph after a few warm-up
    calls on a side stream, as the PyTorch docs prescribe, and every call replays the graph: one
    launch for the whole network. With graph=False (any device; what the CPU tests use) every call
    runs the network on the static buffers: the same copy-in / copy-out logic, without the capture.
    Built for inference: capture happens under torch.no_grad().
    """

    def __init__(self, model: nn.Module, x: Tensor, t: Tensor, context: Optional[Tensor] = None,
                 graph: bool = True, warmup: int = 3):
        super().__init__()
        self.model = model
        self.static_x, self.static_t = x.clone(), t.clone().reshape(x.shape[0])      # [B, C, H, W], [B]
        self.static_context = None if context is None else context.clone()
        self.graph = None
        if graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(warmup):                                   # cuDNN autotuning, lazy inits
                    self._run()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(self.graph):
                self.static_out = self._run()
        else:
            with torch.no_grad():
                self.static_out = self._run()

    def _run(self) -> Tensor:
        return self.model(self.static_x, self.static_t, self.static_context)

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if x.shape != self.static_x.shape:
            raise ValueError(f"recorded for x of shape {tuple(self.static_x.shape)}, got {tuple(x.shape)}")
        if (context is None) != (self.static_context is None):
            raise ValueError("recorded with" + ("out" if self.static_context is None else "") + " a context")
        self.static_x.copy_(x)
        self.static_t.copy_(torch.as_tensor(t, dtype=self.static_t.dtype, device=x.device).expand(x.shape[0]))
        if context is not None:
            self.static_context.copy_(context)
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self.static_out = self._run()
        return self.static_out.clone()             # the next replay overwrites static_out


class CompiledGraphs(nn.Module):
    """A torch.compile(mode="reduce-overhead") network called once per sampler step: each call starts a new
    CUDA-graph step, and the output is copied out before the next replay can overwrite it."""

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x, t, context).clone()


def wrap(model: nn.Module, mode: str, x: Tensor, t: Tensor, context: Optional[Tensor] = None) -> nn.Module:
    """`model` (already on x's device, in eval mode) prepared for `mode`; x, t, context are example
    inputs of the shapes it will see (used by the static-shape modes). Compiled modes compile lazily,
    on the first call: time them after a warm-up."""
    reason = mode_unavailable(mode, x.device)
    if reason:
        raise RuntimeError(reason)
    if mode == "eager":
        return model
    if mode == "bf16":
        return Autocast(model)
    if mode == "channels_last":
        return ChannelsLast(model)
    if mode == "fast":
        bf16, _ = fast_bf16(x.device)
        fast = ChannelsLast(for_inference(model))
        return Autocast(fast) if bf16 else fast
    if mode == "compile":
        torch._dynamo.reset()                   # a fresh cache: no recompile limits carried between rows
        return torch.compile(model, dynamic=False)
    if mode == "compile_cudagraphs":
        torch._dynamo.reset()
        return CompiledGraphs(torch.compile(model, mode="reduce-overhead", dynamic=False))
    return StaticShapes(model, x, t, context, graph=True)                # "cuda_graphs"
