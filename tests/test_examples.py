"""Every lesson example runs with --preset smoke and writes the files it promises.

The examples are called in-process through main(argv) (faster than a subprocess); each writes into a
temporary folder, and every image it promises must exist and hold finite, non-constant pixels.
"""

import os
import sys

import numpy as np
import pytest
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

PROMISED = {
    "toy_2d": ["score_field.png", "samples.png", "paths.png", "denoising.gif", "results.md"],
    "score_sde_digits": ["samplers.png", "ode_trajectory.gif", "loss.png", "results.md"],
    "conditional_transformer": ["classes.png", "classes_guided.png", "embedding_similarity.png", "loss.png",
                                "results.md"],
    "latent_diffusion": ["reconstructions.png", "samples.png", "autoencoder_loss.png", "loss.png", "results.md"],
    "few_step": ["teacher_vs_student.png", "few_step.md", "few_step.json"],
    "flow_matching": ["classes_unet_eps.png", "classes_unet_flow.png", "classes_dit_eps.png", "classes_dit_flow.png",
                      "trajectories.gif", "flow_matching.md", "flow_matching.json"],
    "pitfalls": ["no_noise.png", "random_shortcut.png", "attention_axis.png", "attention_no_scale.png",
                 "clip_latents.png", "raw_weights.png", "grid_off_by_one.png", "pitfalls.md"],
}


def check_image(path):
    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        image.seek(frames - 1)                                    # a GIF's last frame: the result
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.size > 0 and np.isfinite(pixels).all(), path
    assert pixels.std() > 0, f"{path} is a constant image"


@pytest.mark.parametrize("name", [name for name in PROMISED if name != "pitfalls"])   # pitfalls: test_pitfalls.py
def test_example_smoke(name, tmp_path, capsys):
    module = __import__(name)
    module.main(["--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"])
    printed = capsys.readouterr().out
    for filename in PROMISED[name]:
        path = tmp_path / filename
        assert path.is_file(), f"{name} did not write {filename}"
        assert f"wrote: {path}" in printed, f"{name} did not print where {filename} is"
        if filename.endswith((".png", ".gif")):
            check_image(path)
            assert path.stat().st_size < 500_000


def test_every_example_has_the_three_presets_and_a_docstring():
    for name in PROMISED:
        module = __import__(name)
        assert {"smoke", "quick", "full"} <= set(module.PRESETS), name
        assert "Run:" in module.__doc__ and f"examples/{name}.py" in module.__doc__, name


def test_common_parse_args(tmp_path):
    import _common
    args = _common.parse_args("demo", {"smoke": 1, "quick": 2}, ["--preset", "smoke", "--out", str(tmp_path / "x")],
                              name="demo")
    assert args.preset == "smoke" and args.device.type in ("cpu", "cuda") and (tmp_path / "x").is_dir()
    with pytest.raises(SystemExit):
        _common.parse_args("demo", {"smoke": 1}, ["--preset", "nope"], name="demo")
