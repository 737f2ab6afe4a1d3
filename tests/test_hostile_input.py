"""Hostile input that must end in ONE line and exit code 2, before anything big is allocated or written.

Four causes, each a table of values (the command line is called in-process, `main([...])`, to stay fast;
a few rows run as real processes, under an address-space limit so that a regression fails instead of
exhausting the machine):
  * sizes are bounded before allocating (minidiff.limits): grid pictures, sample counts, image sides,
    model widths, batches;
  * config files are type-checked against the schema, errors naming the field's path;
  * a config section of another kind replaces the preset's section instead of merging into it;
  * small ones: output paths checked before writing, seeds in range, --image-size, eval's arguments first,
    argparse errors on one line, a bad image found by a DataLoader worker.
No test here allocates what it asks for: every refused size is far beyond any machine, or the memory limit
is lowered with MINIDIFF_MEMORY_LIMIT_GB.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff import imaging, limits
from minidiff.cli import main as cli_main
from minidiff.presets import PRESETS, build_run, resolve
from minidiff.train import TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = md.NoiseSchedule.linear(T=20)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "checkpoint.pt"
    torch.manual_seed(0)
    model = ckpt.build_model("ContextUnet", in_channels=3, n_feat=8, n_cfeat=5, height=16)
    ckpt.save_checkpoint(path, model, schedule=S, ema_model=model)
    return str(path)


def run_cli(argv, capsys):
    """(exit code, stderr lines) of `minidiff argv` run in this process."""
    try:
        code = cli_main(argv)
    except SystemExit as exit_info:                                     # argparse's own errors
        code = exit_info.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code, err, match):
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("minidiff") and "Traceback" not in err[0] and len(err[0]) < 600, err[0]
    assert re.search(match, err[0]), err[0]


# ================================================================================ sizes bounded
SAMPLE_SIZE_ROWS = [  # (id, extra argv, pattern)
    ("scale 1e6", ["--scale", "1000000"], r"--scale 1000000: the grid .* pixels; a picture side is at most 65,535"),
    ("scale 50000", ["--scale", "50000"], r"--scale 50000: the grid"),
    ("nrow 1e8", ["--nrow", "100000000"], r"--nrow 100000000.*a picture side is at most"),
    ("nrow 1e8 scale 1", ["--nrow", "100000000", "--scale", "1"], r"--nrow 100000000"),
    ("n 1e9", ["--n", "1000000000"], r"--n 1000000000.*a picture side is at most"),
    ("n 1e9 nrow 1", ["--n", "1000000000", "--nrow", "1", "--scale", "1"], r"--n 1000000000"),
    ("n 1e12 huge", ["--n", "1000000000000", "--nrow", "1000000", "--scale", "1"], r"--n 1000000000000"),
    ("n 1e7 within the picture side", ["--n", "10000000", "--nrow", "3800", "--scale", "1"],
     r"--n 10000000.* needs about .*more than the limit"),
    ("gif frames", ["--scale", "1", "--n", "1000000", "--nrow", "3800", "--gif", "t.gif"], r"--n 1000000"),
]


@pytest.mark.parametrize("extra, match", [pytest.param(a, m, id=i) for i, a, m in SAMPLE_SIZE_ROWS])
def test_sample_sizes_are_refused_before_allocating(extra, match, checkpoint_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIDIFF_MEMORY_LIMIT_GB", "8")
    code, err = run_cli(["sample", "--checkpoint", checkpoint_file, *extra], capsys)
    assert_one_line(code, err, match)
    assert not os.listdir(tmp_path)                                     # nothing written


def test_the_memory_limit_is_the_stated_one(checkpoint_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIDIFF_MEMORY_LIMIT_GB", "0.001")                # 1 MiB: 64 sprites do not fit
    code, err = run_cli(["sample", "--checkpoint", checkpoint_file, "--n", "64"], capsys)
    assert_one_line(code, err, r"--n 64: 64 samples of 3x16x16 needs about .* limit of 1.0 MiB "
                               r"\(MINIDIFF_MEMORY_LIMIT_GB")
    monkeypatch.setenv("MINIDIFF_MEMORY_LIMIT_GB", "lots")
    code, err = run_cli(["sample", "--checkpoint", checkpoint_file, "--n", "2"], capsys)
    assert_one_line(code, err, r"MINIDIFF_MEMORY_LIMIT_GB must be a number of GiB, got 'lots'")
    monkeypatch.delenv("MINIDIFF_MEMORY_LIMIT_GB")
    assert limits.memory_limit() > 2**28 and not os.listdir(tmp_path)          # this machine's RAM


TRAIN_SIZE_ROWS = [  # (id, argv after "train", pattern)
    ("image-size 100000", ["--data", "DATA", "--image-size", "100000"],
     r"--image-size must be an integer in \[1, 4096\]"),
    ("image-size 4097", ["--data", "DATA", "--image-size", "4097"], r"--image-size .* got 4097"),
    ("batch 1e9", ["--batch-size", "1000000000"], r"batch_size 1000000000.* needs about .*more than the limit"),
]


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=i) for i, a, m in TRAIN_SIZE_ROWS])
def test_train_sizes_are_refused_before_allocating(argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "data", 4)
    argv = [str(tmp_path / "data") if a == "DATA" else a for a in argv]
    code, err = run_cli(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert_one_line(code, err, match)
    assert not (tmp_path / "run").exists()


def _image_folder(root, n, size=8, bad=()):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        path = root / f"img{k:03d}.png"
        if k in bad:
            path.write_bytes(b"not a png at all")
        else:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return root


API_SIZE_ROWS = [  # (id, call, pattern): the Python API checks what it can
    ("save_image_grid scale", lambda p: imaging.save_image_grid(torch.zeros(4, 3, 16, 16), p, scale=10**7),
     r"scale 10000000: the grid .* a picture side is at most 65,535"),
    ("save_image_grid nrow", lambda p: imaging.save_image_grid(torch.zeros(4, 3, 16, 16), p, nrow=10**9, scale=1),
     r"nrow 1000000000"),
    ("trajectory gif scale", lambda p: imaging.save_trajectory_gif([torch.zeros(2, 1, 8, 8)], p, scale=10**6),
     r"scale 1000000"),
    ("ImageFolder size", lambda p: md.data.ImageFolder(_image_folder(p.parent / "f", 1), size=100000),
     r"size must be an integer in \[1, 4096\], got 100000"),
    ("Trainer batch", lambda p: Trainer(ckpt.build_model("ContextUnet", n_feat=8, height=16),
                                        md.data.ProceduralSprites(4), TrainConfig(batch_size=4 * 10**9, steps=1),
                                        schedule=S),
     r"TrainConfig.batch_size 4000000000: a batch of .* needs about"),
    ("Trainer samples_per_class", lambda p: Trainer(
        ckpt.build_model("ContextUnet", n_feat=8, height=16), md.data.ProceduralSprites(4),
        TrainConfig(batch_size=4, steps=1, sample_every=1, samples_per_class=10**10), schedule=S),
     r"TrainConfig.samples_per_class 100000000000: .* needs about"),
]


@pytest.mark.parametrize("call, match", [pytest.param(c, m, id=i) for i, c, m in API_SIZE_ROWS])
def test_api_sizes_are_refused_before_allocating(call, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_a_model_too_wide_is_refused_before_it_is_built(tmp_path, monkeypatch, capsys):
    """Model widths: the parameters are counted on the meta device, never allocated."""
    for width, match in ((100000, r"model.kwargs: ContextUnet with [\d,]+ parameters .* needs about .* TiB"),
                         (10**12, r"model.kwargs: ContextUnet .* far too large")):
        config = _config(tmp_path, {"preset": "smoke", "model": {"class": "ContextUnet", "kwargs": {
            "in_channels": 3, "n_feat": width, "n_cfeat": 5, "height": 16}}})
        code, err = run_cli(["train", "--config", config, "--out", str(tmp_path / "run"), "--no-progress"], capsys)
        assert_one_line(code, err, match)


def test_estimates_are_of_the_right_size():
    """The estimate of a sample grid is what PIL would hold; a model's activations are counted on meta tensors."""
    assert limits.grid_size(64, 16, 16, None, 4) == ((8 * 17 + 1) * 4, (8 * 17 + 1) * 4)
    assert imaging.grid_image(torch.zeros(64, 3, 16, 16), scale=4).size == (548, 548)
    net = ckpt.build_model("ContextUnet", n_feat=8, height=16)
    per_image = limits.activation_bytes(net, (3, 16, 16), torch.zeros(5))
    assert 8 * 16 * 16 * 4 < per_image < 200 * 8 * 16 * 16 * 4            # tens of feature maps of 8 x 16 x 16
    assert limits.activation_bytes(net, (3, 16, 16), torch.zeros(5)) == per_image      # nothing left behind
    assert all(p.device.type == "cpu" for p in net.parameters())


# ================================================================================ config files typed
def _config(tmp_path, values) -> str:
    path = tmp_path / "config.json"
    path.write_text(values if isinstance(values, str) else json.dumps(values))
    return str(path)


SMOKE = {"preset": "smoke"}
CONFIG_ROWS = [  # (id, config, pattern)
    ("lr a string", {**SMOKE, "train": {"lr": "0.1"}}, r'train.lr: expected a number, got "0.1"'),
    ("steps a float", {**SMOKE, "train": {"steps": 2.5}}, r"train.steps: expected null or an integer, got 2.5"),
    ("batch_size a bool", {**SMOKE, "train": {"batch_size": True}}, r"train.batch_size: expected an integer, got true"),
    ("channels_last 'false'", {**SMOKE, "train": {"channels_last": "false"}},
     r'train.channels_last: expected a boolean \(true or false\), got "false"'),
    ("ema_warmup 0", {**SMOKE, "train": {"ema_warmup": 0}}, r"train.ema_warmup: expected a boolean"),
    ("adam_betas 5", {**SMOKE, "train": {"adam_betas": 5}}, r"train.adam_betas: expected a list of 2 numbers, got 5"),
    ("adam_betas strings", {**SMOKE, "train": {"adam_betas": ["0.9", "0.99"]}}, r"train.adam_betas: expected a list"),
    ("adam_betas three", {**SMOKE, "train": {"adam_betas": [0.9, 0.9, 0.9]}},
     r"train.adam_betas: expected a list of 2"),
    ("grad_clip a list", {**SMOKE, "train": {"grad_clip": [1]}}, r"train.grad_clip: expected null or a number"),
    ("decay a number", {**SMOKE, "train": {"decay": 3}}, r"train.decay.* got 3"),
    ("lr out of range", {**SMOKE, "train": {"lr": -1}}, r"train.lr must be a finite number > 0, got -1"),
    ("seed too large", {**SMOKE, "train": {"seed": 2**70}}, r"train.seed must be an integer in \[0, 2\*\*63 - 1\]"),
    ("train unknown field", {**SMOKE, "train": {"stpes": 3}}, r"train: unknown field\(s\) \['stpes'\]"),
    ("train null", {**SMOKE, "train": None}, r"train: expected an object, got null"),
    ("train a list", {**SMOKE, "train": [1, 2]}, r"train: expected an object, got \[1, 2\]"),
    ("schedule null", {**SMOKE, "schedule": None}, r"schedule: expected an object, got null"),
    ("schedule a list", {**SMOKE, "schedule": ["linear"]}, r"schedule: expected an object"),
    ("schedule T a string", {**SMOKE, "schedule": {"T": "100"}}, r'schedule.T: expected an integer, got "100"'),
    ("schedule T a float", {**SMOKE, "schedule": {"T": 10.5}}, r"schedule.T: expected an integer, got 10.5"),
    ("schedule unknown kind", {**SMOKE, "schedule": {"kind": "sigmoid"}}, r"schedule.kind: expected one of"),
    ("schedule unknown key", {**SMOKE, "schedule": {"beta_max": 0.02}}, r"schedule: unknown field\(s\) \['beta_max'\]"),
    ("schedule and sde", {**SMOKE, "schedule": {}, "sde": {"class": "VESDE"}}, r"give one of the sections"),
    ("sde class unknown", {**SMOKE, "sde": {"class": "XSDE"}}, r"sde.class: expected one of"),
    ("sde kwargs typed", {**SMOKE, "sde": {"class": "VESDE", "kwargs": {"sigma": "25"}}},
     r'sde.kwargs.sigma: expected (null or )?a number, got "25"'),
    ("model null", {**SMOKE, "model": None}, r"model: expected an object, got null"),
    ("model class a list", {**SMOKE, "model": {"class": ["ContextUnet"]}}, r"model.class: expected a string"),
    ("model class unknown", {**SMOKE, "model": {"class": "GPT"}}, r"model.class: expected one of"),
    ("model kwargs a list", {**SMOKE, "model": {"class": "ContextUnet", "kwargs": [64]}},
     r"model.kwargs: expected an object"),
    ("model n_feat a string", {**SMOKE, "model": {"class": "ContextUnet", "kwargs": {"n_feat": "64"}}},
     r'model.kwargs.n_feat: expected an integer, got "64"'),
    ("model unknown kwarg", {**SMOKE, "model": {"class": "ContextUnet", "kwargs": {"widht": 3}}},
     r"model.kwargs: unknown field\(s\) \['widht'\]"),
    ("model unknown key", {**SMOKE, "model": {"class": "ContextUnet", "kwags": {}}}, r"model: unknown field"),
    ("model height huge", {**SMOKE, "model": {"class": "ContextUnet", "kwargs": {"height": 100000}}},
     r"model.kwargs.height must be an integer in \[1, 4096\]"),
    ("data null", {**SMOKE, "data": None}, r"data: expected an object, got null"),
    ("data n a string", {**SMOKE, "data": {"n": "128"}}, r'data.n: expected an integer, got "128"'),
    ("data n huge", {**SMOKE, "data": {"n": 10**13}}, r"data.n 10000000000000: .* needs about"),
    ("data unknown kind", {**SMOKE, "data": {"kind": "imagenet"}}, r"data.kind: expected one of"),
    ("data size huge", {**SMOKE, "data": {"kind": "procedural_digits", "size": 100000}},
     r"data.size must be an integer in \[1, 4096\], got 100000"),
    ("image_folder flip a string", {**SMOKE, "data": {"kind": "image_folder", "root": ".", "size": 16,
                                                      "random_flip": "false"}},
     r"data.random_flip: expected a boolean"),
    ("preset a list", {"preset": ["smoke"]}, r'preset: expected null or a string, got \["smoke"\]'),
    ("preset a number", {"preset": 1}, r"preset: expected null or a string, got 1"),
    ("preset unknown", {"preset": "huge"}, r"preset: unknown preset 'huge'"),
    ("description a number", {**SMOKE, "description": 3}, r"description: expected a string"),
    ("unknown section", {**SMOKE, "trian": {}}, r"unknown config section\(s\) \['trian'\]"),
    ("not an object", [1, 2], r"must hold a JSON object, got list"),
    ("deeply nested", '{"train": ' + "[" * 100000 + "]" * 100000 + "}", r"nested too deeply|nested more than"),
    ("nested 40 deep", {**SMOKE, "train": {"x": json.loads("[" * 40 + "]" * 40)}}, r"nested more than 32 levels"),
    ("NaN literal", '{"preset": "smoke", "train": {"lr": NaN}}', r"train.lr must be a finite number > 0, got nan"),
]


@pytest.mark.parametrize("config, match", [pytest.param(c, m, id=i) for i, c, m in CONFIG_ROWS])
def test_config_files_are_type_checked(config, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["train", "--config", _config(tmp_path, config), "--out", str(tmp_path / "run"),
                         "--no-progress"], capsys)
    assert_one_line(code, err, match)
    assert not (tmp_path / "run").exists()


# ================================================================================ a section of another kind
def test_a_section_of_another_kind_replaces_the_presets(tmp_path):
    run = resolve(config_path=_config(tmp_path, {"preset": "smoke", "schedule": {"kind": "cosine"}}))
    assert run["schedule"] == {"kind": "cosine"}
    assert build_run(run).schedule.T == 1000                               # cosine's own default, nothing merged
    run = resolve(config_path=_config(tmp_path, {"preset": "smoke", "schedule": {"T": 50}}))
    assert run["schedule"] == {**PRESETS["smoke"]["schedule"], "T": 50}    # same kind: merged
    run = resolve(config_path=_config(tmp_path, {"preset": "smoke", "schedule": {"kind": "linear", "T": 50}}))
    assert run["schedule"]["beta_end"] == 0.02                             # "linear" named explicitly: merged
    root = _image_folder(tmp_path / "images", 4, size=16)
    run = resolve(config_path=_config(tmp_path, {"preset": "smoke", "data": {"kind": "image_folder", "root": str(root),
                                                                            "size": 16}}))
    assert run["data"] == {"kind": "image_folder", "root": str(root), "size": 16}
    assert len(build_run(run).dataset) == 4
    run = resolve(config_path=_config(tmp_path, {"preset": "quick", "data": {"kind": "procedural_digits", "n": 8}}))
    assert run["data"] == {"kind": "procedural_digits", "n": 8}
    run = resolve(config_path=_config(tmp_path, {"preset": "smoke", "sde": {"class": "VESDE"}}))
    assert "schedule" not in run and run["sde"] == {"class": "VESDE"}


def test_train_on_a_cosine_schedule_from_the_smoke_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, {"preset": "smoke", "schedule": {"kind": "cosine", "T": 50},
                                "train": {"steps": 1, "sample_every": 0}})
    code = cli_main(["train", "--config", config, "--out", "run", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    schedule = ckpt.schedule_or_sde_from_checkpoint(ckpt.load_checkpoint("run/checkpoint.pt"))
    assert schedule.T == 50 and torch.allclose(schedule.alphas_cumprod, md.NoiseSchedule.cosine(T=50).alphas_cumprod)


# ================================================================================ small ones
SMALL_ROWS = [  # (id, argv, pattern); FILE is an existing file, CKPT the checkpoint
    ("train --out a file", ["train", "--out", "FILE"], r"--out FILE is an existing file; give a folder"),
    ("train --out under a file", ["train", "--out", "FILE/run"], r"--out FILE/run: .*FILE is a file, not a folder"),
    ("train --out empty", ["train", "--out", ""], r"--out must not be empty"),
    ("train --out blank", ["train", "--out", "  "], r"--out must not be empty"),
    ("train --seed 1e20", ["train", "--seed", "100000000000000000000"], r"--seed must be an integer in \[0, "),
    ("train --seed -1", ["train", "--seed", "-1"], r"--seed must be an integer in \[0, "),
    ("train --seed 1e20 float", ["train", "--seed", "1e20"], r"argument --seed: invalid int value"),
    ("train --image-size 0", ["train", "--data", "DATA", "--image-size", "0"],
     r"--image-size must be an integer in \[1"),
    ("train --image-size -5", ["train", "--data", "DATA", "--image-size", "-5"], r"--image-size .* got -5"),
    ("train --image-size alone", ["train", "--image-size", "16"], r"--image-size, --channels and --no-labels go with"),
    ("sample --out under a file", ["sample", "--checkpoint", "CKPT", "--out", "FILE/x.png"], r"FILE is a file"),
    ("sample --out a folder", ["sample", "--checkpoint", "CKPT", "--out", "dir.png"],
     r"--out dir.png is an existing folder"),
    ("sample --gif under a file", ["sample", "--checkpoint", "CKPT", "--gif", "FILE/t.gif"], r"--gif FILE/t.gif"),
    ("sample --out-dir a file", ["sample", "--checkpoint", "CKPT", "--out-dir", "FILE"],
     r"--out-dir FILE is an existing"),
    ("sample --seed 1e20", ["sample", "--checkpoint", "CKPT", "--seed", "100000000000000000000"], r"--seed must be"),
    ("sample --seed -3", ["sample", "--checkpoint", "CKPT", "--seed", "-3"], r"--seed must be an integer in \[0, "),
    ("eval --n 0", ["eval", "--checkpoint", "CKPT", "--n", "0"], r"--n must be an integer >= 8, got 0"),
    ("eval --n 7", ["eval", "--checkpoint", "CKPT", "--n", "7"], r"--n must be an integer >= 8, got 7"),
    ("eval --batch-size 0", ["eval", "--checkpoint", "CKPT", "--batch-size", "0"],
     r"--batch-size must be an integer >= 1"),
    ("eval --seed -1", ["eval", "--checkpoint", "CKPT", "--seed", "-1"], r"--seed must be an integer in"),
    ("eval --json under a file", ["eval", "--checkpoint", "CKPT", "--json", "FILE/r.json"], r"--json FILE/r.json"),
    ("eval unknown flag", ["eval", "--checkpoint", "CKPT", "--bogus"], r"minidiff eval: error: unrecognized arguments"),
    ("eval no checkpoint", ["eval"], r"minidiff eval: error: the following arguments are required: --checkpoint"),
    ("eval bad choice", ["eval", "--checkpoint", "CKPT", "--sampler", "magic"], r"argument --sampler: invalid choice"),
    ("train bad int", ["train", "--steps", "ten"], r"minidiff train: error: argument --steps: invalid int value"),
]


@pytest.mark.parametrize("argv, match", [pytest.param(a, m, id=i) for i, a, m in SMALL_ROWS])
def test_small_user_errors_exit_2_with_one_line(argv, match, checkpoint_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "dir.png").mkdir()
    _image_folder(tmp_path / "data", 2)
    argv = [{"CKPT": checkpoint_file, "DATA": str(tmp_path / "data")}.get(a, a) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    code, err = run_cli(argv + (["--no-progress"] if argv[0] == "train" else []), capsys)
    assert_one_line(code, err, match)
    assert sorted(os.listdir(tmp_path)) == ["FILE", "data", "dir.png"]          # nothing written


def _limited(argv, cwd, env=None, address_space_gb=8):
    """`python -m minidiff argv` in a real process whose address space is capped: a regression that
    allocates fails with MemoryError instead of taking the machine down."""
    def cap():
        import resource
        limit = address_space_gb * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([sys.executable, "-m", "minidiff", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, **(env or {})}, timeout=300, preexec_fn=cap)


@pytest.mark.parametrize("argv, match", [
    (["sample", "--checkpoint", "CKPT", "--scale", "1000000"], r"--scale 1000000: the grid"),
    (["sample", "--checkpoint", "CKPT", "--out", "o.png", "--gif", "FILE/t.gif"], r"--gif FILE/t.gif"),
    (["train", "--config", "deep.json", "--out", "run"], r"nested too deeply|nested more than"),
    (["train", "--data", "DATA", "--image-size", "100000", "--out", "run"], r"--image-size must be"),
    (["eval", "--checkpoint", "CKPT", "--n", "0"], r"--n must be an integer >= 8"),
], ids=["sample scale", "gif under a file", "deep config", "image-size", "eval n 0"])
def test_in_a_real_process(argv, match, checkpoint_file, tmp_path):
    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "deep.json").write_text('{"train": ' + "[" * 50000 + "]" * 50000 + "}")
    _image_folder(tmp_path / "data", 2)
    argv = [{"CKPT": checkpoint_file, "DATA": str(tmp_path / "data")}.get(a, a) for a in argv]
    result = _limited(argv, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and re.search(match, lines[0]), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["FILE", "data", "deep.json"]


def test_a_bad_image_found_by_a_dataloader_worker_is_one_clean_line(tmp_path):
    """The first image is fine (the model check reads it); a later one is not a PNG, met by worker processes."""
    _image_folder(tmp_path / "data", 8, bad=(5,))
    config = _config(tmp_path, {"preset": "smoke", "train": {"num_workers": 2, "batch_size": 4, "steps": 4,
                                                             "sample_every": 0}})
    result = _limited(["train", "--config", config, "--data", str(tmp_path / "data"), "--image-size", "16",
                       "--no-labels", "--out", str(tmp_path / "run"), "--no-progress"], tmp_path, address_space_gb=16)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "img005.png" in lines[0] and len(lines[0]) < 400, lines[0]
    assert "Traceback" not in lines[0] and "DataLoader worker" not in lines[0]
