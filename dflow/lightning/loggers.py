"""A CSV logger that appends to an existing run's metrics instead of deleting them on resume."""

from __future__ import annotations

from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


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
