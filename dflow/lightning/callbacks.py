"""Callbacks: a compact rich progress bar and the export of a finished base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

# what the bar shows, by prefix of the logged key (PretrainModule and RLModule log these names)
BAR_KEYS = ("train/loss", "train/reward", "reward", "val/reward", "val/acc_overall", "loss")


class DFlowProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` showing only loss / reward / accuracy (no ``v_num``), short names.

    Args:
        keys: logged metric names (prefixes) to show; the defaults cover pretraining and RL.
        leave: keep finished bars on screen.
    """

    def __init__(self, keys: tuple[str, ...] = BAR_KEYS, leave: bool = False) -> None:
        super().__init__(leave=leave, theme=RichProgressBarTheme(metrics_format=".4g"))
        self.keys = tuple(keys)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        return {k: v for k, v in metrics.items() if k.startswith(self.keys)}


class ExportPretrained(Callback):
    """At the end of ``fit``, write the trained denoiser as a base model directory.

    Calls ``pl_module.export_pretrained(dirpath)`` (``save_pretrained`` weights + config +
    ``dflow_meta.json``) on global rank 0; ``PretrainedDenoiser(dirpath)`` loads it.

    Args:
        dirpath: output directory (created; files in it are overwritten); ``None`` writes to
            ``<log_dir>/export``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        export = getattr(pl_module, "export_pretrained", None)
        if export is None:
            raise ValueError(
                f"ExportPretrained needs a module with export_pretrained(), got {type(pl_module).__name__}"
            )
        if trainer.is_global_zero:
            root = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
            out = export(Path(self.dirpath) if self.dirpath else Path(root) / "export")
            print(f"exported the base model to {out}")
