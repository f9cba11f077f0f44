"""``RunRecorder``: what a grid run keeps for its ``result.json``.

Every step: the training metrics (reward, accuracy, KL) with the compute used so far; every
evaluation the module made: its metrics with the compute at that point. Compute is summed over
devices (:func:`~dflow.ablate.budget.global_compute`), so curves from 1 and 2 devices share an axis.
Rank zero also rewrites a small ``progress.json`` after each step for the grid's progress display.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from dflow.ablate.budget import COMPUTE_FIELDS, global_compute
from dflow.ablate.files import json_bytes, write_atomic

TRAIN_KEYS = ("train/reward", "train/acc", "train/kl")


class RunRecorder(Callback):
    """Collects ``train_history`` (one row per step) and ``eval_history`` (one row per evaluation).

    Rows are ``{"step": int, "compute/<field>": float, ...metrics}``. Put it after
    :class:`~dflow.ablate.budget.ComputeBudget` in the callback list, so the final evaluation that
    the budget triggers in ``on_train_end`` is recorded too.

    Args:
        progress_file: where rank zero writes ``{"step", "used", "unit", "budget", "acc"}``.
        unit / budget: echoed into the progress file.
        on_step: called on rank zero with the compute used (in ``unit``) after every step.
    """

    def __init__(
        self,
        progress_file: str | Path | None = None,
        unit: str = "fwd_equiv",
        budget: float | None = None,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self.progress_file = Path(progress_file) if progress_file else None
        self.unit, self.budget, self.on_step = unit, budget, on_step
        self.train_history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.totals = dict.fromkeys(COMPUTE_FIELDS, 0.0)
        self._seen = 0

    @staticmethod
    def step_of(trainer: L.Trainer, module: L.LightningModule) -> int:
        """RL steps done (the RLModule's ``rl_steps`` when it keeps one, else optimiser steps)."""
        return int(getattr(module, "rl_steps", trainer.global_step))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = 0
        self.collect_evaluations(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.totals = global_compute(trainer, pl_module)
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"step": self.step_of(trainer, pl_module)}
        row.update({f"compute/{k}": v for k, v in self.totals.items()})
        row.update({k: float(metrics[k]) for k in TRAIN_KEYS if k in metrics})
        self.train_history.append(row)
        self.collect_evaluations(trainer, pl_module)
        if self.progress_file is not None and trainer.is_global_zero:
            last_acc = self.eval_history[-1].get("eval/acc_overall") if self.eval_history else None
            progress = {
                "step": row["step"],
                "used": self.totals[self.unit],
                "unit": self.unit,
                "budget": self.budget,
                "acc": last_acc,
                "time": time.time(),
            }
            write_atomic(self.progress_file, json_bytes(progress))
        if self.on_step is not None and trainer.is_global_zero:
            self.on_step(self.totals[self.unit])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.collect_evaluations(trainer, pl_module)

    def collect_evaluations(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the module's evaluations made since the last call, with the compute now.

        No collective here (it also runs in ``on_train_end``): an evaluation adds no compute, so the
        totals of the last step are the totals at the evaluation.
        """
        history = getattr(pl_module, "eval_history", [])
        for entry in history[self._seen :]:
            row: dict[str, Any] = {
                "step": int(entry.get("rl_step", entry.get("step", self.step_of(trainer, pl_module))))
            }
            row.update({f"compute/{k}": v for k, v in self.totals.items()})
            row.update({k: float(v) for k, v in entry.items() if k.startswith("eval/")})
            self.eval_history.append(row)
        self._seen = len(history)
