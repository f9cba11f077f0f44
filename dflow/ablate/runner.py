"""Run a grid: check everything first, run each unfinished run in its own process, summarise.

Why one process per run (``python -m dflow.ablate.worker``) rather than calling ``trainer.fit``
in a loop here:

- Lightning's ``ddp`` strategy starts the other ranks by re-running the current command; in a loop
  that command would be the whole grid. A worker process is re-run as just that run.
- Nothing leaks from one run into the next (global seeds, torch threads and flags, GPU memory,
  process groups), so a run's numbers do not depend on its position in the grid.
- A run that crashes or is killed costs that run only: it leaves no ``result.json``, the grid
  goes on, and the next invocation reruns it.

The price is a few seconds of start-up (imports) per run, small against any real run.
``launcher="inline"`` trains in this process instead (one device only): for debugging with
breakpoints, and for tests that cannot pay the start-up of several processes.

Layout of ``out``::

    out/grid.json               the grid as understood (methods, axes, budget)
    out/runs/<run_id>/run.json  what the worker runs (LightningCLI arguments, budget, seed, ...)
    out/runs/<run_id>/train.log the worker's output
    out/runs/<run_id>/result.json  written atomically when the run finished; never overwritten
    out/results.csv, out/table.txt, out/summary.md, out/*_vs_compute.png
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dflow.ablate.execute import RESULT_FILE
from dflow.ablate.files import json_bytes, write_if_changed
from dflow.ablate.launch import launch, launch_inline, run_directory, sigterm_raises
from dflow.ablate.plots import write_plots
from dflow.ablate.results import (
    check_csv,
    csv_text,
    format_value,
    load_result,
    short_keys,
    summary_table,
    table_text,
)
from dflow.ablate.spec import SEED_AXIS, GridSpec
from dflow.ablate.summary import summary_markdown
from dflow.ablate.validate import ConfigParser, PlannedRun, plan_grid

CSV_FILE = "results.csv"
TABLE_FILE = "table.txt"
SUMMARY_FILE = "summary.md"
GRID_FILE = "grid.json"
LAUNCHERS = ("process", "inline")
INLINE_ARGS = ("--trainer.devices=1",)  # "auto" could mean several GPUs, whose launcher re-runs sys.argv


@dataclass
class GridReport:
    """What :func:`run_grid` did.

    Attributes:
        out: the grid's directory.
        planned: every run, checked.
        executed / reused: ids of runs trained now / finished before and read back.
        failed: ``{run_id: reason}`` of runs that did not finish (their log is in their directory).
        results: the finished runs' ``result.json`` records, in grid order.
        files: the summary files (CSV, table, plots) as they are now.
        table: the seed table as text.
    """

    out: Path
    planned: list[PlannedRun]
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    table: str = ""


def run_grid(
    spec: GridSpec,
    exec_args: list[str] | tuple[str, ...] = (),
    *,
    dry_run: bool = False,
    fail_fast: bool = False,
    console: Console | None = None,
    parser: ConfigParser | None = None,
    launcher: str = "process",
    jobs: int = 1,
    reuse_from: Sequence[str | Path] = (),
    methods: Sequence[str] | None = None,
) -> GridReport:
    """Check, run (unfinished runs only) and summarise the grid ``spec``.

    Everything that can be wrong with the input is found before the first run starts: a bad
    override (``ValueError`` naming it and the nearest valid keys), a run that cannot share the
    budget unit, runs that disagree on prompts or evaluation, a corrupt earlier ``results.csv`` or
    ``result.json`` (named; left untouched).

    ``launcher``: ``"process"`` (each run in its own worker process; see the module docstring) or
    ``"inline"`` (in this process, one device).

    ``jobs``: how many runs train at once (process launcher only). On a CPU machine each worker then
    gets ``cpu_count // jobs`` torch threads (unless ``OMP_NUM_THREADS`` is set): small models use
    several cores better as several runs than as one run's threads. Results do not depend on it.

    ``reuse_from``: output folders of other grids. A run of this grid not finished here whose id
    (same method name, recipe and overrides) is finished there, from the same recipe text and
    budget, is copied here instead of trained (nothing is copied in a dry run, and a run folder
    that already exists here is never replaced).

    ``methods``: train only these methods' unfinished runs now (``ValueError`` naming an unknown
    one); the others wait for a later call. The tables and plots still hold every finished run.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r} is not one of {LAUNCHERS}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: expected a positive integer (runs trained at once)")
    if jobs > 1 and launcher != "process":
        raise ValueError(f"jobs={jobs} needs launcher='process' (inline runs share one process)")
    if launcher == "inline":
        exec_args = (*exec_args, *INLINE_ARGS)
        multi = [a for a in exec_args if a.split("=", 1)[0] in ("--trainer.strategy", "--trainer.num_nodes")]
        if multi:
            raise ValueError(
                f"launcher='inline' runs on one device in this process; {multi[0]} needs launcher='process'"
            )
    if methods is not None:
        names = [m.name for m in spec.methods]
        unknown = sorted(set(methods) - set(names))
        if unknown or not methods:
            raise ValueError(
                f"methods={list(methods)!r}: {unknown or 'none given'}; the grid {spec.name!r} has {names}"
            )
    console = console or Console()
    out = Path(spec.out)
    check_csv(out / CSV_FILE)
    planned = plan_grid(spec, exec_args, parser)
    report = GridReport(out, planned)
    finished: dict[str, dict[str, Any]] = {}
    for p in planned:
        result_file = run_directory(out, p.run.run_id) / RESULT_FILE
        if result_file.exists():
            finished[p.run.run_id] = load_result(result_file, p.run.run_id, p.recipe_sha256, spec.budget.to_dict())
    borrowed = _borrow(spec, planned, finished, reuse_from, console, copy=not dry_run)
    report.reused = [p.run.run_id for p in planned if p.run.run_id in finished]
    unfinished = [p for p in planned if p.run.run_id not in finished]
    pending = [p for p in unfinished if methods is None or p.run.method in methods]
    if dry_run:
        later = {p.run.run_id for p in unfinished} - {p.run.run_id for p in pending}
        console.print(plan_table(spec, planned, finished, borrowed, later))
        return report

    waiting = len(unfinished) - len(pending)
    console.print(
        f"[bold]{spec.name}[/]: {len(planned)} runs ({len(finished)} finished, {len(pending)} to run"
        + (f", {waiting} left for later by methods={list(methods or [])}" if waiting else "")
        + "), "
        f"budget {spec.budget.value:g} {spec.budget.unit} each, out {out}"
    )
    if pending:
        _run_pending(spec, pending, report, finished, console, fail_fast, launcher, jobs)

    report.results = [finished[p.run.run_id] for p in planned if p.run.run_id in finished]
    write_if_changed(out / GRID_FILE, json_bytes(spec.to_dict()))
    if report.results:
        report.table = table_text(spec, report.results)
        write_if_changed(out / CSV_FILE, csv_text(spec, report.results).encode())
        write_if_changed(out / TABLE_FILE, report.table.encode())
        write_if_changed(out / SUMMARY_FILE, summary_markdown(spec, report.results).encode())
        report.files = [out / CSV_FILE, out / TABLE_FILE, out / SUMMARY_FILE, *write_plots(spec, report.results, out)]
        console.print(summary_table(spec, report.results))
    console.print(
        f"{len(report.executed)} run(s) trained, {len(report.reused)} reused, {len(report.failed)} failed"
        + (f"; wrote {', '.join(str(f) for f in report.files)}" if report.files else "")
    )
    for run_id, reason in report.failed.items():
        console.print(f"[red]failed[/] {run_id}: {reason}")
    return report


def _borrow(spec, planned, finished, sources, console, copy: bool) -> dict[str, Path]:
    """Find (and unless ``copy`` is false, copy in) finished runs of other grid folders: ``{run_id: source}``."""
    out, budget, sources, found = Path(spec.out), spec.budget.to_dict(), [Path(s) for s in sources], {}
    for source in sources:
        if not (source / "runs").is_dir():
            raise ValueError(f"reuse_from: {str(source)!r} is not a dflow ablate output folder (no runs/ inside)")
    for p in planned:
        run_id = p.run.run_id
        if run_id in finished:
            continue
        for source in sources:
            result_file = run_directory(source, run_id) / RESULT_FILE
            if not result_file.is_file():
                continue
            try:
                result = load_result(result_file, run_id, p.recipe_sha256, budget)
            except ValueError as err:
                console.print(f"[yellow]not reused[/] {run_id} from {source}: {err}")
                continue
            target = run_directory(out, run_id)
            if target.exists():
                console.print(f"[yellow]not reused[/] {run_id}: {target} exists (an unfinished run); it is kept")
            else:
                found[run_id] = source
                if copy:
                    _copy_run(result_file.parent, target)
                    finished[run_id] = result
            break
    if found and copy:
        console.print(f"reused {len(found)} finished run(s) from {', '.join(sorted({str(s) for s in found.values()}))}")
    return found


def _copy_run(source: Path, target: Path) -> None:
    """Copy a run folder whole; ``target`` appears only once complete (an interrupted copy leaves
    ``<target>.copying``, replaced next time)."""
    partial = target.with_name(target.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(target)


def _run_pending(spec, pending, report, finished, console, fail_fast, launcher, jobs) -> None:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
    )
    lock = threading.Lock()  # report / finished are shared by the runs that train at once
    stop = threading.Event()  # fail-fast or an interrupted grid: no new run starts, running ones stop
    threads = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)

    with Progress(*columns, console=console, transient=False) as progress:
        grid_task = progress.add_task(f"grid {spec.name}", total=len(pending))

        def one(planned: PlannedRun) -> None:
            if stop.is_set():
                return
            run_id = planned.run.run_id
            label = " ".join(f"{k}={format_value(v)}" for k, v in planned.run.axes.items())
            run_task = progress.add_task(f"{run_id} {label} [{spec.budget.unit}]", total=spec.budget.value)
            on_progress = lambda used: progress.update(  # noqa: E731
                run_task, completed=min(used, spec.budget.value)
            )
            if launcher == "process":
                reason = launch(spec, planned, on_progress, stop=stop, threads=threads)
            else:
                reason = launch_inline(spec, planned, on_progress)
            progress.update(grid_task, advance=1)
            if reason is None:
                result_file = run_directory(spec.out, run_id) / RESULT_FILE
                result = load_result(result_file, run_id, planned.recipe_sha256, spec.budget.to_dict())
                with lock:
                    finished[run_id] = result
                    report.executed.append(run_id)
                acc = result["final"].get("eval/acc_overall")
                progress.update(
                    run_task,
                    completed=spec.budget.value,
                    description=f"[green]done[/] {run_id} {label} acc={acc}",
                )
            else:
                with lock:
                    report.failed[run_id] = reason
                progress.update(run_task, description=f"[red]failed[/] {run_id} {label}")
                if fail_fast:
                    stop.set()

        if jobs == 1:
            for planned in pending:
                one(planned)
                if stop.is_set():
                    break
            return
        with sigterm_raises(), ThreadPoolExecutor(jobs, thread_name_prefix="dflow-ablate") as pool:
            futures = [pool.submit(one, planned) for planned in pending]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # Ctrl-C or SIGTERM: stop every running worker; they rerun next time
                stop.set()
                raise


def plan_table(
    spec: GridSpec,
    planned: list[PlannedRun],
    finished: dict[str, Any],
    borrowed: dict[str, Path] | None = None,
    later: set[str] | frozenset[str] = frozenset(),
) -> Table:
    """The runs of a grid with their coordinates and whether they are finished (``--dry-run``);
    ``later``: unfinished runs of methods not selected now."""
    borrowed = borrowed or {}
    axes = [k for k in spec.axes if k != SEED_AXIS]
    short = short_keys(axes)
    table = Table(
        title=f"{spec.name}: {len(planned)} runs, budget {spec.budget.value:g} {spec.budget.unit}, out {spec.out}"
    )
    for name in ("run id", "method", *(short[k] for k in axes), "seed", "status"):
        table.add_column(name)
    for p in planned:
        run_id = p.run.run_id
        status = (
            "finished"
            if run_id in finished
            else f"finished in {borrowed[run_id]}"
            if run_id in borrowed
            else "later (not in --methods)"
            if run_id in later
            else "to run"
        )
        table.add_row(
            p.run.run_id,
            p.run.method,
            *(format_value(p.run.axes[k]) for k in axes),
            str(p.seed),
            status,
        )
    return table
