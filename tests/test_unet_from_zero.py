"""examples/unet_from_zero.py runs end to end at --preset smoke and writes the pictures it promises."""

import importlib.util
import os
import sys

import numpy as np
from PIL import Image

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "unet_from_zero.py")
PROMISED = ("corrupted", "basic_unet_loss", "basic_unet_predictions", "naive_sampler_steps", "naive_samples",
            "ddpm_loss", "ddpm_samples")


def load_example():
    spec = importlib.util.spec_from_file_location("unet_from_zero", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["unet_from_zero"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_smoke_preset_writes_finite_nonconstant_pngs_and_lists_the_differences(tmp_path, capsys):
    files = load_example().main(["--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"])
    assert set(files) == set(PROMISED)
    for name in PROMISED:
        path = files[name]
        assert os.path.dirname(os.path.abspath(path)) == str(tmp_path) and path.endswith(".png")
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        assert pixels.ndim == 3 and pixels.shape[0] > 20 and pixels.shape[1] > 20, name
        assert np.isfinite(pixels).all() and pixels.std() > 1.0, f"{name} is constant"
    printed = capsys.readouterr().out
    assert str(tmp_path) in printed
    for k in range(1, 7):  # a numbered list of the toy-vs-DDPM differences
        assert f"\n  {k}. " in printed
    for word in ("UNIFORM", "GAUSSIAN", "Timestep", "noise eps", "weighting", "Sampler"):
        assert word in printed
