"""The flagship example runs end to end on its smoke preset and writes every file it promises."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import sprites_ddpm  # noqa: E402

PROMISED = ["checkpoint.pt", "loss.csv", "loss.png", "ddpm_vs_no_noise.png", "ddpm_trajectory.gif",
            "ddpm_per_class.png", "ddim-25_per_class.png", "dpmpp_2m-20_per_class.png", "mixed_contexts.png",
            "guidance_scales.png", "timings.md"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sprites_ddpm")
    sprites_ddpm.main(["--preset", "smoke", "--out", str(out), "--device", "cpu"])
    return out


def test_smoke_writes_every_promised_file(smoke_run):
    missing = [name for name in PROMISED if not (smoke_run / name).is_file()]
    assert not missing, f"missing outputs: {missing}"


@pytest.mark.parametrize("name", [n for n in PROMISED if n.endswith((".png", ".gif"))])
def test_pictures_are_finite_and_not_constant(smoke_run, name):
    image = np.asarray(Image.open(smoke_run / name).convert("RGB"), dtype=np.float64)
    assert image.ndim == 3 and image.shape[0] >= 16 and image.shape[1] >= 16
    assert np.isfinite(image).all() and image.std() > 1.0


def test_timing_table_lists_each_sampler(smoke_run):
    text = (smoke_run / "timings.md").read_text()
    for label in ("ddpm", "ddim-25", "dpmpp_2m-20"):
        assert f"| {label} |" in text


def test_checkpoint_reloads_and_samples(smoke_run, tmp_path):
    out = tmp_path / "from_checkpoint"
    sprites_ddpm.main(["--checkpoint", str(smoke_run / "checkpoint.pt"), "--out", str(out), "--device", "cpu",
                       "--n", "1", "--no-metrics"])
    assert (out / "guidance_scales.png").is_file() and not (out / "checkpoint.pt").exists()


def test_data_and_labels_go_together():
    with pytest.raises(SystemExit):
        sprites_ddpm.parse_args(["--data", "x.npy"])


def test_a_folder_of_images_trains_unconditionally(tmp_path):
    from PIL import Image as PILImage
    folder = tmp_path / "art"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(20):
        PILImage.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    out = tmp_path / "out"
    sprites_ddpm.main(["--preset", "smoke", "--data", str(folder), "--out", str(out), "--device", "cpu", "--n", "1"])
    assert (out / "ddim-25_per_class.png").is_file() and not (out / "guidance_scales.png").exists()


def test_the_course_loop_on_the_page_is_md_sample():
    """The hand-written loop over md.Stepper gives what md.sample gives, with and without the extra noise."""
    import torch

    import minidiff as md
    torch.manual_seed(0)
    model = md.nn.ContextUnet(in_channels=3, n_feat=16, n_cfeat=5, height=16).eval()
    schedule = md.NoiseSchedule.course(T=20)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    context = torch.eye(5)[[0, 3]]
    for add_noise, prediction_type in ((True, None), (False, None), (True, "v_prediction")):
        model.prediction_type = prediction_type          # v: the quick preset's network; the loop must read it
        by_hand, frames = sprites_ddpm.course_sampling_loop(model, schedule, x_T, context, seed=2, add_noise=add_noise)
        expected = md.sample(model, schedule, x_T.shape, "ddpm", x_T=x_T, context=context, add_noise=add_noise,
                             generator=torch.Generator().manual_seed(2), progress=False,
                             prediction_type=prediction_type or "epsilon")
        assert torch.equal(by_hand, expected) and len(frames) == 21
    as_eps = md.sample(model, schedule, x_T.shape, "ddpm", x_T=x_T, context=context, prediction_type="epsilon",
                       generator=torch.Generator().manual_seed(2), progress=False)
    assert not torch.allclose(by_hand, as_eps)
