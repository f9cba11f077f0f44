"""Summarise several runs of one RL recipe (different seeds): accuracy per evaluation, per category, a plot.

Each run is a folder holding ``metrics.csv`` (``runs/<name>/version_N``, or what ``dflow demo --out
DIR`` wrote under ``DIR/logs/version_0``). For every evaluation step the runs share it prints the
strict test accuracy of each run, their mean and the standard error of that mean over seeds; then
the per-category accuracies before RL and at the last step; and it writes a plot of the mean
accuracy with the seeds' range. Rows of a resumed run's replayed steps count once (the last one).

Usage:
    python scripts/demo_seeds.py RUN_DIR [RUN_DIR ...] [--plot docs/images/demo_seeds.png] [--labels 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dflow.ablate.plots import line_chart, seed_band  # noqa: E402


def evaluations(run: Path) -> dict[int, dict[str, float]]:
    """RL step -> the ``eval/*`` values logged at it (the last row wins, as after a resume)."""
    path = run / "metrics.csv" if (run / "metrics.csv").is_file() else next(iter(run.rglob("metrics.csv")), None)
    if path is None:
        raise SystemExit(f"{run}: no metrics.csv under it")
    out: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("eval/acc_overall"):
                step = int(float(row["eval/rl_step"]))
                out[step] = {k: float(v) for k, v in row.items() if k.startswith("eval/") and v != ""}
    if not out:
        raise SystemExit(f"{path}: no evaluation rows (eval/acc_overall)")
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="*", default=None, help="one label per run (default: the folder names)")
    parser.add_argument("--plot", type=Path, default=None, help="write the accuracy curve (PNG)")
    opts = parser.parse_args(argv)
    labels = opts.labels or [str(r) for r in opts.runs]
    if len(labels) != len(opts.runs):
        raise SystemExit(f"--labels gives {len(labels)} labels for {len(opts.runs)} runs")
    evals = [evaluations(r) for r in opts.runs]
    steps = sorted(set.intersection(*(set(e) for e in evals)))
    print("| RL step | " + " | ".join(f"seed {label}" for label in labels) + " | mean | SE over seeds |")
    print("|---" * (len(labels) + 3) + "|")
    for step in steps:
        values = [e[step]["eval/acc_overall"] for e in evals]
        mean, se = mean_se(values)
        print(f"| {step} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} | {se:.3f} |")
    first, last = steps[0], steps[-1]
    categories = sorted(k for k in evals[0][first] if k.startswith("eval/acc_") and k != "eval/acc_overall")
    print()
    print(f"| category | step {first} (mean) | step {last} (mean) | change | SE of change over seeds |")
    print("|---|---|---|---|---|")
    for key in [*categories, "eval/acc_overall", "eval/reward"]:
        before = [e[first][key] for e in evals]
        after = [e[last][key] for e in evals]
        change, se = mean_se([a - b for a, b in zip(after, before, strict=True)])
        name = key.removeprefix("eval/").removeprefix("acc_")
        print(f"| {name} | {statistics.fmean(before):.3f} | {statistics.fmean(after):.3f} | {change:+.3f} | {se:.3f} |")
    if opts.plot:
        curves = [([float(s) for s in sorted(e)], [e[s]["eval/acc_overall"] for s in sorted(e)]) for e in evals]
        band = seed_band(f"test accuracy, {len(evals)} seeds", curves)
        assert band is not None
        image = line_chart([band], "RL on the shapes base, held out", "RL step", "strict test accuracy", (0.1, 0.4))
        opts.plot.parent.mkdir(parents=True, exist_ok=True)
        image.save(opts.plot)
        print(f"\nwrote {opts.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
