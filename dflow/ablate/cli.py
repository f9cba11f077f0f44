"""``dflow ablate GRID.yaml [--dry-run] [--out DIR] [--fail-fast] [--jobs N] [--reuse-from DIR ...]
[--methods M ...] [--trainer.KEY=VALUE ...]``.

Trainer settings given on the command line (``--trainer.devices=2 --trainer.strategy=ddp``) say
*how* to run and go to every run unchanged; they are checked like every override but do not enter
the run ids. What is compared (models, objectives, steps, seeds) belongs in the grid file.
"""

from __future__ import annotations

import argparse
import sys

from dflow.ablate.runner import run_grid
from dflow.ablate.spec import load_grid


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="dflow ablate",
        description="Run a grid of RL recipes on equal compute; resume, collect results.csv, a seed table "
        "and PNG plots. See docs/ablations.md.",
        epilog="Extra --trainer.KEY=VALUE arguments go to every run (e.g. --trainer.devices=2 --trainer.strategy=ddp).",
    )
    parser.add_argument("grid", help="grid file (YAML): methods or base, grid axes, budget, out")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every run's config and list the runs; run nothing",
    )
    parser.add_argument("--out", default=None, help="output directory (default: the grid's `out:`)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first run that fails")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own worker with cpu_count/N torch threads (default 1); "
        "on a CPU machine 2 jobs of 1 thread finish a grid sooner than 1 job of 2 threads",
    )
    parser.add_argument(
        "--reuse-from",
        action="append",
        default=[],
        metavar="DIR",
        help="output folder of another grid (repeatable): its finished runs with the same id, recipe "
        "text and budget are copied here instead of trained",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="train only these methods' unfinished runs now (the rest in a later call); the tables and plots "
        "hold every finished run",
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="train in this process instead of one worker process per run (one device; for debugging)",
    )
    opts, extra = parser.parse_known_args(argv)
    for arg in extra:
        if not (arg.startswith("--trainer.") and "=" in arg):
            parser.error(
                f"unrecognised argument {arg!r}: only trainer settings pass through, as --trainer.KEY=VALUE; "
                f"put what the runs compare in the grid file (overrides: or grid:)"
            )
    return opts, extra


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when every run finished, 1 when some failed, 2 on bad input."""
    opts, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = load_grid(opts.grid, out=opts.out)
        report = run_grid(
            spec,
            extra,
            dry_run=opts.dry_run,
            fail_fast=opts.fail_fast,
            launcher="inline" if opts.inline else "process",
            jobs=opts.jobs,
            reuse_from=opts.reuse_from,
            methods=opts.methods,
        )
    except ValueError as err:
        print(f"dflow ablate: error: {err}", file=sys.stderr)
        return 2
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
