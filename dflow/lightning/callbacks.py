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
        shown = {k: v for k, v in metrics.items() if k.startswith(self.keys)}
        history = getattr(pl_module, "eval_history", None)  # RLModule evaluates on its own schedule
        if history:
            shown["test acc"] = history[-1].get("eval/acc_overall")
        return shown

    def _get_train_description(self, current_epoch: int) -> str:
        # dflow's runs end at max_steps; their "epochs" are blocks of the data stream, not passes over
        # a data set, so Lightning's "Epoch 0/-2" would only mislead
        return "RL steps" if self.trainer.lightning_module.__class__.__name__ == "RLModule" else "Training"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        history = getattr(pl_module, "eval_history", None)
        if trainer.is_global_zero and history and len(history) >= 2:
            first, last = history[0], history[-1]
            a, b = first.get("eval/acc_overall"), last.get("eval/acc_overall")
            if a is not None and b is not None:
                steps = int(last.get("rl_step", 0))
                where = trainer.log_dir or trainer.default_root_dir
                print(
                    f"strict test accuracy {a:.3f} -> {b:.3f} ({b - a:+.3f}) after {steps} RL steps; metrics in {where}"
                )


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
