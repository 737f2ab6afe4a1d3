"""imaging: pixel mapping, grid geometry, GIF frames, loss curves and labelled class grids (Pillow only)."""

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff import imaging


def test_to_uint8_maps_minus_one_to_zero_and_one_to_255_and_clips():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, -7.0, float("nan")]).reshape(1, 1, 2, 3)
    pixels = imaging.to_uint8(x)
    assert pixels.shape == (1, 2, 3, 3) and pixels.dtype == np.uint8        # grey -> RGB
    assert pixels[0, :, :, 0].tolist() == [[0, 128, 255], [255, 0, 128]]


def test_grid_geometry_padding_and_nearest_upscaling(tmp_path):
    images = -torch.ones(5, 3, 4, 4)
    images[1] = 1.0
    grid = imaging.make_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert (grid[1:5, 6:10] == 255).all() and (grid[1:5, 1:5] == 0).all()
    assert (grid[0] == 255).all()                                            # padding is white
    image = imaging.save_image_grid(images, tmp_path / "a" / "grid.png", nrow=3, scale=4)
    assert Image.open(tmp_path / "a" / "grid.png").size == (16 * 4, 11 * 4) == image.size
    big = np.asarray(Image.open(tmp_path / "a" / "grid.png"))
    assert (big[4:20, 24:40] == 255).all() and (big[4:20, 4:20] == 0).all()  # crisp 4x4 blocks


def test_trajectory_gif_has_one_frame_per_step_thinned_to_max_frames(tmp_path):
    frames = [torch.full((4, 3, 8, 8), v) for v in np.linspace(-1, 1, 7)]
    imaging.save_trajectory_gif(frames, tmp_path / "t.gif", scale=2)
    gif = Image.open(tmp_path / "t.gif")
    assert gif.n_frames == 7 and gif.size == (2 * 19, 2 * 19)
    imaging.save_trajectory_gif(frames * 30, tmp_path / "long.gif", max_frames=20)
    assert Image.open(tmp_path / "long.gif").n_frames == 20
    with pytest.raises(ValueError, match="at least one frame"):
        imaging.save_trajectory_gif([], tmp_path / "none.gif")


def test_loss_curve_draws_a_line_and_survives_nan_and_empty(tmp_path):
    steps = np.arange(1, 101)
    losses = 1.0 / steps
    losses[10] = np.nan
    image = imaging.save_loss_curve(steps, losses, tmp_path / "loss.png", size=(320, 200))
    assert image.size == (320, 200)
    pixels = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(-1) < 10).sum() > 100   # the blue curve
    imaging.save_loss_curve([], [], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()


def test_class_grid_has_one_labelled_row_per_class(tmp_path):
    images = torch.zeros(3, 4, 3, 16, 16)
    image = imaging.save_class_grid(images, ["hero", "food", "spell"], tmp_path / "c.png", scale=2)
    grid_width = (4 * 17 + 1) * 2
    assert image.height == (3 * 17 + 1) * 2 and image.width > grid_width     # a label column on the left
    labels = np.asarray(image)[:, : image.width - grid_width]
    assert (labels < 128).any()                                              # text was drawn
    with pytest.raises(ValueError, match="K = len"):
        imaging.save_class_grid(images, ["hero"], tmp_path / "bad.png")


def test_line_plot_draws_every_series_with_a_legend_on_log_axes(tmp_path):
    x = np.array([1.0, 10.0, 100.0])
    series = [imaging.Series(x, 1 / x, "first order", markers=True),
              imaging.Series(x, 1 / x**2, "second order", dashed=True),
              imaging.Series([1, 100], [0.5, np.nan], "broken at NaN")]
    image = imaging.line_plot(series, tmp_path / "p.png", title="W1", xlabel="NFE", ylabel="error",
                              log_x=True, log_y=True, size=(400, 300), legend="outside", notes=["a note"])
    assert image.width > 400 and image.height == 300 and (tmp_path / "p.png").is_file()
    pixels = np.asarray(image).astype(int)
    for colour in imaging.PALETTE[:2]:                                 # both curves and their legend samples
        assert (np.abs(pixels - colour).sum(-1) < 10).sum() > 50
    assert imaging._ticks(0.0, 2.0, log=True) == [0.0, 1.0, 2.0]      # 1, 10, 100
    assert imaging._ticks(0.0, 1.0, log=False) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    with pytest.raises(ValueError, match="x and y must have the same length"):
        imaging.line_plot([imaging.Series([1, 2], [1])])
    with pytest.raises(ValueError, match="legend must be one of"):
        imaging.line_plot(series, legend="middle")
