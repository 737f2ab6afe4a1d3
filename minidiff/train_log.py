"""TensorBoard logging for the Trainer, an optional extra: ``pip install tensorboard`` (or ``".[tensorboard]"``).

``TrainConfig(tensorboard=True, out_dir=...)`` makes the Trainer write loss, learning rate, images/s
and its sample grids to ``out_dir/tensorboard``; view them with ``tensorboard --logdir out_dir``.
loss.csv and loss.png are written either way: they need nothing beyond minidiff's own dependencies.
The writer is torch's ``torch.utils.tensorboard.SummaryWriter``, imported only when asked for.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor


def summary_writer(log_dir: str):
    """torch's SummaryWriter for `log_dir`; ImportError saying what to install when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:      # torch.utils.tensorboard imports the tensorboard package
        raise ImportError(f"TrainConfig.tensorboard=True needs the tensorboard package ({error}); install it "
                          f"with: pip install tensorboard (the minidiff[tensorboard] extra), or set "
                          f"tensorboard=False") from None
    return SummaryWriter(log_dir=log_dir)


class TensorBoardLog:
    """Scalars and image grids of a training run, for TensorBoard. `make_writer(log_dir)` -> a writer
    with add_scalar / add_image / flush (default: ``summary_writer``; tests pass a fake)."""

    def __init__(self, log_dir: str, make_writer: Optional[Callable] = None):
        self.writer = (make_writer or summary_writer)(log_dir)

    def scalars(self, step: int, metrics: dict) -> None:
        """One point per metric: train/loss, train/lr, train/images_per_s, train/epoch."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", float(value), step)
        self.writer.flush()

    def grid(self, step: int, images: Tensor, nrow: int) -> None:
        """Sample images [N, C, H, W] in [-1, 1] as one grid image "samples" (uint8 HWC)."""
        from .imaging import make_grid
        self.writer.add_image("samples", make_grid(images, nrow=nrow), step, dataformats="HWC")
        self.writer.flush()
