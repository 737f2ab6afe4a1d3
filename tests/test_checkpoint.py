"""Checkpoints: round trip, refusal of pickled code, atomic writes, corrupt files, RNG state, SDE kwargs."""

import errno
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from minidiff import checkpoint as ckpt
from minidiff import model_table, rng_state
from minidiff.schedule import NoiseSchedule


class TinyNet(nn.Module):
    def __init__(self, channels=3, width=8):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t, context=None):
        return self.out(torch.relu(self.inp(x))) * t.reshape(-1, 1, 1, 1)


CLASSES = {"TinyNet": TinyNet}


def _save(path, width=8, seed=0, step=5):
    torch.manual_seed(seed)
    model, ema = TinyNet(width=width), TinyNet(width=width)
    return model, ema, ckpt.save_checkpoint(path, model, model_kwargs={"width": width}, ema_model=ema, step=step,
                                            schedule=NoiseSchedule.linear(T=20))


def test_round_trip_rebuilds_the_model_with_ema_weights_by_default(tmp_path):
    path = tmp_path / "run" / "model.pt"
    model, ema, _ = _save(path)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    loaded = ckpt.load_model(path, model_classes=CLASSES)
    assert not loaded.training and loaded.inp.out_channels == 8
    torch.testing.assert_close(loaded(x, t), ema(x, t), rtol=0, atol=0)
    raw = ckpt.load_model(path, ema=False, model_classes=CLASSES)
    torch.testing.assert_close(raw(x, t), model(x, t), rtol=0, atol=0)
    loaded, schedule = ckpt.load_pipeline(path, model_classes=CLASSES)
    assert isinstance(schedule, NoiseSchedule) and schedule.T == 20
    checkpoint = ckpt.load_checkpoint(path)
    assert checkpoint["model"] == {"class": "TinyNet", "kwargs": {"width": 8}} and checkpoint["step"] == 5
    assert checkpoint["minidiff_version"]


def test_the_file_loads_with_plain_torch_load_weights_only(tmp_path):
    _save(tmp_path / "c.pt")
    assert isinstance(torch.load(tmp_path / "c.pt", weights_only=True), dict)


def test_unknown_class_and_missing_kwargs_are_clear_errors(tmp_path):
    _save(tmp_path / "c.pt")
    with pytest.raises(ckpt.CheckpointError, match="unknown model class 'TinyNet'"):
        ckpt.load_model(tmp_path / "c.pt")
    ckpt.save_checkpoint(tmp_path / "d.pt", TinyNet())                       # kwargs not recorded
    with pytest.raises(ckpt.CheckpointError, match="does not record how to build"):
        ckpt.load_model(tmp_path / "d.pt", model_classes=CLASSES)


class _Evil:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_file_that_needs_unpickling_is_refused_and_its_code_never_runs(tmp_path):
    marker = str(tmp_path / "pwned")
    evil = {"minidiff_version": "0.1.0", "model": {"class": "TinyNet", "kwargs": {}}, "payload": _Evil(marker)}
    torch.save(evil, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)                   # the payload is real ...
    assert os.path.isdir(marker)
    os.rmdir(marker)
    with pytest.raises(ckpt.CheckpointError, match="refusing to load .*evil.pt"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_model(tmp_path / "evil.pt", model_classes=CLASSES)
    assert not os.path.exists(marker)                                        # ... and never ran


def test_missing_truncated_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    _save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="cut.pt"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ckpt.CheckpointError, match="junk.pt"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    flipped = bytearray(data)
    middle = len(flipped) // 2
    flipped[middle:middle + 64] = bytes(64)
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointError, match="flipped.pt"):
        ckpt.load_checkpoint(tmp_path / "flipped.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a minidiff checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")


def test_a_crash_or_full_disk_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    _save(path, step=1)
    real_save = torch.save

    def half_then_disk_full(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)                                            # a partial file on disk ...
        raise OSError(errno.ENOSPC, "No space left on device")               # ... then the disk is full

    monkeypatch.setattr(ckpt.torch, "save", half_then_disk_full)
    with pytest.raises(OSError, match="no space left on .*checkpoint.*previous file"):
        _save(path, step=2)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1                           # the old one, intact
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]                 # no temporary left behind

    def crash(obj, f):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt                                              # e.g. the process is killed

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, step=3)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_non_finite_weights_are_refused_before_writing(tmp_path):
    model = TinyNet()
    with torch.no_grad():
        model.out.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 7.*out.bias"):
        ckpt.save_checkpoint(tmp_path / "c.pt", model, model_kwargs={}, step=7)
    assert not (tmp_path / "c.pt").exists()


def test_rng_state_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state.get_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    rng_state.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_sde_constructor_kwargs_are_stored_as_config_and_rebuilt(tmp_path):
    from minidiff.sde import VESDE, VPSDE
    model = ckpt.build_model("ScoreUNet", sde=VESDE(sigma=10.0))
    assert model.minidiff_spec["kwargs"]["sde"] == {model_table.SDE_KEY: VESDE(sigma=10.0).to_config()}
    ckpt.save_checkpoint(tmp_path / "s.pt", model, sde=VPSDE())
    loaded, process = ckpt.load_pipeline(tmp_path / "s.pt")
    assert isinstance(loaded.sde, VESDE) and isinstance(process, VPSDE)
    assert loaded.sde.to_config() == VESDE(sigma=10.0).to_config()


def test_every_network_in_the_table_round_trips_with_default_kwargs(tmp_path):
    for name in ("ContextUnet", "BasicUNet", "UNet2D"):
        model = ckpt.build_model(name)
        ckpt.save_checkpoint(tmp_path / f"{name}.pt", model)
        loaded = ckpt.load_model(tmp_path / f"{name}.pt")
        assert type(loaded).__name__ == name
        assert list(model.state_dict()) == list(loaded.state_dict())
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
            assert torch.equal(a, b)
