"""The benchmarks: the course baseline computes what md.sample computes, and every benchmark runs
end to end at tiny sizes and writes its tables. Speed itself is never asserted here."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root: `benchmarks`

import minidiff as md  # noqa: E402
from benchmarks import bench_kernels, bench_sampling, bench_training, common, course_baseline, modes  # noqa: E402
from benchmarks.run_all import split_section  # noqa: E402
from minidiff.nn import ContextUnet  # noqa: E402

T = 20


def tiny_unet(dtype=torch.float32):
    torch.manual_seed(0)
    return ContextUnet(in_channels=3, n_feat=8, n_cfeat=5, height=16).eval().to(dtype)


# ------------------------------------------------------------------------------------------ the course baseline
def test_the_library_course_schedule_has_the_course_alpha_bar():
    for schedule in (md.NoiseSchedule.course(T), bench_sampling.SCHEDULE):
        _, _, ab_t = course_baseline.course_tables(schedule.T, dtype=torch.float64)
        assert torch.allclose(schedule.alphas_cumprod, ab_t[1:], rtol=1e-12, atol=0)
    assert not hasattr(course_baseline, "minidiff_schedule")  # no copy of the table outside the library


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_course_ddpm_equals_md_sample_ddpm(dtype):
    """beta1 = 0, where the course's ab_t quirk vanishes: the two loops agree on every step, the same
    x_T and the same noise (both draw it from the generator, in the same order)."""
    model, x_T = tiny_unet(dtype), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    tables = course_baseline.course_tables(T, beta1=0.0, dtype=dtype)
    course = course_baseline.course_sample_ddpm(model, 2, T, tables, x_T=x_T,
                                                generator=torch.Generator().manual_seed(2))
    ours = md.sample(model, md.NoiseSchedule.course(T, beta_start=0.0), x_T.shape, sampler="ddpm", x_T=x_T,
                     generator=torch.Generator().manual_seed(2), progress=False)
    assert (course - ours).abs().max().item() < 1e-5


def test_course_ddpm_quirk_is_confined_to_the_last_step():
    """The course's beta1 = 1e-4: every step but the last (which mixes a_t[1] with ab_t[1] = a_t[0] a_t[1]) agrees."""
    model = tiny_unet(torch.float64)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tables = course_baseline.course_tables(T, dtype=torch.float64)
    states = []
    ours = md.sample(model, md.NoiseSchedule.course(T), x_T.shape, sampler="ddpm", x_T=x_T,
                     generator=torch.Generator().manual_seed(2), progress=False,
                     callback=lambda info: states.append(info["x"]))
    before_last = course_baseline.course_sample_ddpm(model, 2, T, tables, x_T=x_T, max_steps=T - 1,
                                                     generator=torch.Generator().manual_seed(2))
    assert (before_last - states[-2]).abs().max().item() < 1e-10
    course = course_baseline.course_sample_ddpm(model, 2, T, tables, x_T=x_T,
                                                generator=torch.Generator().manual_seed(2))
    assert (course - ours).abs().max().item() > 1e-6                 # the quirk is real, and small
    assert torch.allclose(course, ours, atol=0.05)


def test_course_ddim_equals_md_sample_ddim_trailing():
    model, x_T = tiny_unet(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    course = course_baseline.course_sample_ddim(model, 2, T, course_baseline.course_tables(T), n=5, x_T=x_T)
    ours = md.sample(model, md.NoiseSchedule.course(T), x_T.shape, sampler="ddim", steps=5,
                     spacing="trailing", x_T=x_T, progress=False)
    assert (course - ours).abs().max().item() < 1e-5


def test_max_steps_stops_both_loops_early():
    model, x_T = tiny_unet(), torch.randn(1, 3, 16, 16)
    calls = []
    counting = lambda x, t, context=None: calls.append(1) or model(x, t, context)
    bench_sampling.run_minidiff(counting, bench_sampling.SCHEDULE, "ddpm", x_T, max_steps=3)
    course_baseline.course_sample_ddpm(counting, 1, 500, course_baseline.course_tables(500), x_T=x_T, max_steps=3)
    assert len(calls) == 6


# ------------------------------------------------------------------------------------------ modes
def test_mode_wrappers_compute_what_the_network_computes():
    model, x = tiny_unet(), torch.randn(2, 3, 16, 16)
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        expected = model(x, t)
        channels_last = modes.wrap(model, "channels_last", x, t)
        assert torch.allclose(channels_last(x, t), expected, atol=1e-5)
        assert model.init_conv.conv1[0].weight.is_contiguous()        # the original is left in NCHW
        bf16 = modes.wrap(model, "bf16", x, t)(x, t)
        assert bf16.dtype == torch.float32 and torch.allclose(bf16, expected, atol=0.1)


def test_static_shapes_replays_through_md_sample():
    """The CUDA-graph wrapper's copy-in / replay / copy-out logic, with the capture replaced by a plain call."""
    model, x_T = tiny_unet(), torch.randn(2, 3, 16, 16)
    static = modes.StaticShapes(model, x_T, torch.full((2,), 0.5), graph=False)
    schedule = md.NoiseSchedule.linear(T)
    a = md.sample(static, schedule, x_T.shape, sampler="dpmpp_2m", steps=4, x_T=x_T, progress=False)
    b = md.sample(model, schedule, x_T.shape, sampler="dpmpp_2m", steps=4, x_T=x_T, progress=False)
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        static(torch.randn(3, 3, 16, 16), torch.full((3,), 0.5))


def test_mode_availability():
    assert modes.mode_unavailable("cuda_graphs", "cpu") is not None
    assert modes.mode_unavailable("eager", "cpu") is None
    with pytest.raises(ValueError, match="mode must be one of"):
        modes.mode_unavailable("fp8", "cpu")


# ------------------------------------------------------------------------------------------ helpers
def test_steps_within_budget():
    assert bench_sampling.steps_within(1.0, 0.01, 500, 3) == (33, 3)
    assert bench_sampling.steps_within(100.0, 0.01, 25, 3) == (25, 3)       # never more than every step
    assert bench_sampling.steps_within(1.0, 5.0, 500, 3) == (1, 1)          # one step, one repeat at least
    assert bench_sampling.quick_skip("cpu", 1024, "bf16", "ddim") is not None
    assert bench_sampling.quick_skip("cpu", 256, "eager", "ddpm") is not None
    assert bench_sampling.quick_skip("cpu", 32, "bf16", "ddpm") is None
    assert bench_sampling.quick_skip("cuda", 1024, "bf16", "ddpm") is None


def test_common_helpers():
    assert common.format_value(None) == "-" and common.format_value(1234.5) == "1,234"
    assert common.format_value(0.012345) == "0.0123" and common.format_value(12.345) == "12.35"
    assert common.Table("t", [("a", "|a|")], [{"a": "x | y"}]).markdown().splitlines()[-1] == "| x \\| y |"
    rows = [{"device": "cpu", "k": 1, "ms": 10.0}, {"device": "cuda", "k": 1, "ms": 2.0}]
    common.speedup_vs_cpu(rows, ("k",), "ms")
    assert rows[1]["cuda_speedup"] == 5.0 and "cuda_speedup" not in rows[0]
    order = []
    timings = common.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu",
                                 warmup=1, repeats=2)
    assert order == ["a", "b", "a", "b", "b", "a"] and len(timings["a"].times) == 2      # warm-up, A B, B A
    assert common._json_safe({"x": float("nan"), "y": (1, float("inf"))}) == {"x": None, "y": [1, None]}
    info = common.machine_info()
    assert info["torch"] == torch.__version__ and info["cpu_cores_logical"] >= 1


# ------------------------------------------------------------------------------------------ smoke runs
def _check_outputs(result, name, table_titles, number_keys):
    with open(result["json"]) as f:
        data = json.load(f)
    assert data["benchmark"] == name
    assert {"cpu_model", "cpu_cores_logical", "torch", "gpu"} <= set(data["machine"])
    assert set(data["tables"]) == set(table_titles)
    rows = [row for table in data["tables"].values() for row in table["rows"]]
    assert rows
    for row in rows:
        for key in number_keys:                          # None: not applicable to that row (a dash)
            if row.get(key) is not None:
                assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (key, row)
    with open(result["md"]) as f:
        text = f.read()
    assert "Machine: CPU:" in text and all(f"## {title}" in text for title in table_titles)
    if not torch.cuda.is_available():
        assert "GPU: none" in text
    return data


def _tiny_features(images):
    """Stand-in for the sprite feature classifier (which takes ~20 s to train where it is not cached)."""
    return images.flatten(1)[:, :6]


def test_bench_sampling_smoke(tmp_path):
    result = bench_sampling.run(devices=("cpu", "cuda"), batches=(1,), modes=("eager", "bf16", "cuda_graphs"),
                                samplers=("ddpm", "ddim"), n_feat=8, budget_s=0.02, repeats=1, quick=True,
                                baseline_batches=(1,), out_dir=str(tmp_path), peak_n=64, target_batch=2,
                                quality_n=6, quality_steps=2, quality_checkpoint=None, quality_features=_tiny_features)
    tables = ["Targets", "md.sample", "minidiff vs the course's loop", "Sampler overhead outside the network",
              "Fast mode vs fp32: sample quality"]
    data = _check_outputs(result, "bench_sampling", tables,
                          ["ms_per_step", "images_per_s", "gflops", "peak_percent", "ratio", "course_ms_per_step",
                           "step_ms", "forward_ms", "null_step_us", "overhead_percent"])
    sampling = data["tables"]["md.sample"]["rows"]
    assert {(r["mode"], r["sampler"]) for r in sampling} == {("eager", "ddpm"), ("eager", "ddim"),
                                                            ("bf16", "ddpm"), ("bf16", "ddim")}
    assert all(1 <= r["steps_measured"] <= r["steps"] for r in sampling)
    assert any("cuda_graphs" in note for note in data["notes"]) or torch.cuda.is_available()
    baseline = data["tables"]["minidiff vs the course's loop"]["rows"]
    assert [(r["mode"], r["sampler"], r["batch"]) for r in baseline] == [
        ("eager", "ddpm-500", 1), ("eager", "ddim-25", 1), ("eager", "ddpm-500", 1), ("eager", "ddim-25", 1),
        ("fast", "ddpm-500", 2), ("fast", "ddim-25", 2)]          # unet x 2, none x 2, then fast vs the course
    assert all(r["speedup"] == pytest.approx(1 / r["ratio"]) and r["ratio_noise"] >= 0 for r in baseline)
    peaks = data["settings"]["peaks_gflops"]["cpu"]
    assert peaks["fp32"] == max(peaks["fp32_matmul"], peaks["fp32_conv"]) > 0 and peaks["bf16"] > 0
    quality = data["tables"]["Fast mode vs fp32: sample quality"]["rows"]
    assert len(quality) == 1 + torch.cuda.is_available() and quality[0]["n"] == 6
    assert 0 <= quality[0]["mean_abs_diff"] <= quality[0]["max_abs_diff"] < 0.5

    targets = data["tables"]["Targets"]["rows"]
    names = [r["target"] for r in targets]
    expected = ["cpu: sampler overhead outside the network, ddpm-500 batch 2",
                "cpu: md.Stepper loop overhead outside the network, ddpm-500 batch 2",
                "cpu: sampler overhead outside the network, ddim-25 batch 2",
                "cpu: md.Stepper loop overhead outside the network, ddim-25 batch 2",
                "cpu: fp32 md.sample vs the course loop, ddpm-500 batch 1",
                "cpu: fp32 md.sample vs the course loop, ddim-25 batch 1",
                "cpu: fast mode vs the course loop (fp32), ddpm-500 batch 2",
                "cpu: fast mode vs the course loop (fp32), ddim-25 batch 2",
                "cpu: fast mode leaves sample quality unchanged (6 samples, ddim-2)",
                "H100: DDIM-25, 32 sprites, one md.sample call", "H100: 1024 sprites, bf16, DDIM-25",
                "H100: fraction of peak printed on every GPU row", "H100: the course preset trains in <= 3 minutes",
                "reference: ContextUnet n_feat=8 GFLOP per image per forward (not the course's n_feat=64)"]
    assert names == expected
    for row in targets:
        assert row["holds"] in ("yes", "no", "no (within the noise)", "- (reference)") or \
            row["holds"].startswith(("not run: ", "yes (measured on", "no (measured on")), row
        assert row["measured"] and row["limit"] and row["how"]
    if not torch.cuda.is_available():
        assert all(r["holds"] == "not run: no GPU on this machine" for r in targets if r["target"].startswith("H100"))
    assert targets[-1]["value"] > 0 and targets[-1]["limit_value"] == 0.301
    with open(result["md"]) as f:
        text = f.read()
    assert text.index("## Targets") < text.index("## md.sample")
    assert "max \\|diff\\|" in text                              # a '|' in a cell is escaped

    summary_parts = split_section(text.splitlines(), "## Targets")
    assert summary_parts[0][0] == "## Targets" and "## Targets" not in summary_parts[1]
    assert len([line for line in summary_parts[0] if line.startswith("| cpu: ")]) == 9


def test_fast_mode_runs_and_falls_back(monkeypatch):
    """fast = channels_last + bf16 autocast where the device has fast bf16, else channels_last fp32; either
    way it runs through md.sample and stays close to fp32."""
    model, x_T = tiny_unet(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 0.5)
    bf16, reason = modes.fast_bf16("cpu")
    assert isinstance(bf16, bool) and reason
    assert modes.mode_unavailable("fast", "cpu") is None and "fast" in bench_sampling.default_modes("cpu", True)
    schedule = md.NoiseSchedule.linear(T)
    reference = md.sample(model, schedule, x_T.shape, sampler="ddim", steps=3, x_T=x_T, progress=False)
    fast = modes.wrap(model, "fast", x_T, t)
    assert isinstance(fast, modes.Autocast) == bf16
    out = md.sample(fast, schedule, x_T.shape, sampler="ddim", steps=3, x_T=x_T, progress=False)
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=0.2)

    no_bf16 = lambda device: (False, "no native bf16 (test)")  # noqa: E731
    monkeypatch.setattr(modes, "fast_bf16", no_bf16)
    monkeypatch.setattr(bench_sampling, "fast_bf16", no_bf16)
    fallback = modes.wrap(model, "fast", x_T, t)
    assert isinstance(fallback, modes.ChannelsLast)                    # channels_last fp32: no autocast
    out = md.sample(fallback, schedule, x_T.shape, sampler="ddim", steps=3, x_T=x_T, progress=False)
    assert torch.allclose(out, reference, atol=1e-4)
    assert bench_sampling.peak_for({"fp32": 1.0, "bf16": 2.0}, "fast", "cpu") == ("fp32", 1.0)


def test_fast_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(modes, "_cpu_flags", lambda: {"avx512f", "avx512bw"})           # AVX-512 without bf16
    assert modes.fast_bf16("cpu")[0] is False and "falls back" in modes.fast_bf16("cpu")[1]
    if torch.backends.mkldnn.is_available():
        try:
            onednn_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            onednn_bf16 = False
        monkeypatch.setattr(modes, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
        assert modes.fast_bf16("cpu")[0] == bool(onednn_bf16)


def test_targets_read_the_cuda_rows(monkeypatch):
    """The GPU targets on made-up CUDA rows (no GPU needed), and the CPU targets' "not run" reasons."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")
    cuda = [{"device": "cuda", "mode": "cuda_graphs", "sampler": "ddim", "batch": 32, "sample_s": 0.004,
             "images_per_s": 8000.0, "peak_kind": "tf32", "peak_percent": 3.0},
            {"device": "cuda", "mode": "fast", "sampler": "ddim", "batch": 1024, "sample_s": 0.06,
             "images_per_s": 17000.0, "peak_kind": "bf16", "peak_percent": 20.0}]
    rows = bench_sampling.targets(("cuda",), cuda, [], [], [], 301e6, 64, {}, 32, baseline=False, quality=False)
    by_name = {r["target"].split(",")[0]: r for r in rows}
    assert by_name["H100: DDIM-25"]["holds"] == "yes" and by_name["H100: DDIM-25"]["value"] == 0.004
    assert by_name["H100: 1024 sprites"]["holds"] == "no" and "fast" in by_name["H100: 1024 sprites"]["measured"]
    assert by_name["H100: fraction of peak printed on every GPU row"]["holds"] == "yes"
    assert by_name["H100: the course preset trains in <= 3 minutes"]["holds"].startswith("not run: ")
    assert all(r["holds"] == "not run: CPU not requested" for r in rows if r["target"].startswith("cpu: ")
               and "quality" not in r["target"])
    assert rows[-1]["measured"] == "0.301 GFLOP"


def test_bench_kernels_smoke(tmp_path):
    result = bench_kernels.run(devices=("cpu",), seq_lens=(16,), batch=2, conv_batch=2, repeats=1, bf16=False,
                               out_dir=str(tmp_path), target_s=0.002)
    data = _check_outputs(result, "bench_kernels", ["Kernels"], ["ms", "gflops", "gbps", "vs_first"])
    rows = data["tables"]["Kernels"]["rows"]
    assert all(r["gflops"] is not None for r in rows if r["kernel"] not in bench_kernels.MEMORY_BOUND)
    assert all(r["gbps"] is not None for r in rows if r["kernel"] in bench_kernels.MEMORY_BOUND)
    kernels = {(r["kernel"], r["variant"]) for r in rows}
    assert ("attention", "sdpa") in kernels and ("conv2d", "channels_last fp32") in kernels
    assert ("gelu", "channels_last fp32, NHWC view") in kernels


def test_bench_training_smoke(tmp_path):
    result = bench_training.run(devices=("cpu",), modes=("eager",), batch_cpu=2, budget_s=0.01, repeats=1, n_feat=8,
                                out_dir=str(tmp_path), peak_n=64)
    data = _check_outputs(result, "bench_training", ["Training step"],
                          ["ms_per_step", "images_per_s", "gflops", "activations_mib", "state_mib"])
    assert {r["model"] for r in data["tables"]["Training step"]["rows"]} == {"context_unet", "score_unet"}


def test_quality_per_minute_variants_change_one_thing_each_and_build():
    from benchmarks import quality_per_minute as qpm
    from minidiff.presets import PRESETS, build_run
    base = qpm.run_description({})
    for name, variant in qpm.VARIANTS.items():
        run = qpm.run_description(variant)
        changed = [(section, key) for section in ("model", "schedule", "train")
                   for key in set(run[section]) | set(base[section])
                   if run[section].get(key) != base[section].get(key)]
        changed += [("model", key) for key in run["model"]["kwargs"]
                    if run["model"]["kwargs"][key] != base["model"]["kwargs"][key]]
        changed = [c for c in changed if c != ("model", "kwargs")]
        assert len({section for section, _ in changed}) <= 1 and (name == "base") == (not changed), name
        built = build_run(run)
        assert built.schedule is not None and built.config.steps == base["train"]["steps"]
    assert qpm.run_description({}) == base                           # the variants never edit the preset
    winners = {"train": {k: v for name in ("v_prediction", "min_snr", "lr_2e-3") for k, v in
                         qpm.VARIANTS[name]["train"].items()}}
    assert qpm.run_description({}, winners) == PRESETS["quick"]      # the quick preset: the winners combined


@pytest.mark.parametrize("argv, named", [
    (["--budgets", "-1"], "--budgets"), (["--budgets", "two"], "--budgets"), (["--budgets", ","], "--budgets"),
    (["--budgets", "inf"], "--budgets"), (["--n", "1"], "--n"), (["--threads", "0"], "--threads"),
    (["--calibrate", "0"], "--calibrate"), (["--variants", "bogus"], "'bogus'"),
    (["--combine", "v_prediction,nope"], "'nope'"), (["--ddpm", "nope"], "--ddpm"),
])
def test_quality_per_minute_refuses_bad_options_before_training(argv, named, capsys):
    from benchmarks import quality_per_minute as qpm
    with pytest.raises(SystemExit) as exit_info:
        qpm.main(argv)
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and named in message and "\n" not in message
