"""What every benchmark shares: the machine it ran on, a timer, peak probes (a large matmul and a large
convolution), FLOP counting, and writing results/NAME.md + results/NAME.json.

Timing rules (the same for every number in the tables):
  * warm-up calls first (allocator, caches, lazy initialisation, compilation), never timed;
  * then `repeats` timed calls; a table shows the MEDIAN, the JSON keeps every repeat;
  * on CUDA the clock is a pair of CUDA events around the call, read after synchronising, so the
    time is the GPU's (the host may return long before the kernels finish); on the CPU it is
    time.perf_counter().
FLOPs are counted by torch.utils.flop_counter.FlopCounterMode, which counts matmuls, convolutions
and attention (2 FLOPs per multiply-add) and nothing elementwise, on the "meta" device: exact counts
for any batch size without running the network.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ------------------------------------------------------------------------------------------ devices
def available_devices(requested: Sequence[str] = ("cpu", "cuda")) -> tuple[List[str], List[str]]:
    """(devices to run, plain-language notes on the ones skipped): CUDA is used only where present."""
    run, notes = [], []
    for name in requested:
        if name == "cuda" and not torch.cuda.is_available():
            notes.append("No CUDA GPU was found on this machine: the CUDA rows were not run.")
        elif name not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
        else:
            run.append(name)
    return run, notes


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    """CPU model and cores, torch and Python versions, the GPU (name, capability, driver) if any."""
    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": _physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "driver": _nvidia_driver(),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


def machine_line(info: dict) -> str:
    """One line naming the machine, for the top of a markdown report."""
    cpu = f"{info['cpu_model']} ({info['cpu_cores_logical']} logical cores; torch threads: {info['torch_threads']})"
    gpu = info["gpu"]
    gpu_text = (f"{gpu['name']} (compute {gpu['capability']}, driver {gpu['driver']}, CUDA {gpu['cuda_runtime']})"
                if gpu else "none (CUDA rows not run)")
    return f"CPU: {cpu}; GPU: {gpu_text}; torch {info['torch']}; load average {info['load_average_1_5_15']}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where that file does not exist."""
    try:
        cores, current = set(), {}
        with open("/proc/cpuinfo") as f:
            for line in list(f) + [""]:
                if not line.strip():
                    if "core id" in current:
                        cores.add((current.get("physical id"), current["core id"]))
                    current = {}
                elif ":" in line:
                    key, value = line.split(":", 1)
                    current[key.strip()] = value.strip()
        return len(cores) or None
    except OSError:
        return None


def _nvidia_driver() -> str:
    if shutil.which("nvidia-smi") is None:
        return "unknown"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Seconds per timed call: every repeat, and their median."""

    times: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def time_call(fn: Callable[[], object], device) -> float:
    """Seconds one call of fn() takes on `device` (CUDA events on a GPU, perf_counter on the CPU)."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3                              # elapsed_time is in ms
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn: Callable[[], object], device, warmup: int = 1, repeats: int = 3) -> Timing:
    """`warmup` untimed calls, then `repeats` timed ones."""
    return interleaved({"fn": fn}, device, warmup, repeats)["fn"]


def interleaved(fns: Dict[str, Callable[[], object]], device, warmup: int = 1, repeats: int = 3) -> Dict[str, Timing]:
    """Time several functions with their repeats interleaved, the order reversed every other repeat
    (A B, B A, A B ...): a change in machine load hits all of them alike, and none always runs
    first (which measurably favours it). Returns {name: Timing}."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    timings = {name: Timing() for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            timings[name].times.append(time_call(fns[name], device))
    return timings


# ------------------------------------------------------------------------------------------ peak and FLOPs
def matmul_peak_gflops(device, dtype: torch.dtype = torch.float32, n: Optional[int] = None,
                       repeats: int = 5, tf32: Optional[bool] = None) -> float:
    """GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), the best of `repeats`: the device's
    practical peak for that dtype, measured in the same run as the benchmark it normalises.

    n defaults to 1024 on the CPU and 8192 on CUDA. tf32 (CUDA, fp32 only) sets
    torch.backends.cuda.matmul.allow_tf32 for the probe and restores it after.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        best = min(measure(lambda: a @ b, device, warmup=2, repeats=repeats).times)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / best / 1e9


def conv_peak_gflops(device, dtype: torch.dtype = torch.float32, repeats: int = 5, tf32: Optional[bool] = None,
                     small: bool = False) -> float:
    """GFLOP/s of a large 3x3 convolution (256 -> 256 channels, 32x32, batch 16 on a CPU, 64 on CUDA; batch 1
    with small=True), the best of `repeats`. tf32 (CUDA) sets cuDNN's TF32 switch for the probe.

    Convolutions and matmuls can run on different libraries (oneDNN vs MKL on a CPU), and one may be
    much faster than the other on a given chip: on an AMD EPYC, MKL's fp32 matmul reached ~108 GFLOP/s
    per core where oneDNN's 3x3 convolution reached ~184.
    """
    device = torch.device(device)
    batch = 1 if small else (64 if device.type == "cuda" else 16)
    x = torch.randn(batch, 256, 32, 32, device=device).to(dtype)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype)
    previous = torch.backends.cudnn.allow_tf32
    if tf32 is not None:
        torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.no_grad():
            best = min(measure(lambda: F.conv2d(x, w, padding=1), device, warmup=2, repeats=repeats).times)
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    return 2 * batch * 32 * 32 * 256 * 256 * 9 / best / 1e9


def device_peaks(device, bf16: bool, quick: bool = False, n: Optional[int] = None) -> Dict[str, float]:
    """The peaks a benchmark's rows are held to, in GFLOP/s: "fp32", "tf32" (CUDA), "bf16" (if asked),
    each the faster of a large matmul and a large 3x3 convolution (see conv_peak_gflops), and the two
    probes' own numbers as "fp32_matmul", "fp32_conv", ...

    fp32 is measured with TF32 off; bf16 matmuls on a CPU with quick=True use 512 x 512 matrices.
    n overrides the matmul size and shrinks the convolution to batch 1 (the tests).
    """
    cuda = torch.device(device).type == "cuda"
    kinds = [("fp32", torch.float32, False if cuda else None)] + ([("tf32", torch.float32, True)] if cuda else [])
    kinds += [("bf16", torch.bfloat16, None)] if bf16 else []
    peaks = {}
    for kind, dtype, tf32 in kinds:
        size = n or (512 if kind == "bf16" and quick and not cuda else None)
        peaks[f"{kind}_matmul"] = matmul_peak_gflops(device, dtype, size, tf32=tf32)
        peaks[f"{kind}_conv"] = conv_peak_gflops(device, dtype, tf32=tf32, small=n is not None)
        peaks[kind] = max(peaks[f"{kind}_matmul"], peaks[f"{kind}_conv"])
    return peaks


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs torch.utils.flop_counter counts while fn() runs (matmul / conv / attention only)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, *inputs_on_meta, backward: bool = False) -> int:
    """FLOPs of one forward (and backward, if asked) of `model` on inputs built on the meta device.

    The model is deep-copied to "meta", so nothing runs and nothing is allocated: the count for
    batch 1024 costs the same as for batch 1. Example: forward_flops(net, torch.empty(8, 3, 16, 16,
    device="meta"), torch.empty(8, device="meta")).
    """
    meta_model = copy.deepcopy(model).to("meta")

    def run():
        if backward:
            meta_model(*inputs_on_meta).float().square().mean().backward()
        else:
            with torch.no_grad():
                meta_model(*inputs_on_meta)
    return count_flops(run)


# ------------------------------------------------------------------------------------------ results
@dataclass
class Table:
    """One markdown table: `columns` are (key, header) pairs read from each row dict."""

    title: str
    columns: List[tuple]
    rows: List[dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        lines.append("| " + " | ".join(_cell(header) for _, header in self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(format_value(row.get(key))) for key, _ in self.columns) + " |")
        if not self.rows:
            lines.append("| " + " | ".join("-" for _ in self.columns) + " |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """A table cell: a '|' inside it (as in |x - y|) is escaped, or it would end the cell."""
    return text.replace("|", "\\|")


def format_value(value) -> str:
    """Numbers to 3-4 significant figures; None (not measured / not applicable) as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def write_results(name: str, title: str, tables: Sequence[Table], settings: dict, notes: Sequence[str] = (),
                  machine: Optional[dict] = None, out_dir: Optional[str] = None) -> tuple[str, str]:
    """Write out_dir/NAME.md (tables) and out_dir/NAME.json (rows + machine + settings); return both paths."""
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    machine = machine or machine_info()
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    md = [f"# {title}", "", f"Measured {created} with `{command}`.", "", f"Machine: {machine_line(machine)}.", ""]
    md += [f"- {note}" for note in notes]
    md += ["", *[table.markdown() for table in tables]]
    md_path, json_path = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.json")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    payload = {"benchmark": name, "title": title, "created": created, "command": command, "machine": machine,
               "settings": settings, "notes": list(notes),
               "tables": {t.title: {"notes": t.notes, "rows": t.rows} for t in tables}}
    with open(json_path, "w") as f:
        json.dump(_json_safe(payload), f, indent=1)
    return md_path, json_path


def _json_safe(value):
    """NaN and inf become None (JSON has neither); tuples become lists; dtypes and devices strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


def speedup_vs_cpu(rows: List[dict], key_fields: Sequence[str], field: str, out_field: str = "cuda_speedup",
                   higher_is_better: bool = False) -> None:
    """On each CUDA row, set `out_field` to how many times faster it is than the CPU row with the same
    key fields: CPU / CUDA for a time `field`, CUDA / CPU for a rate (higher_is_better=True)."""
    cpu = {tuple(r[k] for k in key_fields): r for r in rows if r.get("device") == "cpu"}
    for row in rows:
        if row.get("device") == "cuda":
            match = cpu.get(tuple(row[k] for k in key_fields))
            if match and match.get(field) and row.get(field):
                ratio = match[field] / row[field]
                row[out_field] = 1 / ratio if higher_is_better else ratio


def parse_list(text: str, kind=str) -> list:
    """'1,32,256' -> [1, 32, 256] (kind=int); 'eager,bf16' -> ['eager', 'bf16']."""
    return [kind(part) for part in text.split(",") if part.strip()]


def log(message: str) -> None:
    print(message, flush=True)
