"""Reliability: untrusted files, numerics under faults, and reproducibility across processes.

  * Untrusted files: a checkpoint (or .npy) crafted to create a file when unpickled is refused by every
    entry point that reads one (the library calls, the Trainer, the command line), and the file never
    appears. Seeded random truncations and byte flips of a real checkpoint either raise CheckpointError
    naming the path or load exactly the original tensors; truncated .npy files raise ValueError naming
    the file.
  * Numerics: inf gradients behind a finite loss, or an inf loss, stop training with FloatingPointError
    naming the step, before the update, and the last checkpoint stays finite; bf16 and fp16 sampling on
    the CPU (every discrete sampler, the SDE samplers) stays finite.
  * Reproducibility: the same seed gives bit-identical samples and trained weights, in this process and
    in fresh processes; different seeds differ.
(Bit-exact resume, atomic writes with a simulated crash and NaN losses are in test_train.py and
test_checkpoint.py; real SIGKILLs in test_crash_resume.py; bad arguments in test_bad_input.py.)
"""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff.cli import main as cli_main
from minidiff.data import SpritesDataset, load_sprites
from minidiff.exact import ExactScore, GaussianMixture
from minidiff.nn import ContextUnet, ScoreUNet
from minidiff.train import TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCHEDULE = md.NoiseSchedule.linear(T=50)


class TinyNet(nn.Module):
    """model(x, t, context): two convolutions; `bomb` makes the backward pass inf, `poison` the output inf."""

    def __init__(self, width=8):
        super().__init__()
        self.inp = nn.Conv2d(4, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        self.bomb = self.poison = False

    def forward(self, x, t, context=None):
        time = t.reshape(-1, 1, 1, 1).to(x.dtype).expand(-1, 1, *x.shape[2:])
        h = torch.relu(self.inp(torch.cat([x, time], 1)))
        if self.bomb:
            h = _InfGradient.apply(h)
        out = self.out(h)
        return out * float("inf") if self.poison else out


class _InfGradient(torch.autograd.Function):
    """Identity forward, inf backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return self.x[k]


def tiny_trainer(out_dir=None, **changes):
    torch.manual_seed(0)
    config = TrainConfig(**{"steps": 10, "batch_size": 8, "progress": False, "out_dir": out_dir, "device": "cpu",
                            "log_every": 1, **changes})
    return Trainer(TinyNet(), TinyData(), config, schedule=SCHEDULE, model_kwargs={"width": 8})


# ====================================================================================== untrusted files
class _Payload:
    """Unpickling this CREATES A FILE: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path, marker):
    """A real minidiff checkpoint (it would load and train) with the payload hidden in its data entry."""
    trainer = tiny_trainer()
    checkpoint = trainer.state_dict()
    checkpoint["data"]["note"] = _Payload(marker)
    torch.save(checkpoint, path)


def _cli(argv, capsys):
    code = cli_main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


ENTRY_POINTS = {
    "load_checkpoint": lambda path, tmp, capsys: ckpt.load_checkpoint(path),
    "md.load_model": lambda path, tmp, capsys: md.load_model(path, model_classes={"TinyNet": TinyNet}),
    "md.load_pipeline": lambda path, tmp, capsys: md.load_pipeline(path, model_classes={"TinyNet": TinyNet}),
    "Trainer.resume": lambda path, tmp, capsys: Trainer.resume(path, TinyData(), model_classes={"TinyNet": TinyNet}),
    "Trainer.fit(resume=True)": lambda path, tmp, capsys: tiny_trainer(out_dir=str(tmp)).fit(resume=True),
    "cli sample": lambda path, tmp, capsys: _cli(["sample", "--checkpoint", str(path), "--n", "1"], capsys),
    "cli train --resume": lambda path, tmp, capsys: _cli(["train", "--preset", "smoke", "--out", str(tmp),
                                                          "--resume", "--no-progress"], capsys),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_without_running_it(entry, tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "checkpoint.pt"
    _evil_checkpoint(path, str(marker))
    torch.load(path, weights_only=False)                                    # the payload is real ...
    assert marker.exists()
    marker.unlink()

    if entry.startswith("cli"):
        code, err = ENTRY_POINTS[entry](path, tmp_path, capsys)
        assert code == 2 and len(err) == 1 and "refusing to load" in err[0] and "checkpoint.pt" in err[0], err
    else:
        with pytest.raises(ckpt.CheckpointError, match=r"refusing to load .*checkpoint.pt: it holds pickled"):
            ENTRY_POINTS[entry](path, tmp_path, capsys)
    assert not marker.exists()                                              # ... and it never ran


@pytest.mark.parametrize("which", ["sprites", "labels"])
def test_an_npy_that_runs_code_when_unpickled_is_refused_without_running_it(which, tmp_path):
    marker = tmp_path / "pwned.txt"
    sprites, labels = tmp_path / "sprites_1788_16x16.npy", tmp_path / "sprite_labels_nc_1788_16x16.npy"
    np.save(sprites, np.zeros((4, 16, 16, 3), np.uint8))
    np.save(labels, np.eye(5)[np.arange(4) % 5])
    evil = np.array([_Payload(str(marker))] * 4, dtype=object)
    np.save(sprites if which == "sprites" else labels, evil, allow_pickle=True)
    np.load(sprites if which == "sprites" else labels, allow_pickle=True)   # the payload is real ...
    assert marker.exists()
    marker.unlink()
    for load in (lambda: SpritesDataset(sprites, labels), lambda: load_sprites(tmp_path)):
        with pytest.raises(ValueError, match=f"could not read {which} file .*{which[:6]}"):
            load()
    assert not marker.exists()                                              # ... and it never ran


def test_truncated_and_byte_flipped_checkpoints_raise_or_load_exactly(tmp_path):
    """60 seeded damages of a real checkpoint: each one raises CheckpointError naming the file, or (a flip in
    bytes nothing reads) loads tensors equal to the original. Never another exception, never wrong numbers."""
    trainer = tiny_trainer(steps=2).fit()
    good = tmp_path / "good.pt"
    trainer.save(str(good))
    data, original = good.read_bytes(), ckpt.load_checkpoint(good)
    rng = random.Random(11)
    damaged = tmp_path / "damaged.pt"
    outcomes = {"refused": 0, "identical": 0}
    for trial in range(60):
        if trial < 30:
            blob = data[: rng.randrange(0, len(data))]                       # truncated
        else:
            blob = bytearray(data)
            for _ in range(rng.choice([1, 8])):
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)       # flipped bits
            blob = bytes(blob)
        damaged.write_bytes(blob)
        try:
            loaded = ckpt.load_checkpoint(damaged)
        except ckpt.CheckpointError as error:
            assert "damaged.pt" in str(error)
            outcomes["refused"] += 1
            continue
        for key in ("state_dict", "ema_state_dict"):
            for name, tensor in original[key].items():
                assert torch.equal(loaded[key][name], tensor), (trial, key, name)
        outcomes["identical"] += 1
    assert outcomes["refused"] >= 30                                         # every truncation at least


def test_damaged_zip_directory_bytes_raise_or_load_exactly(tmp_path):
    """Every byte of the zip's central directory, one flipped bit each, plus two cases that once escaped:
    an entry whose compression method reads 256 (NotImplementedError) and an entry marked as a folder (which
    torch.load reads as uninitialised memory). Each raises CheckpointError or loads the original tensors."""
    trainer = tiny_trainer(steps=2).fit()
    good = tmp_path / "good.pt"
    trainer.save(str(good))
    data, original = good.read_bytes(), ckpt.load_checkpoint(good)
    end_record = data.rfind(b"PK\x05\x06")                                  # end-of-central-directory record
    directory_start = int.from_bytes(data[end_record + 16: end_record + 20], "little")
    damaged = tmp_path / "damaged.pt"

    def refused_or_identical(blob):
        damaged.write_bytes(blob)
        try:
            loaded = ckpt.load_checkpoint(damaged)
        except ckpt.CheckpointError as error:
            assert "damaged.pt" in str(error)
            return "refused"
        for name, tensor in original["state_dict"].items():
            assert torch.equal(loaded["state_dict"][name], tensor), name
        return "identical"

    blob = bytearray(data)                                                    # compression method -> 256
    blob[directory_start + 10: directory_start + 12] = (256).to_bytes(2, "little")
    assert refused_or_identical(bytes(blob)) == "refused"
    blob = bytearray(data)                                                    # MS-DOS folder attribute
    blob[directory_start + 38] |= 0x10
    assert refused_or_identical(bytes(blob)) == "refused"
    rng = random.Random(3)
    outcomes = [refused_or_identical(data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:])
                for at in range(directory_start, len(data))]
    assert outcomes.count("refused") > 0


def test_truncated_npy_files_raise_naming_the_file(tmp_path):
    sprites, labels = tmp_path / "s.npy", tmp_path / "l.npy"
    np.save(sprites, np.zeros((6, 16, 16, 3), np.uint8))
    np.save(labels, np.eye(5)[np.arange(6) % 5])
    data = sprites.read_bytes()
    rng = random.Random(5)
    for cut in [0, 5, 60, 127] + [rng.randrange(128, len(data)) for _ in range(12)]:
        sprites.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"could not read sprites file .*s.npy"):
            SpritesDataset(sprites, labels)


# ====================================================================================== numerics
@pytest.mark.parametrize("fault, grad_clip, match", [
    ("bomb", 1.0, r"the gradient norm is (nan|inf) at step 4; stopping before the update"),
    ("bomb", None, r"the gradient norm is (nan|inf) at step 4; stopping before the update"),
    ("poison", 1.0, r"the loss is inf at step 4; stopping before the update"),
], ids=["inf gradients, clipped", "inf gradients, no clipping", "inf loss"])
def test_non_finite_gradients_or_loss_stop_training_and_never_reach_a_checkpoint(fault, grad_clip, match, tmp_path):
    trainer = tiny_trainer(out_dir=str(tmp_path), grad_clip=grad_clip, checkpoint_every=1)
    trainer.train(3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    setattr(trainer.model, fault, True)
    with pytest.raises(FloatingPointError, match=match):
        trainer.train(3)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name                         # the update was not applied
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert all(torch.isfinite(v).all() for v in saved["ema_state_dict"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")
def test_fp16_grad_scaler_skips_a_step_with_inf_gradients_and_goes_on(tmp_path):
    trainer = tiny_trainer(out_dir=str(tmp_path), mixed_precision="fp16", device="cuda", checkpoint_every=1)
    trainer.train(2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.bomb = True
    trainer.train(1)                                                        # skipped by the scaler, no error
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    trainer.model.bomb = False
    trainer.train(1)
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 4 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


@pytest.fixture(scope="module")
def course_schedule():
    return md.NoiseSchedule.linear(T=1000)              # alpha_bar down to 4e-5: x0 = x / sqrt(alpha_bar) is ~160 x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("sampler, spacing", [("ddpm", "leading"), ("ddim", "trailing"), ("dpmpp_2m", "karras"),
                                              ("euler", "karras"), ("heun", "linspace")])
def test_low_precision_sampling_stays_finite(sampler, spacing, dtype, course_schedule):
    torch.manual_seed(0)
    model = ContextUnet(n_feat=16).to(dtype)
    context = torch.eye(5)[:2].to(dtype)
    x = md.sample(model, course_schedule, (2, 3, 16, 16), sampler=sampler, steps=4, spacing=spacing,
                  context=context, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), progress=False,
                  **({"eta": 1.0} if sampler == "ddim" else {}))
    assert x.dtype == dtype and torch.isfinite(x).all()


@pytest.mark.parametrize("method", ["euler_maruyama", "pc", "ode"])
def test_low_precision_sde_sampling_stays_finite(method):
    torch.manual_seed(0)
    sde = md.VESDE(sigma=25.0)
    model = ScoreUNet(channels=(8, 16, 32, 32), embed_dim=16, sde=sde).to(torch.bfloat16)
    x_T = sde.prior_sample((2, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    x = md.sde_sample(model, sde, (2, 1, 28, 28), method=method, steps=4, ode_solver="heun", x_T=x_T,
                      generator=torch.Generator().manual_seed(0), progress=False)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x).all()


# ====================================================================================== reproducibility
@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("dpmpp_2m", {}),
                                              ("euler", {}), ("heun", {})])
def test_same_seed_same_samples_other_seed_other_samples(sampler, options):
    torch.manual_seed(0)
    model = ContextUnet(n_feat=8)

    def draw(seed):
        return md.sample(model, SCHEDULE, (2, 3, 16, 16), sampler=sampler, steps=3, progress=False,
                         generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


@pytest.mark.parametrize("method", ["euler_maruyama", "pc", "ode"])
def test_same_seed_same_sde_samples(method):
    sde = md.VPSDE()

    score = ExactScore(GaussianMixture([0.0], [1.0]), sde)                  # exact score of N(0, I) data: -x

    def draw(seed):
        return md.sde_sample(score, sde, (3, 2), method=method, steps=25, ode_solver="heun", progress=False,
                             generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    if method != "ode":                                                     # the ODE uses noise only for x_T
        assert not torch.equal(draw(0), draw(1))


FRESH_PROCESS = r"""
import hashlib, torch
import minidiff as md
from minidiff.nn import ContextUnet
from minidiff.data import ProceduralSprites
from minidiff.train import TrainConfig, Trainer

digest = lambda t: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
schedule = md.NoiseSchedule.linear(T=50)
for seed in (0, 1):
    torch.manual_seed(seed)
    model = ContextUnet(n_feat=8)
    x = md.sample(model, schedule, (2, 3, 16, 16), sampler="ddpm", steps=4, progress=False,
                  generator=torch.Generator().manual_seed(seed))
    z = md.sde_sample(lambda x, t, c=None: -x, md.VPSDE(), (2, 3), steps=4, progress=False,
                      generator=torch.Generator().manual_seed(seed))
    config = TrainConfig(steps=3, batch_size=8, seed=seed, device="cpu", progress=False)
    trainer = Trainer(model, ProceduralSprites(16, seed=0), config, schedule=schedule).fit()
    weights = torch.cat([p.flatten() for p in trainer.model.parameters()])
    print(seed, digest(x), digest(z), digest(weights))
"""


def test_same_seed_bit_identical_in_fresh_processes():
    """sample, sde_sample and Trainer.fit with seeds 0 and 1, in two fresh interpreters."""
    runs = [subprocess.Popen([sys.executable, "-c", FRESH_PROCESS], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]
        outputs.append([line.split() for line in out.strip().splitlines()])
    assert len(outputs[0]) == 2 and all(len(line) == 4 for line in outputs[0])
    assert outputs[0] == outputs[1]                                         # same seed: bit for bit
    seed0, seed1 = outputs[0]
    assert all(a != b for a, b in zip(seed0[1:], seed1[1:]))                # other seed: each one differs
