"""Pretrained folders: round trips, a readable index, EMA weights, refusals, and the CLI on a folder."""

import errno
import hashlib
import json
import os
import stat

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff import file_io, pretrained
from minidiff.cli import main


def _context_unet(seed=0, n_feat=8):
    torch.manual_seed(seed)
    return ckpt.build_model("ContextUnet", in_channels=3, n_feat=n_feat, n_cfeat=5, height=16)


def test_context_unet_and_schedule_round_trip_bit_identically(tmp_path):
    model, schedule = _context_unet(), md.NoiseSchedule.cosine(T=50)
    md.save_pretrained(model, schedule, tmp_path / "m", prediction_type="v_prediction")
    loaded, loaded_schedule = md.load_pretrained(tmp_path / "m")
    assert type(loaded).__name__ == "ContextUnet" and not loaded.training
    x, t, c = torch.randn(2, 3, 16, 16), torch.rand(2), torch.eye(5)[:2]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, c), model(x, t, c), rtol=0, atol=0)
    assert isinstance(loaded_schedule, md.NoiseSchedule) and loaded_schedule.T == 50
    for name in ("betas", "alphas_cumprod"):
        assert torch.equal(getattr(loaded_schedule, name), getattr(schedule, name))
    assert pretrained.read_index(tmp_path / "m")["prediction_type"] == "v_prediction"
    md.save_pretrained(loaded, loaded_schedule, tmp_path / "again")        # a loaded model re-saves as is
    assert pretrained.read_index(tmp_path / "again")["model"] == pretrained.read_index(tmp_path / "m")["model"]


def test_the_index_is_readable_json_and_the_weights_a_plain_state_dict(tmp_path):
    md.save_pretrained(_context_unet(), md.NoiseSchedule.linear(T=20), tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["minidiff.json", "model.safetensors"]
    text = (tmp_path / "m" / "minidiff.json").read_text()
    index = json.loads(text)
    assert index["format"] == "minidiff-pretrained" and index["format_version"] == 2
    assert index["model"] == {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 8, "n_cfeat": 5,
                                                                  "height": 16}}
    assert index["sde"] is None and index["weights"] == "model.safetensors" and index["ema_weights"] is None
    assert len(index["schedule"]["betas"]) == 20
    assert len(text.splitlines()) < 40                                      # the 20 betas sit on one line
    weights = load_file(tmp_path / "m" / "model.safetensors")             # the safetensors package reads it
    assert weights.keys() == _context_unet().state_dict().keys()
    assert index["sha256"]["model.safetensors"] == hashlib.sha256((tmp_path / "m" / "model.safetensors")
                                                                   .read_bytes()).hexdigest()


def test_score_unet_with_an_sde_kwarg_round_trips(tmp_path):
    torch.manual_seed(0)
    model = ckpt.build_model("ScoreUNet", channels=(8, 16, 32, 64), embed_dim=16, sde=md.VESDE(sigma=10.0))
    with pytest.raises(ValueError, match=r"pass sample_shape=\(channels, height, width\)"):
        md.save_pretrained(model, md.VESDE(sigma=10.0), tmp_path / "s")     # a size-agnostic net: nothing guessed
    md.save_pretrained(model, md.VESDE(sigma=10.0), tmp_path / "s", sample_shape=(1, 28, 28))
    loaded, sde = md.load_pretrained(tmp_path / "s")
    assert loaded.sample_shape == (1, 28, 28)
    assert isinstance(sde, md.VESDE) and sde.to_config() == md.VESDE(sigma=10.0).to_config()
    assert isinstance(loaded.sde, md.VESDE) and loaded.sde.to_config() == sde.to_config()
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model.eval()(x, t), rtol=0, atol=0)


def test_ema_weights_are_saved_beside_the_model_weights(tmp_path):
    model, ema = _context_unet(seed=0), _context_unet(seed=1)
    md.save_pretrained(model, md.NoiseSchedule.linear(T=10), tmp_path / "m", ema_model=ema)
    assert sorted(os.listdir(tmp_path / "m")) == ["ema.safetensors", "minidiff.json", "model.safetensors"]
    loaded, _ = md.load_pretrained(tmp_path / "m")                          # EMA weights by default
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in loaded.state_dict().items())
    plain, _ = md.load_pretrained(tmp_path / "m", ema=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain.state_dict().items())


def test_a_version_1_folder_with_model_pt_still_loads(tmp_path):
    model, schedule = _context_unet(), md.NoiseSchedule.linear(T=10)
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "minidiff.json").write_text(json.dumps({
        "format": "minidiff-pretrained", "format_version": 1, "minidiff_version": "0.1.0",
        "model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 8, "n_cfeat": 5, "height": 16}},
        "schedule": schedule.to_config(), "sde": None, "prediction_type": None, "weights": "model.pt"}))
    loaded, loaded_schedule = md.load_pretrained(folder)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(loaded_schedule.betas, schedule.betas)


def test_files_follow_the_umask_not_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        md.save_pretrained(_context_unet(), md.NoiseSchedule.linear(T=10), tmp_path / "m")
        ckpt.save_checkpoint(tmp_path / "c.pt", _context_unet())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "m").st_mode) == 0o755
    for path in [tmp_path / "c.pt", *(tmp_path / "m").iterdir()]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_a_resave_that_fails_on_a_full_disk_leaves_the_previous_save_loadable(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    first, second = _context_unet(seed=0), _context_unet(seed=1)
    md.save_pretrained(first, md.NoiseSchedule.linear(T=10), folder)
    (folder / "README.md").write_text("my notes")                          # a file of the user's own
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_write = file_io.atomic_write
    calls = []

    def full_disk_on_the_index(path, write, binary=True):                   # the weights fit, the index does not
        calls.append(os.path.basename(os.fspath(path)))
        if os.fspath(path).endswith("minidiff.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, write, binary)

    monkeypatch.setattr(file_io, "atomic_write", full_disk_on_the_index)
    with pytest.raises(OSError, match="previous save, if any, is untouched") as caught:
        md.save_pretrained(second, md.NoiseSchedule.linear(T=10), folder)
    assert caught.value.errno == errno.ENOSPC and calls == ["model.safetensors", "minidiff.json"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before     # byte for byte the first save
    assert sorted(os.listdir(tmp_path)) == ["m"]                            # no temporary folder left behind
    loaded, _ = md.load_pretrained(folder)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in loaded.state_dict().items())

    monkeypatch.setattr(file_io, "atomic_write", real_write)                 # space again: the re-save works
    md.save_pretrained(second, md.NoiseSchedule.linear(T=10), folder)
    loaded, _ = md.load_pretrained(folder)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert (folder / "README.md").read_text() == "my notes" and sorted(os.listdir(tmp_path)) == ["m"]


def test_export_checkpoint_writes_the_ema_weights(tmp_path):
    model, ema = _context_unet(seed=0), _context_unet(seed=1)
    ckpt.save_checkpoint(tmp_path / "c.pt", model, ema_model=ema, schedule=md.NoiseSchedule.linear(T=10))
    pretrained.export_checkpoint(tmp_path / "c.pt", tmp_path / "m")
    loaded, schedule = md.load_pretrained(tmp_path / "m")
    assert schedule.T == 10 and all(torch.equal(v, ema.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_unsaveable_models_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="model_kwargs"):
        md.save_pretrained(torch.nn.Conv2d(1, 1, 1), None, tmp_path / "a")
    model = _context_unet()
    with torch.no_grad():
        model.out[-1].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        md.save_pretrained(model, None, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Evil:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_refuses_missing_index_bad_json_pickled_objects_and_mismatched_weights(tmp_path):
    folder = tmp_path / "m"
    with pytest.raises(FileNotFoundError, match="not found"):
        md.load_pretrained(folder)
    md.save_pretrained(_context_unet(), md.NoiseSchedule.linear(T=10), folder)
    index_text = (folder / "minidiff.json").read_text()

    (folder / "minidiff.json").unlink()                                    # a save that did not finish
    with pytest.raises(ckpt.CheckpointError, match="no minidiff.json"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text("{broken")
    with pytest.raises(ckpt.CheckpointError, match="minidiff.json is not valid JSON"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ckpt.CheckpointError, match="not a minidiff pretrained index"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(index_text.replace('"weights": "model.safetensors"',
                                                             '"weights": "../model.safetensors"'))
    with pytest.raises(ckpt.CheckpointError, match="file name inside the folder"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(index_text.replace('"ContextUnet"', '"MyNet"'))
    with pytest.raises(ckpt.CheckpointError, match="unknown model class 'MyNet'"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(index_text)

    marker = str(tmp_path / "pwned")
    weights_path = folder / "model.safetensors"
    good = weights_path.read_bytes()
    weights_path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))            # one flipped bit
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors is corrupt: its SHA-256"):
        md.load_pretrained(folder)
    index = json.loads(index_text)
    del index["sha256"]                                                     # without a checksum to compare:
    (folder / "minidiff.json").write_text(json.dumps(index))
    weights_path.write_bytes(good[: len(good) // 2])                        # a truncated file
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors is truncated or corrupt"):
        md.load_pretrained(folder)
    save_file(_context_unet(n_feat=16).state_dict(), weights_path)          # weights of another size
    with pytest.raises(ckpt.CheckpointError, match="do not fit ContextUnet"):
        md.load_pretrained(folder)
    weights_path.unlink()
    with pytest.raises(ckpt.CheckpointError, match="weights file not found: .*model.safetensors"):
        md.load_pretrained(folder)

    index["weights"] = "model.pt"                                           # an old folder's torch file
    (folder / "minidiff.json").write_text(json.dumps(index))
    marker = str(tmp_path / "pwned")
    torch.save({"init_conv.conv1.0.weight": _Evil(marker)}, folder / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="refusing to load .*model.pt"):
        md.load_pretrained(folder)
    assert not os.path.exists(marker)                                       # the payload never ran
    (folder / "model.pt").write_bytes(b"not a zip" * 10)
    with pytest.raises(ckpt.CheckpointError, match="model.pt is truncated or corrupt"):
        md.load_pretrained(folder)


def test_cli_samples_from_a_folder_and_refuses_one_without_index(tmp_path, capsys):
    md.save_pretrained(_context_unet(), md.NoiseSchedule.linear(T=20), tmp_path / "m")
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(tmp_path / "m"), "--steps", "2", "--n", "4",
                 "--context", "hero", "--device", "cpu", "--out", str(out)]) == 0
    assert Image.open(out).size == ((2 * 17 + 1) * 4,) * 2
    capsys.readouterr()                                                     # drop the progress bar
    (tmp_path / "empty").mkdir()
    assert main(["sample", "--checkpoint", str(tmp_path / "empty"), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0] and "no minidiff.json" in err[0]
    assert main(["sample", "--checkpoint", str(tmp_path / "m"), "--n", "2", "--prompt", "red apple"]) == 2
    assert "--prompt needs a text-to-image pipeline folder" in capsys.readouterr().err
