"""The sample shape and the prediction type travel with the model: checkpoints and pretrained folders record
them, `minidiff sample` / `minidiff eval` / load_pretrained use them, and an old file gets a clear error."""

import torch
from PIL import Image
from torch.utils.data import TensorDataset

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff.cli import main
from minidiff.metrics import evaluate_checkpoint

SCHEDULE = md.NoiseSchedule.linear(T=20)
UNET = dict(in_channels=1, block_out_channels=(8, 16), block_types=("plain", "attention"), layers_per_block=1,
            norm_groups=4, attention_head_dim=None)


def _trained_checkpoint(tmp_path, size=12, prediction_type="epsilon"):
    """A UNet2D trained 2 steps on 1 x size x size images (not the 28 x 28 an old CLI guessed)."""
    torch.manual_seed(0)
    model = ckpt.build_model("UNet2D", **UNET)
    data = TensorDataset(torch.rand(8, 1, size, size) * 2 - 1)
    config = md.TrainConfig(steps=2, batch_size=4, progress=False, out_dir=str(tmp_path / "run"),
                            prediction_type=prediction_type)
    trainer = md.Trainer(model, data, config, schedule=SCHEDULE)
    trainer.fit()
    return trainer.checkpoint_path()


def _image_sizes(folder):
    return {Image.open(path).size for path in folder.glob("*.png")}


def test_a_training_checkpoint_records_the_sample_shape_and_the_cli_samples_at_it(tmp_path):
    path = _trained_checkpoint(tmp_path, size=12)
    checkpoint = ckpt.load_checkpoint(path)
    assert checkpoint["sample_shape"] == [1, 12, 12]
    assert ckpt.load_model(path).sample_shape == (1, 12, 12)
    assert main(["sample", "--checkpoint", path, "--n", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "g.png"), "--out-dir", str(tmp_path / "each")]) == 0
    assert _image_sizes(tmp_path / "each") == {(12, 12)}
    md.pretrained.export_checkpoint(path, tmp_path / "folder")
    model, _ = md.load_pretrained(tmp_path / "folder")
    assert model.sample_shape == (1, 12, 12)
    assert md.pretrained.read_index(tmp_path / "folder")["sample_shape"] == [1, 12, 12]
    assert main(["sample", "--checkpoint", str(tmp_path / "folder"), "--n", "1", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "g2.png"), "--out-dir", str(tmp_path / "each2")]) == 0
    assert _image_sizes(tmp_path / "each2") == {(12, 12)}


def test_an_old_checkpoint_without_the_shape_needs_image_size(tmp_path, capsys):
    path = _trained_checkpoint(tmp_path, size=12)
    old = ckpt.load_checkpoint(path)
    del old["sample_shape"]                                               # as written before it was recorded
    ckpt.write_checkpoint(tmp_path / "old.pt", old)
    old_path = str(tmp_path / "old.pt")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", old_path, "--n", "1", "--device", "cpu",
                 "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not record the size of its samples" in err[0] and "--image-size N" in err[0]
    assert main(["sample", "--checkpoint", old_path, "--n", "1", "--steps", "2", "--device", "cpu", "--image-size",
                 "8", "--out", str(tmp_path / "g.png"), "--out-dir", str(tmp_path / "each")]) == 0
    assert _image_sizes(tmp_path / "each") == {(8, 8)}
    try:
        evaluate_checkpoint(old_path, n=8)
    except ValueError as error:
        assert "--image-size N" in str(error)
    else:
        raise AssertionError("evaluate_checkpoint guessed the size of an old checkpoint")
    assert main(["eval", "--checkpoint", old_path, "--n", "8"]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_a_context_unet_knows_its_size_from_its_architecture(tmp_path):
    model = ckpt.build_model("ContextUnet", in_channels=3, n_feat=8, n_cfeat=5, height=16)
    md.save_pretrained(model, SCHEDULE, tmp_path / "m")
    assert md.pretrained.read_index(tmp_path / "m")["sample_shape"] == [3, 16, 16]


def test_the_recorded_prediction_type_is_used_without_a_flag(tmp_path):
    path = _trained_checkpoint(tmp_path, prediction_type="v_prediction")
    model = ckpt.load_model(path)
    assert model.prediction_type == "v_prediction"
    x_T = torch.randn(2, 1, 12, 12)
    implicit = md.sample(model, SCHEDULE, (2, 1, 12, 12), steps=3, x_T=x_T, progress=False)
    explicit = md.sample(model, SCHEDULE, (2, 1, 12, 12), steps=3, x_T=x_T, progress=False,
                         prediction_type="v_prediction")
    assert torch.equal(implicit, explicit)
    plain = ckpt.build_model("UNet2D", **UNET)
    plain.load_state_dict(model.state_dict())
    as_eps = md.sample(plain.eval(), SCHEDULE, (2, 1, 12, 12), steps=3, x_T=x_T, progress=False)
    assert not torch.allclose(as_eps, implicit)                            # the type matters here
    overridden = md.sample(model, SCHEDULE, (2, 1, 12, 12), steps=3, x_T=x_T, progress=False,
                           prediction_type="epsilon")                      # an explicit value wins
    assert torch.equal(overridden, as_eps)
    stepper = md.Stepper(SCHEDULE, steps=3, model=model)
    assert stepper.prediction_type == "v_prediction"
    x = x_T.clone()
    with torch.no_grad():
        for i in stepper.timesteps:
            x = stepper.step(model(x, stepper.model_time(i, x)), i, x)
    assert torch.equal(x, implicit)
    md.save_pretrained(model, SCHEDULE, tmp_path / "m")                    # a loaded model re-saves what it knows
    again, _ = md.load_pretrained(tmp_path / "m")
    assert again.prediction_type == "v_prediction" and again.sample_shape == (1, 12, 12)
