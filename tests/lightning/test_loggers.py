"""Sample grids reach the loggers that show images (TensorBoard, W&B); CSV keeps the PNG only."""

from __future__ import annotations

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger
from PIL import Image
from test_rl_module import METHODS, V, _module, _trainer  # tests/lightning is on sys.path (rootdir)

from dflow.lightning.loggers import log_image
from dflow.paths import MaskSource

pytestmark = pytest.mark.usefixtures("single_thread")


class Board:
    """What TensorBoardLogger.experiment offers for images."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.calls.append((tag, image.shape, step, dataformats))


class BoardLogger:
    def __init__(self) -> None:
        self.experiment = Board()


class ImageLogger(Logger):
    """A Lightning logger with W&B's ``log_image(key, images, step)``; records what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, tuple, int]] = []

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None):
        self.images += [(key, np.asarray(im).shape, step) for im in images]


class Broken(ImageLogger):
    def log_image(self, key, images, step=None):
        raise ConnectionError("offline")


def test_log_image_sends_the_png_to_image_loggers_only(tmp_path):
    png = tmp_path / "grid.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(png)
    board, wandb_like = BoardLogger(), ImageLogger()
    sent = log_image([CSVLogger(tmp_path), board, wandb_like], "samples/eval", png, 7)
    assert sent == ["BoardLogger", "ImageLogger"]
    assert board.experiment.calls == [("samples/eval", (4, 6, 3), 7, "HWC")]
    assert wandb_like.images == [("samples/eval", (4, 6, 3), 7)]
    with pytest.warns(UserWarning, match="Broken did not take the image 'samples/eval' .*offline"):
        assert log_image([Broken()], "samples/eval", png, 7) == []


def test_rl_evaluations_log_their_grids_as_images(copy_task, tiny_builder, prompt_batches, tmp_path):
    images = ImageLogger()
    module = _module(tiny_builder, MaskSource(V), METHODS["dflow_grpo"](), eval_every_n_steps=10, num_grid_prompts=4)
    trainer = _trainer(tmp_path, logger=[CSVLogger(tmp_path, name="rl"), images])
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=2))
    assert [(key, step) for key, _, step in images.images] == [("samples/eval", 0), ("samples/eval", 2)]
    assert all(len(shape) == 3 and shape[2] == 3 for _, shape, _ in images.images)


def test_a_real_tensorboard_logger_takes_the_grid(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    png = tmp_path / "grid.png"
    Image.new("RGB", (6, 4), (0, 255, 0)).save(png)
    logger = TensorBoardLogger(tmp_path, name="tb")
    assert log_image([logger], "samples/eval", png, 3) == ["TensorBoardLogger"]
    logger.experiment.flush()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
