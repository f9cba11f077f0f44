"""Train one grid run: build it exactly as ``dflow fit`` would, stop it at the budget, record it.

The grid runner writes ``run.json`` (the LightningCLI arguments, the budget, what the run is);
:func:`execute` builds the run with the same CLI class and defaults as ``dflow fit``, adds
:class:`ComputeBudget` and :class:`RunRecorder`, trains, and on rank zero writes ``result.json``
atomically. ``python -m dflow.ablate.worker RUN_DIR/run.json`` calls it in a process of its own.

Every output of the run lands in ``RUN_DIR``: ``trainer.default_root_dir`` and the ``save_dir`` of
the recipe's logger are pointed there, so runs of one grid never share a log directory.
"""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dflow.ablate.budget import ComputeBudget
from dflow.ablate.files import json_bytes, write_atomic
from dflow.ablate.record import TRAIN_KEYS, RunRecorder
from dflow.ablate.spec import Budget
from dflow.lightning.cli import cli_settings

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
LOG_FILE = "train.log"
RESULT_SCHEMA = 1


def point_outputs_at(config: Any, run_dir: Path) -> None:
    """Send the trainer's root dir and every logger's ``save_dir`` (a parsed config) into ``run_dir``."""
    trainer = config.trainer
    trainer.default_root_dir = str(run_dir)
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args:
            init_args.save_dir = str(run_dir / "logs")


def build_result(
    run: dict[str, Any], budget: ComputeBudget, recorder: RunRecorder, wall: float, world: int
) -> dict[str, Any]:
    """The ``result.json`` record of a finished run."""
    if not recorder.eval_history:
        raise ValueError(f"run {run['run_id']} finished without an evaluation; nothing to record")
    final = {k: v for k, v in recorder.eval_history[-1].items() if k.startswith("eval/")}
    last_train = recorder.train_history[-1] if recorder.train_history else {}
    final.update({k: last_train[k] for k in TRAIN_KEYS if k in last_train})
    return {
        "schema": RESULT_SCHEMA,
        "run_id": run["run_id"],
        "method": run["method"],
        "grid": run.get("grid"),
        "recipe": run["recipe"],
        "recipe_sha256": run["recipe_sha256"],
        "axes": run["axes"],
        "overrides": run["overrides"],
        "seed": run["seed"],
        "budget": run["budget"],
        "budget_reached": budget.reached,
        "steps": recorder.train_history[-1]["step"] if recorder.train_history else 0,
        "compute": dict(recorder.totals),
        "final": final,
        "eval_history": recorder.eval_history,
        "train_history": recorder.train_history,
        "wall_time_s": wall,
        "world_size": world,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def execute(run: dict[str, Any], run_dir: Path, on_step=None, extra_args: tuple[str, ...] = ()) -> int:
    """Train the run described by ``run`` (a ``run.json`` record) and write its ``result.json``.

    ``on_step(used)`` is called after every step with the compute used (for an in-process progress
    display); ``extra_args`` are appended to the run's LightningCLI arguments. Returns 0 when the run
    finished, 130 when it was interrupted (no result is written then).
    """
    run_dir = Path(run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.exists():  # finished results are never overwritten
        raise ValueError(f"{result_file} exists: this run is finished (delete its directory to run it again)")
    spec = Budget.from_dict(run["budget"])
    budget = ComputeBudget(spec.unit, spec.value, spec.eval_every)
    recorder = RunRecorder(run_dir / PROGRESS_FILE, spec.unit, spec.value, on_step=on_step)
    cli_class, kwargs = cli_settings()

    # mypy takes no class held in a variable as a base; cli_settings() is the one place naming dflow's CLI class
    class RunCLI(cli_class):  # type: ignore[misc, valid-type]
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            point_outputs_at(self.config, run_dir)

    kwargs["trainer_defaults"] = {**kwargs["trainer_defaults"], "callbacks": [budget, recorder]}
    with warnings.catch_warnings():
        # sys.argv must stay as it is (the ddp launcher re-runs it for the other ranks), so the CLI
        # sees both it and `args`; `args` is what counts
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = RunCLI(**kwargs, run=False, args=[*run["args"], *extra_args])
    tic = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - tic
    if cli.trainer.interrupted:
        return 130  # Ctrl-C / SIGTERM: no result, the grid reruns this run next time
    if cli.trainer.is_global_zero:
        write_atomic(
            result_file,
            json_bytes(build_result(run, budget, recorder, wall, cli.trainer.world_size)),
        )
    return 0
