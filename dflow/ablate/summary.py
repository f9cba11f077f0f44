"""``summary.md``: a grid's results as markdown tables, mean ± standard error over seeds.

``table.txt`` shows the end of each run with the sample std over seeds. A comparison that goes into
a paper or ``docs/results.md`` needs more: the accuracy at every evaluation (the curve, not only its
end), the standard error of the mean over seeds, the change from the first evaluation paired within
each run, a rank, and every final metric the task reports (e.g. sudoku's cell accuracy besides the
solve rate). Two tables:

1. **Curve**: per setting (runs that differ only in their seed), the overall accuracy at each
   multiple of the budget's ``eval_every`` (0, E, 2E, ...): a run's first evaluation at or past it
   (the budget evaluates at the first step past each multiple, so the runs' compute in one column
   differs by at most one step; the recipe's own ``evaluation.every_n_steps`` schedule may add
   evaluations in between, which the column skips). Without ``eval_every``, the k-th evaluation of
   each run. Then the change ``acc(last) - acc(first)`` per run, its mean and SE; the rank by the final
   mean accuracy (1 = highest; equal means share a rank).
2. **Final metrics**: every ``eval/`` value of the last evaluation, plus the final training KL.

SE = sample standard deviation (``n - 1``) / ``sqrt(n)``; one seed shows the value alone. Seeds of one
grid share the base and the evaluation prompts and noise, so the SE measures run-to-run spread
(the seeds' rollouts and prompt order), not the evaluation's own sampling error.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from dflow.ablate.results import SeedGroup, compute_to_reach, format_spread, group_by_seed
from dflow.ablate.spec import GridSpec

SKIPPED_FINAL_KEYS = ("eval/rl_step",)


def mean_se(values: list[float | None], digits: int = 3) -> str:
    """``"m ± se"`` over the values present (SE = stdev / sqrt(n), stdev with ``n - 1``);
    ``"m"`` for one value, ``"—"`` for none (NaN counts as missing)."""
    present = [v for v in values if v is not None and not math.isnan(float(v))]
    return format_spread(present, digits, se=True, sep=" ± ")


def _points(spec: GridSpec) -> list[float] | None:
    """The compute of each curve column: ``0, E, 2E, ...`` up to the budget (``None`` without ``E``)."""
    every, value = spec.budget.eval_every, spec.budget.value
    if every is None:
        return None
    points = [k * every for k in range(int(math.floor(value / every + 1e-9)) + 1)]
    return points if math.isclose(points[-1], value) else [*points, value]


def _accuracy_at(result: dict[str, Any], unit: str, point: float) -> float | None:
    """Accuracy at a run's first evaluation with compute >= ``point`` (``None`` if it has none)."""
    for row in result["eval_history"]:
        if row.get(f"compute/{unit}", -math.inf) >= point - 1e-9:
            return row.get("eval/acc_overall")
    return None


def _accuracy_at_index(result: dict[str, Any], k: int) -> float | None:
    history = result["eval_history"]
    return history[k].get("eval/acc_overall") if k < len(history) else None


def _change(result: dict[str, Any]) -> float | None:
    """``acc(last evaluation) - acc(first evaluation)`` of one run (``None`` with fewer than two)."""
    history = [r.get("eval/acc_overall") for r in result["eval_history"]]
    history = [a for a in history if a is not None]
    return history[-1] - history[0] if len(history) >= 2 else None


def _final_mean(group: SeedGroup) -> float:
    values = [r["final"].get("eval/acc_overall") for r in group.results]
    present = [float(v) for v in values if v is not None]
    return statistics.mean(present) if present else -math.inf


def ranks(groups: list[SeedGroup]) -> list[int]:
    """Rank of each group by its final mean accuracy, 1 = highest; equal means share the best rank."""
    means = [_final_mean(g) for g in groups]
    return [1 + sum(other > m for other in means) for m in means]


def curve_table(spec: GridSpec, groups: list[SeedGroup]) -> list[str]:
    unit, target = spec.budget.unit, spec.target_accuracy
    points = _points(spec)
    if points is None:
        width = max(len(r["eval_history"]) for g in groups for r in g.results)
        labels = ["acc @ 0", *(f"acc @ eval {k}" for k in range(1, width))]
        columns = [lambda r, k=k: _accuracy_at_index(r, k) for k in range(width)]
    else:
        labels = [f"acc @ {p:,.0f}" for p in points]
        columns = [lambda r, p=p: _accuracy_at(r, unit, p) for p in points]
    head = [
        "setting",
        "n",
        *labels,
        "change (paired)",
        "rank",
        f"{unit} to {target:g}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, rank in zip(groups, ranks(groups), strict=True):
        rs = group.results
        reached = [compute_to_reach(r, unit, target) for r in rs]
        cells = [
            group.label,
            str(len(rs)),
            *(mean_se([column(r) for r in rs]) for column in columns),
            mean_se([_change(r) for r in rs]),
            str(rank),
            f"{mean_se(reached, digits=0)} ({sum(v is not None for v in reached)}/{len(rs)})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def final_table(groups: list[SeedGroup]) -> list[str]:
    keys = sorted(
        {k for g in groups for r in g.results for k in r["final"] if k.startswith("eval/")} - set(SKIPPED_FINAL_KEYS)
    )
    head = ["setting", "n", *(k.removeprefix("eval/") for k in keys), "train KL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        rs = group.results
        cells = [
            group.label,
            str(len(rs)),
            *(mean_se([r["final"].get(k) for r in rs]) for k in keys),
            mean_se([r["final"].get("train/kl") for r in rs], digits=4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_markdown(spec: GridSpec, results: list[dict[str, Any]]) -> str:
    """The text of ``summary.md`` (see the module docstring)."""
    groups = group_by_seed(spec, results)
    budget = spec.budget
    every = f", evaluated every {budget.eval_every:,.0f}" if budget.eval_every is not None else ""
    out = [
        f"# {spec.name}: mean ± SE over seeds",
        "",
        f"Budget {budget.value:,.0f} {budget.unit} per run{every}. Accuracy = `eval/acc_overall` on the "
        "evaluation prompts. SE = sample std (n - 1) / sqrt(n) over the seeds; the change is "
        "acc(last) - acc(first) within each run, then averaged. Rank by the final mean accuracy.",
        "",
        *curve_table(spec, groups),
        "",
        "## Final metrics (the last evaluation)",
        "",
        *final_table(groups),
        "",
    ]
    return "\n".join(out)
