"""Start one grid run: in a worker process (``python -m dflow.ablate.worker``) or in this process.

See :mod:`dflow.ablate.runner` for why each run gets its own process. Several runs may train at
once (``dflow ablate --jobs N``): each launch is then called from its own thread, and a shared
``stop`` event ends every running worker when the grid is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dflow
from dflow.ablate.execute import LOG_FILE, PROGRESS_FILE, RESULT_FILE, RUN_FILE, execute
from dflow.ablate.files import json_bytes, read_json, write_atomic
from dflow.ablate.spec import GridSpec
from dflow.ablate.validate import PlannedRun


def run_directory(out: Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def run_record(spec: GridSpec, planned: PlannedRun) -> dict[str, Any]:
    """The worker's ``run.json``."""
    run = planned.run
    return {
        "schema": 1,
        "run_id": run.run_id,
        "method": run.method,
        "grid": spec.name,
        "recipe": str(run.recipe),
        "recipe_sha256": planned.recipe_sha256,
        "axes": run.axes,
        "overrides": run.overrides,
        "seed": planned.seed,
        "budget": spec.budget.to_dict(),
        "args": planned.args(),
    }


def _prepare(spec: GridSpec, planned: PlannedRun) -> Path:
    directory = run_directory(spec.out, planned.run.run_id)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PROGRESS_FILE).unlink(missing_ok=True)  # an earlier, interrupted attempt's progress
    write_atomic(directory / RUN_FILE, json_bytes(run_record(spec, planned)))
    return directory


def launch_inline(spec: GridSpec, planned: PlannedRun, on_progress=None) -> str | None:
    """Run one grid run in this process; ``None`` when it finished, else why it did not."""
    directory = _prepare(spec, planned)
    try:
        code = execute(run_record(spec, planned), directory, on_step=on_progress)
    except Exception as err:  # noqa: BLE001 - a failed run is reported and the grid goes on
        return f"{type(err).__name__}: {err}"
    return None if code == 0 and (directory / RESULT_FILE).is_file() else f"exit code {code}"


def launch(
    spec: GridSpec,
    planned: PlannedRun,
    on_progress=None,
    poll_s: float = 0.5,
    *,
    stop: threading.Event | None = None,
    threads: int | None = None,
) -> str | None:
    """Run one grid run in a worker process; ``None`` when it finished, else why it did not.

    ``stop``: when set (by another thread), the worker is stopped and the run reported unfinished.
    ``threads``: the worker's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (``None``: inherited).
    """
    directory = _prepare(spec, planned)
    env = dict(os.environ)
    package_root = str(Path(dflow.__file__).resolve().parents[1])  # importable without an install too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "dflow.ablate.worker", str(directory / RUN_FILE)]
    with open(directory / LOG_FILE, "wb") as log, sigterm_raises():
        # its own session: stopping it reaches the ranks a ddp launcher started, and a terminal's
        # Ctrl-C reaches this process only, which then stops the run (below)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                try:
                    code = process.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if on_progress is not None:
                        _report_progress(directory / PROGRESS_FILE, on_progress)
                    if stop is not None and stop.is_set():
                        _stop(process)
                        return "stopped: the grid was interrupted or another run failed (--fail-fast)"
        except BaseException:  # Ctrl-C or SIGTERM to the grid: stop the run too; it reruns next time
            _stop(process)
            raise
    if code == 0 and (directory / RESULT_FILE).is_file():
        return None
    _stop(process)  # ranks that outlived a failed rank 0 would wait on it for ever
    tail = (directory / LOG_FILE).read_text(errors="replace").strip().splitlines()[-8:]
    return f"exit code {code}; log {directory / LOG_FILE}:\n    " + "\n    ".join(tail)


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the worker's process group (Lightning saves and exits), SIGKILL it after ``grace_s``."""
    killpg = getattr(os, "killpg", None)
    for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
        try:
            if killpg is not None:
                killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:  # nothing left of it
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def sigterm_raises():
    """While a run trains, SIGTERM to the grid raises (so the run is stopped, not orphaned)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_progress(path: Path, on_progress) -> None:
    try:
        progress = read_json(path)
    except ValueError:  # not written yet
        return
    if isinstance(progress, dict) and isinstance(progress.get("used"), (int, float)):
        on_progress(progress["used"])
