"""Training speed and memory: ContextUnet (sprites, 16x16x3) and ScoreUNet (28x28x1), eager vs
torch.compile vs bf16 autocast (and channels_last), CPU vs CUDA.

    python benchmarks/bench_training.py --quick
    python benchmarks/bench_training.py --device cuda --batch-cuda 512 --modes eager,bf16,compile

One training step is what the Trainer does at its core (Ho et al. 2020, Algorithm 1; Song et al. 2021,
Eq. 7): zero the gradients, the loss (md.diffusion_loss for ContextUnet with one-hot contexts,
md.dsm_loss with VESDE(25) for ScoreUNet) under the mode's autocast, backward, one AdamW step.
Not included: data loading, context dropout, gradient clipping and the EMA update.
A row: warm-up steps (3 with torch.compile, which compiles forward and backward on the first),
then `repeats` timed runs of N steps; step time = median / N; images/s = batch / step time.
GFLOP/s: the network's forward + backward matmul/conv FLOPs (torch.utils.flop_counter) / step time;
"% of peak" divides it by the device's peak probed in the same run (common.device_peaks).
Memory: on CUDA the peak of torch.cuda.max_memory_allocated over one step; on every device the
bytes of activations autograd saves for backward (measured with saved-tensor hooks, eager modes)
and of weights + gradients + AdamW's two moments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from minidiff.losses import diffusion_loss, dsm_loss  # noqa: E402
from minidiff.nn import ContextUnet, ScoreUNet  # noqa: E402
from minidiff.schedule import NoiseSchedule  # noqa: E402
from minidiff.sde import VESDE  # noqa: E402

TRAIN_MODES = ("eager", "bf16", "channels_last", "compile")
MODELS = ("context_unet", "score_unet")
COLUMNS = [("device", "device"), ("model", "network"), ("mode", "mode"), ("batch", "batch"),
           ("steps_measured", "steps timed"), ("ms_per_step", "ms/step"), ("images_per_s", "images/s"),
           ("gflops", "GFLOP/s"), ("peak_percent", "% of peak"), ("activations_mib", "saved activations MiB"),
           ("state_mib", "weights+grads+Adam MiB"), ("peak_allocated_mib", "CUDA peak allocated MiB"),
           ("cuda_speedup", "CUDA speed-up")]


def build(name: str, n_feat: int = 64):
    """(network, image shape [C, H, W], loss(model, x, generator) -> scalar) for a model name."""
    if name == "context_unet":
        model, shape = ContextUnet(in_channels=3, n_feat=n_feat, n_cfeat=5, height=16), (3, 16, 16)
        schedule = NoiseSchedule.course(T=500)                                   # the course's table

        def loss(net, x, generator):
            labels = torch.randint(0, 5, (x.shape[0],), generator=generator).to(x.device)
            context = F.one_hot(labels, 5).to(x.dtype)                                # [B, 5] one-hot
            return diffusion_loss(net, x, schedule, context=context, generator=generator)
    elif name == "score_unet":
        model, shape, sde = ScoreUNet(in_channels=1), (1, 28, 28), VESDE(sigma=25.0)
        model.sde = sde

        def loss(net, x, generator):
            return dsm_loss(net, x, sde, generator=generator)
    else:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return model, shape, loss


class Step:
    """One optimiser step of `loss` on a fixed batch x, in one of TRAIN_MODES."""

    def __init__(self, model, loss, x, mode: str):
        if mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {mode!r}")
        self.model, self.loss, self.mode = model, loss, mode
        self.x = x.contiguous(memory_format=torch.channels_last) if mode == "channels_last" else x
        if mode == "channels_last":
            self.model = model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if mode == "compile" else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.mode == "bf16")
        with autocast:
            loss = self.loss(self.net, self.x, self.generator)
        loss.backward()
        self.optimizer.step()


def saved_activation_bytes(step: Step) -> int:
    """Bytes of the distinct tensors autograd saves for backward during one step (eager modes)."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def state_bytes(model) -> int:
    """Weights + gradients + AdamW's two moments: 4 copies of the parameters."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def bench_row(name: str, device: str, mode: str, batch: int, budget_s: float, repeats: int, n_feat: int = 64,
              peaks: Optional[dict] = None) -> dict:
    torch.manual_seed(0)
    model, shape, loss = build(name, n_feat)
    model = model.to(device).train()
    x = (torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)  # [-1, 1]
    sde = getattr(model, "sde", None)
    model.sde = None                            # the SDE's time checks read values, which meta tensors lack;
    flops = common.forward_flops(model, torch.empty(batch, *shape, device="meta"),   # dividing by sigma_t
                                 torch.full((batch,), 0.5, device="meta"), backward=True)  # costs no FLOPs
    model.sde = sde
    step = Step(model, loss, x, mode)
    for _ in range(3 if mode == "compile" else 2):
        step_s = common.time_call(step, device)
    n = max(1, int(budget_s / max(repeats * step_s, 1e-9)))
    timing = common.measure(lambda: [step() for _ in range(n)], device, warmup=0, repeats=repeats)
    ms_per_step = timing.median / n * 1e3
    row = {"device": device, "model": name, "mode": mode, "batch": batch, "steps_measured": n, "repeats": repeats,
           "ms_per_step": ms_per_step, "images_per_s": batch / (ms_per_step / 1e3), "times_s": timing.times,
           "gflop_per_step": flops / 1e9, "gflops": flops / (ms_per_step / 1e3) / 1e9,
           "state_mib": state_bytes(model) / 2**20,
           "parameters": sum(p.numel() for p in model.parameters())}
    if peaks:
        tf32 = device == "cuda" and torch.backends.cudnn.allow_tf32
        kind = "bf16" if mode == "bf16" else ("tf32" if tf32 else "fp32")
        if kind in peaks:
            row.update(peak_kind=kind, peak_percent=100 * row["gflops"] / peaks[kind])
    if mode != "compile":
        row["activations_mib"] = saved_activation_bytes(step) / 2**20
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def run(devices=("cpu", "cuda"), models=MODELS, modes=None, batch_cpu: int = 32, batch_cuda: int = 256,
        budget_s: float = 10.0, repeats: int = 3, n_feat: int = 64, quick: bool = False,
        out_dir: Optional[str] = None, peak_n: Optional[int] = None) -> dict:
    """Every network x mode on every device present; write results/bench_training.{md,json}."""
    devices, notes = common.available_devices(devices)
    modes = list(modes or (["eager", "bf16"] if quick else TRAIN_MODES))
    rows, skipped, peaks_all = [], [], {}
    for device in devices:
        peaks = peaks_all[device] = common.device_peaks(device, "bf16" in modes, quick, peak_n)
        for name in models:
            for mode in modes:
                if mode == "compile" and device == "cpu" and quick:
                    skipped.append(f"{device} {name} compile: not in --quick on CPU (compiling forward and backward "
                                   "takes about a minute there)")
                    continue
                batch = batch_cuda if device == "cuda" else batch_cpu
                row = bench_row(name, device, mode, batch, budget_s, repeats, n_feat, peaks)
                rows.append(row)
                common.log(f"[training] {device} {name:>12} {mode:>13} batch {batch}: "
                           f"{row['ms_per_step']:.1f} ms/step, {row['images_per_s']:.0f} images/s")
    common.speedup_vs_cpu(rows, ("model", "mode"), "images_per_s", higher_is_better=True)
    table = common.Table("Training step", COLUMNS, rows, notes=[
        "One step: zero_grad, loss (diffusion_loss / dsm_loss) under the mode's autocast, backward, AdamW step; "
        "no data loading, EMA or clipping. ms/step: median over repeats of (repeat time / steps timed).",
        "GFLOP/s: network forward + backward FLOPs (torch.utils.flop_counter) per step / step time; % of peak: "
        "against the faster of a large matmul and a large 3x3 convolution probed in the same run, in the mode's "
        "dtype (CUDA fp32 rows: TF32 when cuDNN TF32 is on).",
        "Saved activations: distinct tensors autograd keeps for backward in one step (eager modes only). "
        "CUDA peak allocated: torch.cuda.max_memory_allocated over one step.",
        "Peak probes (GFLOP/s): " + "; ".join(f"{d}: " + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
                                               for d, p in peaks_all.items()),
        "CUDA speed-up: CUDA images/s / CPU images/s, same network and mode (the batches differ: "
        f"{batch_cpu} on CPU, {batch_cuda} on CUDA)."])
    all_notes = list(notes) + [f"Not run: {s}" for s in skipped]
    settings = {"models": list(models), "modes": modes, "batch_cpu": batch_cpu, "batch_cuda": batch_cuda,
                "budget_s_per_row": budget_s, "repeats": repeats, "n_feat": n_feat, "quick": quick,
                "peaks_gflops": peaks_all}
    md_path, json_path = common.write_results("bench_training", "Training speed and memory", [table], settings,
                                              all_notes, out_dir=out_dir)
    common.log(f"[training] wrote {md_path} and {json_path}")
    return {"rows": rows, "notes": all_notes, "md": md_path, "json": json_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped where absent")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=None, help=f"comma list of {TRAIN_MODES}; default all (eager,bf16 "
                                                      "with --quick)")
    parser.add_argument("--batch-cpu", type=int, default=32)
    parser.add_argument("--batch-cuda", type=int, default=256)
    parser.add_argument("--n-feat", type=int, default=64, help="ContextUnet width")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed work per row (10; 2 --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="the CPU subset of `make bench`")
    parser.add_argument("--out", default=None, help=f"output folder (default {common.RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(devices=common.parse_list(args.device), models=common.parse_list(args.models),
        modes=common.parse_list(args.modes) if args.modes else None, batch_cpu=args.batch_cpu,
        batch_cuda=args.batch_cuda, budget_s=args.budget or (2.0 if args.quick else 10.0), repeats=args.repeats,
        n_feat=args.n_feat, quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
