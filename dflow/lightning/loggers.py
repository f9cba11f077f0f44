"""A CSV logger that appends to an existing run's metrics instead of deleting them on resume, and
sample grids sent as images to the loggers that show them (TensorBoard, Weights & Biases)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from PIL import Image


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's writer deletes metrics.csv when the version folder exists; a resumed run must
        # keep what was written before the interruption (rows of replayed steps may then appear twice:
        # readers keep the last row of each step).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r") as f:
                header = f.readline().strip()
            self.metrics_keys = header.split(",") if header else []


class ResumableCSVLogger(CSVLogger):
    """:class:`lightning.pytorch.loggers.CSVLogger` that never deletes an existing ``metrics.csv``."""

    @property
    def experiment(self) -> _FabricExperimentWriter:  # the type CSVLogger.experiment declares
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def log_image(loggers: Sequence[Any], key: str, png: str | Path, step: int) -> list[str]:
    """Send a PNG written under the run folder (a sample grid) to every logger that takes images:
    TensorBoard (``experiment.add_image``) and Weights & Biases (``log_image``). CSV loggers keep
    only the file. Returns the names of the loggers that received it. A logger that fails to take
    the image is warned about, never allowed to stop training: the PNG is already on disk."""
    sent = []
    image = None
    for logger in loggers:
        taker = getattr(logger, "log_image", None)
        experiment = None if taker is not None else getattr(logger, "experiment", None)
        adder = getattr(experiment, "add_image", None)
        if taker is None and adder is None:
            continue
        try:
            if image is None:
                with Image.open(png) as opened:
                    image = np.asarray(opened.convert("RGB"))  # [H, W, 3] uint8
            if taker is not None:
                taker(key=key, images=[image], step=step)
            elif adder is not None:
                adder(key, image, step, dataformats="HWC")
            sent.append(type(logger).__name__)
        except Exception as err:  # noqa: BLE001 - a logging failure must not end a run
            name = type(logger).__name__
            warnings.warn(f"{name} did not take the image {key!r} ({type(err).__name__}: {err})", stacklevel=2)
    return sent
