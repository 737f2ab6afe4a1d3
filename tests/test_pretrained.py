"""Pretrained folders: round trips, a readable index, EMA weights, refusals, and the CLI on a folder."""

import json
import os

import pytest
import torch
from PIL import Image

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff import pretrained
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
    assert sorted(os.listdir(tmp_path / "m")) == ["minidiff.json", "model.pt"]
    text = (tmp_path / "m" / "minidiff.json").read_text()
    index = json.loads(text)
    assert index["format"] == "minidiff-pretrained" and index["format_version"] == 1
    assert index["model"] == {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 8, "n_cfeat": 5,
                                                                  "height": 16}}
    assert index["sde"] is None and index["weights"] == "model.pt" and len(index["schedule"]["betas"]) == 20
    assert len(text.splitlines()) < 40                                      # the 20 betas sit on one line
    weights = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(torch.is_tensor(v) for v in weights.values())


def test_score_unet_with_an_sde_kwarg_round_trips(tmp_path):
    torch.manual_seed(0)
    model = ckpt.build_model("ScoreUNet", channels=(8, 16, 32, 64), embed_dim=16, sde=md.VESDE(sigma=10.0))
    md.save_pretrained(model, md.VESDE(sigma=10.0), tmp_path / "s")
    loaded, sde = md.load_pretrained(tmp_path / "s")
    assert isinstance(sde, md.VESDE) and sde.to_config() == md.VESDE(sigma=10.0).to_config()
    assert isinstance(loaded.sde, md.VESDE) and loaded.sde.to_config() == sde.to_config()
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model.eval()(x, t), rtol=0, atol=0)


def test_ema_weights_are_saved_when_given(tmp_path):
    model, ema = _context_unet(seed=0), _context_unet(seed=1)
    md.save_pretrained(model, md.NoiseSchedule.linear(T=10), tmp_path / "m", ema_model=ema)
    loaded, _ = md.load_pretrained(tmp_path / "m")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ema.state_dict()[name])
    assert not torch.equal(loaded.init_conv.conv1[0].weight, model.init_conv.conv1[0].weight)


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
    (folder / "minidiff.json").write_text(index_text.replace('"model.pt"', '"../model.pt"'))
    with pytest.raises(ckpt.CheckpointError, match="file name inside the folder"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(index_text.replace('"ContextUnet"', '"MyNet"'))
    with pytest.raises(ckpt.CheckpointError, match="unknown model class 'MyNet'"):
        md.load_pretrained(folder)
    (folder / "minidiff.json").write_text(index_text)

    marker = str(tmp_path / "pwned")
    torch.save({"init_conv.conv1.0.weight": _Evil(marker)}, folder / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="refusing to load .*model.pt"):
        md.load_pretrained(folder)
    assert not os.path.exists(marker)                                       # the payload never ran

    torch.save(_context_unet(n_feat=16).state_dict(), folder / "model.pt")  # weights of another size
    with pytest.raises(ckpt.CheckpointError, match="do not fit ContextUnet"):
        md.load_pretrained(folder)
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
