"""Run a study on the exact testbed and write its tables and plots (docs/testbed.md, "Studies").

    python scripts/testbed_study.py recipes/testbed/studies/naive_vs_udm_uniform.yaml --out runs/study
    python scripts/testbed_study.py SPEC --out DIR --seeds 0 1 2 --steps 2000   # override the spec
    python scripts/testbed_study.py SPEC --out DIR --report-only                 # tables from the files

Finished runs are skipped and unfinished ones resume from their last evaluation, so the same command
continues a study that was stopped, or extends it with more seeds (a longer ``--steps`` resumes the
finished runs too). One process, one thread by default (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dflow.testbed.study import METHODS, Study, StudySpec
from dflow.testbed.study_report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a study YAML (recipes/testbed/studies/)")
    parser.add_argument("--out", required=True, help="the study's folder (runs, CSV, markdown, plots)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS))
    parser.add_argument("--sources", nargs="+", choices=["mask", "uniform"])
    parser.add_argument("--rewards", nargs="+", choices=["partial", "sparse", "trap"])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--eval-every", type=int, dest="eval_every")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--report-only", action="store_true", help="only rewrite the tables and plots")
    parser.add_argument(
        "--unfinished", action="store_true", help="report unfinished runs too (to watch a study that is running)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = {k: getattr(args, k) for k in ("methods", "sources", "rewards", "seeds", "steps", "eval_every", "lr")}
    spec = StudySpec.from_yaml(args.spec, **overrides)
    if not args.report_only:
        tic = time.perf_counter()
        log = lambda msg: print(f"[{time.perf_counter() - tic:7.1f} s] {msg}", flush=True)  # noqa: E731
        Study(spec, args.out, log=log).run_all()
    for name, path in write_report(args.out, unfinished=args.unfinished).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
