"""Defects found by reading the code, each reproduced first: guidance through as_score_model for class-id
models, a score model's SDE kept through every reload, `minidiff sample` options an SDE checkpoint cannot
take, `md.metrics`, the declared version floors, and md.sample's device / dtype arguments."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import minidiff as md
from minidiff.cli import main
from minidiff.nn import ScoreUNet, UNet2D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- guidance through as_score_model
def test_guidance_through_as_score_model_uses_a_class_id_models_null_id():
    torch.manual_seed(0)
    net = UNet2D(in_channels=1, block_out_channels=(8, 8), block_types=("plain", "plain"), layers_per_block=1,
                 norm_groups=4, mid_attention=False, num_class_embeds=3).eval()
    schedule = md.NoiseSchedule.linear(T=50)
    score = md.as_score_model(net, schedule)
    assert score.null_id == 3
    sde, labels = md.VPSDE.from_schedule(schedule), torch.tensor([0, 2])
    run = dict(steps=3, context=labels, progress=False, guidance_scale=2.0)
    x = md.sde_sample(score, sde, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0), **run)
    explicit = md.sde_sample(score, sde, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                             uncond_context=torch.full_like(labels, 3), **run)
    assert torch.equal(x, explicit)


# ----------------------------------------------------------------- a score model keeps its SDE
@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    """A ScoreUNet trained for 2 steps the way examples/score_sde_digits.py trains it: hand-written
    model_kwargs that leave out the SDE the network divides by."""
    out = tmp_path_factory.mktemp("score_run")
    ve = md.VESDE(sigma=25.0)
    torch.manual_seed(0)
    model = ScoreUNet(in_channels=1, channels=(8, 16, 32, 32), sde=ve)
    images = torch.rand(8, 1, 28, 28) * 2 - 1
    config = md.TrainConfig(steps=2, batch_size=4, objective="dsm", out_dir=str(out), progress=False, seed=0)
    trainer = md.Trainer(model, TensorDataset(images), config, sde=ve,
                         model_kwargs={"in_channels": 1, "channels": [8, 16, 32, 32]})
    trainer.fit()
    return trainer, ve, os.path.join(str(out), "checkpoint.pt")


def test_load_pipeline_keeps_the_sde_of_hand_written_model_kwargs(score_run):
    trainer, ve, path = score_run
    model, process = md.load_pipeline(path)
    assert isinstance(model.sde, md.VESDE) and model.sde.to_config() == ve.to_config()
    assert isinstance(process, md.VESDE)
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), trainer.ema.model.eval()(x, t), rtol=0, atol=0)


def test_trainer_resume_keeps_the_sde(score_run):
    _, _, path = score_run
    resumed = md.Trainer.resume(path, TensorDataset(torch.zeros(4, 1, 28, 28)))
    assert isinstance(resumed.model.sde, md.VESDE) and isinstance(resumed.ema.model.sde, md.VESDE)


def test_an_sde_set_after_construction_is_recorded_too(tmp_path):
    model = ScoreUNet(in_channels=1, channels=(8, 16, 32, 32))
    model.sde = md.VESDE(sigma=7.0)                                      # as the ScoreUNet docstring allows
    md.save_checkpoint(tmp_path / "c.pt", model, model_kwargs={"in_channels": 1, "channels": [8, 16, 32, 32]})
    assert md.load_model(tmp_path / "c.pt").sde.to_config() == md.VESDE(sigma=7.0).to_config()
    plain = ScoreUNet(in_channels=1, channels=(8, 16, 32, 32))           # sde=None stays None (raw output)
    md.save_checkpoint(tmp_path / "p.pt", plain, model_kwargs={"in_channels": 1, "channels": [8, 16, 32, 32]})
    assert md.load_model(tmp_path / "p.pt").sde is None


def test_minidiff_sample_keeps_the_sde(score_run, tmp_path, capsys):
    trainer, ve, path = score_run
    out = str(tmp_path / "cli.png")
    assert main(["sample", "--checkpoint", path, "--steps", "3", "--n", "2", "--nrow", "2", "--scale", "1",
                 "--seed", "0", "--device", "cpu", "--out", out]) == 0
    x = md.sde_sample(trainer.ema.model.eval(), ve, (2, 1, 28, 28), steps=3,
                      generator=torch.Generator().manual_seed(0), progress=False)
    md.imaging.save_image_grid(x, str(tmp_path / "direct.png"), nrow=2, scale=1)
    got, want = (np.asarray(Image.open(tmp_path / name)) for name in ("cli.png", "direct.png"))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("option, value", [("--eta", "0.5"), ("--spacing", "trailing"), ("--eta", "0")])
def test_minidiff_sample_refuses_schedule_options_on_an_sde_checkpoint(score_run, option, value, tmp_path, capsys):
    _, _, path = score_run
    code = main(["sample", "--checkpoint", path, "--steps", "2", "--n", "1", option, value,
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and option in err[0], err
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------- md.metrics
def test_md_metrics_is_an_attribute_of_the_package():
    code = "import minidiff as md; print(md.metrics.frechet_distance.__name__, md.metrics.main.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["frechet_distance", "main"]


def test_the_cli_has_no_not_yet_installed_branch_for_eval():
    with open(os.path.join(REPO, "minidiff", "cli.py")) as f:
        assert "not available in this installation" not in f.read()


# ----------------------------------------------------------------- declared floors
def _source(*folders):
    text = []
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            text += [open(os.path.join(root, f)).read() for f in files if f.endswith(".py")]
    return "\n".join(text)


def _floor(requirement: str):
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement.strip())
    assert match, f"no >= floor in {requirement!r}"
    return match.group(1).lower(), tuple(int(p) for p in match.group(2).split("."))


def test_setup_cfg_floors_are_what_the_code_needs():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    python = tuple(int(p) for p in setup["options"]["python_requires"].strip().lstrip(">=").split("."))
    floors = dict(_floor(r) for r in setup["options"]["install_requires"].split()
                  if r.split(">=")[0].lower() in ("torch", "pillow"))
    source = _source("minidiff")
    # (API the package calls, the first release that has it)
    needs = {"torch": [("torch.amp.GradScaler(", (2, 3)), ("torch.compiler.is_compiling(", (2, 3))],
             "pillow": [("Image.Resampling.", (9, 1))]}
    for package, apis in needs.items():
        for api, since in apis:
            if api in source:
                assert floors.get(package, (0,)) >= since, f"{api} needs {package}>={since}, setup.cfg: {floors}"
    assert python >= (3, 10)                       # the pinned torch (Makefile TORCH_SPEC) needs Python 3.10
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert 'target-version = "py310"' in f.read()


# ----------------------------------------------------------------- md.sample's device and dtype
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, context=None):
        return self.scale * x


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(dtype=torch.float16), r"dtype=torch.float16 but the model's parameters are torch.float32"),
    (dict(dtype=torch.int32), r"dtype must be a floating-point torch.dtype.*torch.int32"),
    (dict(dtype="float32"), r"dtype must be a floating-point torch.dtype"),
    (dict(device="meta"), r"device='meta'"),
    (dict(device="gpu"), r"device must name a torch device.*'gpu'"),
])
def test_sample_refuses_a_device_or_dtype_the_model_cannot_compute_in(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        md.sample(Net(), md.NoiseSchedule.linear(T=10), (2, 1, 4, 4), steps=2, progress=False, **kwargs)


def test_sample_refuses_a_model_on_the_meta_device():
    with pytest.raises(ValueError, match="meta"):
        md.sample(Net().to("meta"), md.NoiseSchedule.linear(T=10), (2, 1, 4, 4), steps=2, progress=False)


def test_sample_still_takes_the_models_own_dtype_and_any_dtype_for_a_model_without_parameters():
    schedule = md.NoiseSchedule.linear(T=10)
    x = md.sample(Net().double(), schedule, (2, 1, 4, 4), steps=2, dtype=torch.float64, device="cpu", progress=False)
    assert x.dtype == torch.float64
    x = md.sample(lambda x, t, c=None: 0 * x, schedule, (2, 1, 4, 4), steps=2, dtype=torch.float64, progress=False)
    assert x.dtype == torch.float64
