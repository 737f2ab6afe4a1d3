"""Kernel speed: the building blocks of minidiff's networks, each in its variants, CPU vs CUDA.

    python benchmarks/bench_kernels.py --quick
    python benchmarks/bench_kernels.py --device cuda --seq-lens 16,64,256,1024,4096

  attention      CrossAttention (self-attention, 64 wide, 4 heads): the einsum reference path
                 (softmax(Q K^T / sqrt(d)) V written out) vs F.scaled_dot_product_attention
  groupnorm_silu GroupNorm(32 groups) + SiLU, the normalisation of the ResNet blocks
  gelu           GELU on NCHW vs channels_last tensors, and on the channels_last tensor's contiguous
                 NHWC view (minidiff.nn.inference.ChannelsLastGELU, which the fast mode uses)
  residual_block the course's ResidualConvBlock (conv-BN-GELU twice, residual), eval mode; also as
                 minidiff.nn.for_inference rewrites it (BatchNorm folded into the convolutions)
  conv2d         a 3x3 convolution, NCHW vs channels_last memory layout

All under torch.no_grad (inference). A timed call runs the kernel k times, k chosen so one call
takes about 20 ms; the table shows the median over the repeats of (call time / k).
GFLOP/s counts matmul/conv/attention FLOPs (torch.utils.flop_counter); GroupNorm + SiLU and GELU have
none worth counting, so their rows show memory throughput instead: 2 x tensor bytes (one read, one
write, a lower bound on the traffic) per call.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from minidiff.nn import CrossAttention, ResidualConvBlock, for_inference  # noqa: E402
from minidiff.nn.inference import ChannelsLastGELU  # noqa: E402

MEMORY_BOUND = ("groupnorm_silu", "gelu")        # no matmul FLOPs to count: these rows show GB/s instead
COLUMNS = [("device", "device"), ("kernel", "kernel"), ("variant", "variant"), ("shape", "input shape"),
           ("ms", "ms/call"), ("gflops", "GFLOP/s"), ("gbps", "GB/s"), ("vs_first", "speed-up vs first variant"),
           ("cuda_speedup", "CUDA speed-up")]


def time_kernel(fn: Callable[[], object], device, repeats: int = 5, target_s: float = 0.02) -> tuple[float, int]:
    """(median seconds per fn() call, calls per timed repeat): fn runs k times per timed repeat,
    k such that a repeat takes about target_s."""
    with torch.no_grad():
        fn()
        single = common.time_call(fn, device)
        k = max(1, min(10_000, math.ceil(target_s / max(single, 1e-7))))
        timing = common.measure(lambda: [fn() for _ in range(k)], device, warmup=1, repeats=repeats)
    return timing.median / k, k


def autocast_if(bf16: bool, device: str):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def kernel_cases(device: str, seq_lens: List[int], batch: int, conv_batch: int, variants_bf16: bool) -> list:
    """(kernel, variant, input shape, fn) for every row, built on `device`. Attention inputs have
    `batch` sequences; GroupNorm, block and conv inputs `conv_batch` 16x16 feature maps."""
    cases = []                                   # every lambda binds its inputs as defaults (x is reused)
    gen = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(device)

    attention = CrossAttention(query_dim=64, heads=4).to(device).eval()
    for n in seq_lens:
        x = randn(batch, n, 64)                                          # (B, N, 64)
        for variant, reference in (("einsum reference", True), ("sdpa", False)):
            fn = (lambda x=x, r=reference: attention(x, reference=r))
            cases.append(("attention", variant, tuple(x.shape), fn))

    batch = conv_batch
    groupnorm, x = nn.GroupNorm(32, 128).to(device).eval(), randn(batch, 128, 16, 16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases.append(("groupnorm_silu", "NCHW", tuple(x.shape), lambda x=x: F.silu(groupnorm(x))))
    cases.append(("groupnorm_silu", "channels_last", tuple(x.shape), lambda x=x_cl: F.silu(groupnorm(x))))

    gelu, nhwc_gelu, x = nn.GELU(), ChannelsLastGELU(), randn(batch, 64, 16, 16)
    for dtype in (torch.float32, torch.bfloat16) if variants_bf16 else (torch.float32,):
        x_d = x.to(dtype)
        x_cl = x_d.contiguous(memory_format=torch.channels_last)
        name = "fp32" if dtype == torch.float32 else "bf16"
        cases.append(("gelu", f"NCHW {name}", tuple(x.shape), lambda x=x_d: gelu(x)))
        cases.append(("gelu", f"channels_last {name}", tuple(x.shape), lambda x=x_cl: gelu(x)))
        cases.append(("gelu", f"channels_last {name}, NHWC view", tuple(x.shape), lambda x=x_cl: nhwc_gelu(x)))

    block, x = ResidualConvBlock(64, 64, is_res=True).to(device).eval(), randn(batch, 64, 16, 16)
    block_cl = copy.deepcopy(block).to(memory_format=torch.channels_last)
    folded_cl = for_inference(block).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases.append(("residual_block", "NCHW fp32", tuple(x.shape), lambda x=x: block(x)))
    cases.append(("residual_block", "channels_last fp32", tuple(x.shape), lambda x=x_cl: block_cl(x)))
    if variants_bf16:
        cases.append(("residual_block", "NCHW bf16 autocast", tuple(x.shape), _autocast(block, x, device)))
        cases.append(("residual_block", "channels_last bf16 autocast", tuple(x.shape),
                      _autocast(block_cl, x_cl, device)))
        cases.append(("residual_block", "channels_last bf16 autocast, for_inference", tuple(x.shape),
                      _autocast(folded_cl, x_cl, device)))

    conv, x = nn.Conv2d(128, 128, 3, padding=1).to(device).eval(), randn(batch, 128, 16, 16)
    conv_cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases.append(("conv2d", "NCHW fp32", tuple(x.shape), lambda x=x: conv(x)))
    cases.append(("conv2d", "channels_last fp32", tuple(x.shape), lambda x=x_cl: conv_cl(x)))
    if variants_bf16:
        cases.append(("conv2d", "NCHW bf16 autocast", tuple(x.shape), _autocast(conv, x, device)))
        cases.append(("conv2d", "channels_last bf16 autocast", tuple(x.shape), _autocast(conv_cl, x_cl, device)))
    return cases


def _autocast(module: nn.Module, x: torch.Tensor, device: str) -> Callable[[], torch.Tensor]:
    def fn():
        with torch.autocast(device, dtype=torch.bfloat16):
            return module(x)
    return fn


def run(devices=("cpu", "cuda"), seq_lens=(16, 64, 256, 1024), batch: int = 8, conv_batch: int = 32,
        repeats: int = 5, bf16: bool = True, quick: bool = False, out_dir: Optional[str] = None,
        target_s: float = 0.02) -> dict:
    """Run every kernel case on every device; write results/bench_kernels.{md,json}."""
    devices, notes = common.available_devices(devices)
    rows = []
    for device in devices:
        first = {}
        for kernel, variant, shape, fn in kernel_cases(device, list(seq_lens), batch, conv_batch, bf16):
            seconds, k = time_kernel(fn, device, repeats, target_s)
            key = (kernel, "x".join(map(str, shape)))
            if key not in first:                  # the work of a kernel and shape, counted on its first variant
                first[key] = (seconds, common.count_flops(lambda fn=fn: _no_grad(fn)))
            flops = first[key][1]
            row = {"device": device, "kernel": kernel, "variant": variant, "shape": key[1],
                   "ms": seconds * 1e3, "calls_per_repeat": k, "repeats": repeats, "flops": flops,
                   "gflops": flops / seconds / 1e9 if flops else None,
                   "gbps": 2 * math.prod(shape) * (2 if "bf16" in variant else 4) / seconds / 1e9
                   if kernel in MEMORY_BOUND else None}
            row["vs_first"] = first[key][0] / seconds
            rows.append(row)
            common.log(f"[kernels] {device} {kernel:>15} {variant:>28} {row['shape']:>14}: {row['ms']:.3f} ms")
    common.speedup_vs_cpu(rows, ("kernel", "variant", "shape"), "ms")
    table = common.Table("Kernels", COLUMNS, rows, notes=[
        "ms/call: median over repeats of (repeat time / calls per repeat), torch.no_grad. "
        "Speed-up vs first variant: the first variant listed for that kernel and shape (attention: the einsum "
        "reference; conv rows: NCHW fp32) divided by this one.",
        "GFLOP/s: FLOPs counted once per kernel and shape on its first variant (the same work in every variant; "
        "the counter does not see inside every fused SDPA kernel) / time.",
        "GB/s (GroupNorm + SiLU, GELU): 2 x the tensor's bytes per call (one read, one write), a lower bound "
        "on the traffic.",
        "CUDA speed-up: the CPU row's ms/call / the CUDA row's, same kernel, variant and shape."])
    settings = {"seq_lens": list(seq_lens), "attention_batch": batch, "conv_batch": conv_batch, "repeats": repeats,
                "bf16": bf16, "quick": quick}
    md_path, json_path = common.write_results("bench_kernels", "Kernel speed: attention, GroupNorm, convolutions",
                                              [table], settings, notes, out_dir=out_dir)
    common.log(f"[kernels] wrote {md_path} and {json_path}")
    return {"rows": rows, "notes": notes, "md": md_path, "json": json_path}


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped where absent")
    parser.add_argument("--seq-lens", default="16,64,256,1024", help="attention sequence lengths")
    parser.add_argument("--batch", type=int, default=8, help="attention batch")
    parser.add_argument("--conv-batch", type=int, default=32, help="batch of the GroupNorm / conv rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variants")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="the CPU subset of `make bench` (3 repeats)")
    parser.add_argument("--out", default=None, help=f"output folder (default {common.RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(devices=common.parse_list(args.device), seq_lens=common.parse_list(args.seq_lens, int), batch=args.batch,
        conv_batch=args.conv_batch, repeats=3 if args.quick else args.repeats, bf16=not args.no_bf16,
        quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
