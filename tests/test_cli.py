"""The command line: --help for every command, one-line user errors with exit code 2, train -> sample."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minidiff import checkpoint as ckpt
from minidiff.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, expected", [
    ([], "{train,sample,eval,bench}"),
    (["train"], "--preset"),
    (["sample"], "--guidance"),
])
def test_help_exits_zero_and_describes_the_options(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    assert expected in capsys.readouterr().out


def _one_error_line(capsys, code, argv):
    if code is None:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        code = exit_info.value.code
    else:
        code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("argv, message", [
    (["sample", "--checkpoint", "missing.pt"], "checkpoint not found: missing.pt"),
    (["train", "--config", "nope.json"], "config file not found: nope.json"),
    (["train", "--sprites", "s.npy"], "--sprites and --labels go together"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_eval_and_bench_are_delegated_with_help_even_when_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "benchmarks.run_all", None)
    assert main(["bench", "--help"]) == 0 and "benchmarks.run_all" in capsys.readouterr().out
    assert main(["bench", "--quick"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "--checkpoint" in err[0]


def test_bad_json_corrupt_checkpoint_and_wrong_image_size(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 20)
    assert main(["sample", "--checkpoint", str(tmp_path / "junk.pt")]) == 2
    (tmp_path / "pics").mkdir()
    for k in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(tmp_path / "pics" / f"{k}.png")
    assert main(["train", "--preset", "smoke", "--data", str(tmp_path / "pics"), "--image-size", "8",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not valid JSON" in err[0] and "junk.pt" in err[1]
    assert "ContextUnet cannot take this dataset's images of shape (3, 8, 8)" in err[2]


def test_train_smoke_then_python_m_minidiff_sample_writes_png_and_gif(tmp_path, capsys):
    config = {"preset": "smoke", "train": {"steps": 4, "sample_every": 0}, "data": {"n": 32}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.json"), "--out", str(out), "--no-progress"]) == 0
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == 4
    assert main(["train", "--config", str(tmp_path / "run.json"), "--out", str(out), "--steps", "6",
                 "--resume", "--no-progress"]) == 0
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 6

    result = subprocess.run(
        [sys.executable, "-m", "minidiff", "sample", "--checkpoint", str(out / "checkpoint.pt"), "--sampler", "ddim",
         "--steps", "5", "--n", "8", "--out", str(tmp_path / "grid.png"), "--gif", str(tmp_path / "traj.gif"),
         "--context", "hero", "--guidance", "2", "--seed", "1"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "grid.png").size == ((3 * 17 + 1) * 4,) * 2
    assert Image.open(tmp_path / "traj.gif").n_frames == 6                   # x_T + one frame per step

    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--sampler", "dpmpp_2m", "--steps", "4",
                 "--spacing", "trailing", "--n", "4", "--out", str(tmp_path / "trailing.png")]) == 0
    assert Image.open(tmp_path / "trailing.png").size == ((2 * 17 + 1) * 4,) * 2
    capsys.readouterr()                                                   # drop the progress bar's lines
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--context", "wizard"]) == 2
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--context", "1,0", "--n", "2"]) == 2
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--sampler", "magic", "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "wizard" in err[0] and "5 comma-separated" in err[1] and "magic" in err[2]


def test_context_parsing_for_vector_and_class_id_models():
    import torch

    from minidiff.cli import parse_context

    class Vector(torch.nn.Module):
        n_cfeat = 5

    class Ids(torch.nn.Module):
        null_id = 10

    assert parse_context("hero", Vector(), 2).tolist() == [[1, 0, 0, 0, 0]] * 2
    assert parse_context("3", Vector(), 1).tolist() == [[0, 0, 0, 1, 0]]
    assert parse_context("0.5,0.5,0,0,0", Vector(), 1).tolist() == [[0.5, 0.5, 0, 0, 0]]
    ids = parse_context("7", Ids(), 3)
    assert ids.dtype == torch.int64 and ids.tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        parse_context("10", Ids(), 1)
