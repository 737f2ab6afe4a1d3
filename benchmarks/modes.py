"""Execution modes: the same network run five ways, each a thin wrapper with the `model(x, t, context=None)`
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

A wrapper is an nn.Module holding the network, so `parameters()` still finds the device and dtype.
"""

from __future__ import annotations

import copy
import shutil
from typing import Optional

import torch
from torch import Tensor, nn

MODES = ("eager", "bf16", "channels_last", "compile", "cuda_graphs", "compile_cudagraphs")
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
    if mode == "compile":
        torch._dynamo.reset()                   # a fresh cache: no recompile limits carried between rows
        return torch.compile(model, dynamic=False)
    if mode == "compile_cudagraphs":
        torch._dynamo.reset()
        return CompiledGraphs(torch.compile(model, mode="reduce-overhead", dynamic=False))
    return StaticShapes(model, x, t, context, graph=True)                # "cuda_graphs"
