"""Your own images end to end: labelled folders, pixels read right, reproducible flips, per-image outputs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff import checkpoint as ckpt
from minidiff.cli import main
from minidiff.data import ImageFolder
from minidiff.nn import ContextUnet
from minidiff.schedule import NoiseSchedule
from minidiff.train import TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (255, 0, 0)}


def _png(path, array, **save_options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_options)


def labelled_folder(root, per_class=6, size=16):
    """root/<colour>/<k>.png: a coloured square on gray, an off-centre notch so flips show."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for k in range(per_class):
            image = np.full((size, size, 3), 128, np.uint8)
            lo = int(rng.integers(2, 5))
            image[lo:size - lo, lo:size - lo] = colour
            image[lo:lo + 3, lo:lo + 2] = 255                               # the notch: left-right asymmetric
            _png(root / name / f"{k}.png", image)
    return root


# ----------------------------------------------------------------------------------------- layouts
def test_labelled_folder_follows_torchvision_and_a_flat_one_stays_unconditional(tmp_path):
    root = labelled_folder(tmp_path / "data", per_class=2)
    _png(root / "red" / "deeper" / "x.png", np.zeros((4, 4, 3), np.uint8))     # any depth below a class folder
    (root / ".cache").mkdir()                                                   # hidden: not a class
    (root / "notes.txt").write_text("not an image")
    d = ImageFolder(root, size=8, random_flip=False)
    assert d.classes == ["blue", "green", "red"] and d.class_to_idx == {"blue": 0, "green": 1, "red": 2}
    assert d.targets == [0, 0, 1, 1, 2, 2, 2] and len(d) == 7
    image, label = d[3]
    assert image.shape == (3, 8, 8) and label == 1 and isinstance(label, int)
    images, labels = d.tensors()
    assert images.shape == (7, 3, 8, 8) and labels.tolist() == d.targets

    gray = ImageFolder(root, size=8, channels=1, random_flip=False)
    assert gray[0][0].shape == (1, 8, 8)
    flat = ImageFolder(root, size=8, labelled=False)
    assert flat.classes is None and len(flat) == 7 and torch.is_tensor(flat[0])
    _png(root / "top.png", np.zeros((4, 4, 3), np.uint8))                       # images of its own: flat
    assert ImageFolder(root, size=8).classes is None
    with pytest.raises(FileNotFoundError, match="class subfolders"):
        ImageFolder(root, size=8, labelled=True)
    os.remove(root / "top.png")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\['empty'\]"):
        ImageFolder(root, size=8)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(root, size=8, channels=4)


# ----------------------------------------------------------------------------------------- pixels
def test_sixteen_bit_png_float_tiff_and_exif_orientation_read_right(tmp_path):
    _png(tmp_path / "gray16.png", np.full((6, 6), 32768, np.uint16))
    Image.fromarray(np.full((6, 6), 0.5, np.float32), mode="F").save(tmp_path / "half.tif")
    corner = np.zeros((6, 6, 3), np.uint8)
    corner[0, 0] = 255                                                      # white at the top left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                                        # "rotate 90 degrees clockwise to view"
    _png(tmp_path / "rotated.png", corner, exif=exif)
    d = ImageFolder(tmp_path, size=6, random_flip=False)
    names = [os.path.basename(p) for p in d.paths]
    assert names == ["gray16.png", "half.tif", "rotated.png"]
    for k in (0, 1):                                                        # mid-gray at 16 bits and as float
        assert d[k].shape == (3, 6, 6) and d[k].abs().max() < 1e-3, names[k]
    assert torch.equal(ImageFolder(tmp_path, size=6, channels=1, random_flip=False)[1], torch.zeros(1, 6, 6))
    viewed = d[2]
    assert viewed[:, 0, -1].tolist() == [1.0, 1.0, 1.0]                     # the corner now at the top right
    assert viewed[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]


@pytest.mark.timeout(60)
def test_fifos_and_other_non_regular_files_are_skipped_not_opened(tmp_path):
    root = labelled_folder(tmp_path / "data", per_class=1)
    os.mkfifo(root / "red" / "x.png")                                       # opening it would block forever
    os.symlink(root / "nowhere.png", root / "blue" / "broken.png")
    d = ImageFolder(root, size=8, random_flip=False)
    assert len(d) == 3 and not any(p.endswith(("x.png", "broken.png")) for p in d.paths)
    assert [d[k][1] for k in range(3)] == [0, 1, 2]


# ----------------------------------------------------------------------------------------- flips
def _trainer(root, out_dir=None, steps=4, **changes):
    dataset = ImageFolder(root, size=16, random_flip=True)
    torch.manual_seed(0)
    model = ContextUnet(in_channels=3, n_feat=8, n_cfeat=3, height=16)
    config = TrainConfig(steps=steps, batch_size=6, lr=1e-3, log_every=1, progress=False, out_dir=out_dir,
                         device="cpu", **changes)
    return Trainer(model, dataset, config, schedule=NoiseSchedule.linear(20),
                   model_kwargs={"in_channels": 3, "n_feat": 8, "n_cfeat": 3, "height": 16})


def test_flips_depend_on_seed_epoch_and_index_alone(tmp_path):
    root = labelled_folder(tmp_path / "data", per_class=4)
    d = ImageFolder(root, size=16)
    d.seed_augmentation(seed=0, epoch=0)
    unflipped = ImageFolder(root, size=16, random_flip=False)
    flips = [bool(torch.equal(d[k][0], unflipped[k][0].flip(-1))) for k in range(len(d))]
    assert 0 < sum(flips) < len(flips)
    torch.manual_seed(1)                                                    # the global RNG plays no part
    assert flips == [bool(torch.equal(d[k][0], unflipped[k][0].flip(-1))) for k in reversed(range(len(d)))][::-1]
    d.seed_augmentation(seed=0, epoch=1)
    assert flips != [bool(torch.equal(d[k][0], unflipped[k][0].flip(-1))) for k in range(len(d))]


def test_resume_with_flips_is_bit_exact(tmp_path):
    root = labelled_folder(tmp_path / "data")                              # 18 images: 3 steps of 6 per epoch
    full = _trainer(root, steps=8).fit()
    first = _trainer(root, out_dir=str(tmp_path / "run"), steps=8)
    first.train(4)                                                          # stopped mid-epoch 2
    torch.manual_seed(123)                                                  # a different process state
    resumed = Trainer.resume(tmp_path / "run" / "checkpoint.pt", ImageFolder(root, size=16))
    resumed.fit()
    assert resumed.step == 8
    assert list(full.model.state_dict()) == list(resumed.model.state_dict())
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_same_weights_with_flips_in_two_processes(tmp_path):
    root = labelled_folder(tmp_path / "data")
    weights = []
    for name in ("a", "b"):
        command = [sys.executable, "-m", "minidiff", "train", "--data", str(root), "--steps", "3",
                   "--batch-size", "6", "--seed", "7", "--device", "cpu", "--out", str(tmp_path / name),
                   "--no-progress"]
        result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        weights.append(ckpt.load_checkpoint(tmp_path / name / "checkpoint.pt")["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


# ----------------------------------------------------------------------------------------- logging
def test_on_log_tensorboard_with_a_fake_writer_and_keep_last(tmp_path, monkeypatch):
    import minidiff.train_log as train_log

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir, self.scalars, self.images = log_dir, [], []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def add_image(self, tag, image, step, dataformats):
            self.images.append((tag, image.shape, step, dataformats))

        def flush(self):
            pass

    monkeypatch.setattr(train_log, "summary_writer", FakeWriter)
    root = labelled_folder(tmp_path / "data")
    seen = []
    trainer = _trainer(root, out_dir=str(tmp_path / "run"), steps=5, checkpoint_every=1, keep_last=2,
                       tensorboard=True, sample_every=5, sample_steps=2, samples_per_class=2)
    trainer.on_log = lambda step, metrics: seen.append((step, metrics))
    trainer.fit()
    assert [step for step, _ in seen] == [1, 2, 3, 4, 5]
    assert set(seen[0][1]) == {"loss", "lr", "images_per_s", "epoch"} and seen[0][1]["lr"] == pytest.approx(1e-3)
    writer = trainer.tensorboard.writer
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard")
    assert ("train/loss", seen[-1][1]["loss"], 5) in writer.scalars
    assert [tag for tag, *_ in writer.images] == ["samples"] and writer.images[0][3] == "HWC"
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["step_000004.pt", "step_000005.pt"]
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000004.pt")["step"] == 4


def test_tensorboard_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"minidiff\[tensorboard\]"):
        _trainer(labelled_folder(tmp_path / "data", per_class=2), out_dir=str(tmp_path / "run"), tensorboard=True)


# ----------------------------------------------------------------------------------------- end to end
def test_labelled_folder_trains_conditionally_samples_per_class_and_evaluates_against_itself(tmp_path, capsys):
    root = labelled_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--steps", "4", "--batch-size", "6", "--out", str(run),
                 "--device", "cpu", "--no-progress"]) == 0
    saved = ckpt.load_checkpoint(run / "checkpoint.pt")
    assert saved["class_names"] == ["blue", "green", "red"] and saved["model"]["kwargs"]["n_cfeat"] == 3
    assert saved["train_config"]["context_dropout"] > 0                     # trained for guidance
    assert saved["data"]["source"] == {"class": "ImageFolder", "root": str(root), "size": 18}
    assert json.loads((run / "config.json").read_text())["model"]["kwargs"]["n_cfeat"] == 3

    for name in ("green", "red"):
        out = tmp_path / "samples" / name
        assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--context", name, "--guidance", "2",
                     "--n", "3", "--steps", "3", "--seed", "5", "--out-dir", str(out), "--device", "cpu"]) == 0
        assert sorted(os.listdir(out)) == ["grid.png", "index.csv", "seed5_0000.png", "seed5_0001.png",
                                           "seed5_0002.png"]
        assert Image.open(out / "seed5_0001.png").size == (16, 16)
        rows = list(csv.DictReader(open(out / "index.csv")))
        assert [r["file"] for r in rows] == ["seed5_0000.png", "seed5_0001.png", "seed5_0002.png"]
        assert {r["context"] for r in rows} == {name} and {r["seed"] for r in rows} == {"5"}
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--context", "hero", "--n", "1"]) == 2
    assert "['blue', 'green', 'red']" in capsys.readouterr().err
    from minidiff.pretrained import export_checkpoint, read_index
    export_checkpoint(run / "checkpoint.pt", tmp_path / "shared")                 # class names travel along
    assert read_index(tmp_path / "shared")["class_names"] == ["blue", "green", "red"]
    assert main(["sample", "--checkpoint", str(tmp_path / "shared"), "--context", "blue", "--n", "2", "--steps", "2",
                 "--out-dir", str(tmp_path / "shared_samples"), "--device", "cpu"]) == 0
    assert (tmp_path / "shared_samples" / "seed0_0001.png").is_file()

    other = labelled_folder(tmp_path / "other", per_class=1)
    os.rename(other / "red", other / "pink")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--reference", str(other), "--n", "8"]) == 2
    assert "['blue', 'green', 'pink']" in capsys.readouterr().err                # not the data it was trained on

    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--reference", str(root), "--n", "12",
                 "--steps", "3", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                 "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["dataset"] == f"folder {root}" and report["n"] == 12
    for key in ("fd", "precision", "recall", "class_accuracy"):
        assert report[key] is not None and np.isfinite(report[key]), key
    assert "class accuracy" in capsys.readouterr().out


def test_eval_refuses_to_score_a_folder_model_against_sprites(tmp_path, capsys):
    root = labelled_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--steps", "1", "--batch-size", "6", "--out", str(run),
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--n", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImageFolder" in err[0] and "--reference" in err[0], err

    flat = tmp_path / "flat"                                                   # --no-labels: unconditional
    assert main(["train", "--data", str(root), "--no-labels", "--steps", "1", "--batch-size", "6", "--out", str(flat),
                 "--device", "cpu", "--no-progress"]) == 0
    saved = ckpt.load_checkpoint(flat / "checkpoint.pt")
    assert saved["class_names"] is None and saved["model"]["kwargs"]["n_cfeat"] == 5     # the preset's, unused


def test_eval_reads_what_a_checkpoint_was_trained_on(capsys):
    from minidiff.metrics.evaluation import _trained_on

    model = ContextUnet(in_channels=3, n_feat=8, n_cfeat=5, height=16)
    assert _trained_on({"data": {"source": {"class": "ProceduralSprites"}}}, model, "a.pt") == "sprites"
    assert _trained_on({"data": {"source": {"class": "DigitArrays"}}}, model, "a.pt") == "digits"
    with pytest.raises(ValueError, match=r"trained on MyData; .*--reference DIR"):
        _trained_on({"data": {"source": {"class": "MyData"}}}, model, "a.pt")
    assert _trained_on({"data": {}}, model, "old.pt") == "sprites"              # older files: said, not silent
    assert "old.pt does not record its training data" in capsys.readouterr().err
