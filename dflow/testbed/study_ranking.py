"""A testbed study's verdict on the held-out test prompts: per method, the final reward, the largest fall
and the cost to 90 % there, and the ranking of the methods (``summary.md``'s last two tables).

RL trains on the ``rl`` prompts only, so a method can fit them while its test reward falls (diffu-GRPO and
wd1 do on the testbed); ranking on the test prompts keeps such a method from coming first.
"""

from __future__ import annotations

import math
from typing import Any

from dflow.testbed.study_stats import TARGETS, fmt, mean_se


def _held_out_runs(runs: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """``method``'s runs that were scored on the held-out test prompts."""
    return [r for r in runs if r["method"] == method and not math.isnan(r.get("test_final_reward", math.nan))]


def _test_costs(runs: list[dict[str, Any]]) -> list[float]:
    """The fwd-equiv to 90 % of the optimum on the test prompts, of the runs that reached it."""
    key = f"test_fwd_equiv_to_{TARGETS[-1]:.0%}"
    return [r[key] for r in runs if not math.isnan(r[key])]


def _ends_at_target(run: dict[str, Any]) -> bool:
    """Whether the run's final test reward is at or above 90 % of the optimum."""
    return run["test_final_frac_opt"] >= TARGETS[-1]


def held_out_table(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Final reward, largest fall and cost to 90 % on the held-out test prompts (mean ± SE over seeds)."""
    target = f"{TARGETS[-1]:.0%}"
    lines = [
        "",
        "On the held-out test prompts (RL never trains on them; mean ± SE over seeds, the cost over the seeds "
        "that reached it):",
        "",
        f"| method | final test reward | largest fall of the test reward | reached {target} | fwd-equiv to {target} |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        mine = _held_out_runs(runs, method)
        if not mine:
            continue
        hit = _test_costs(mine)
        lines.append(
            f"| {method} | {fmt(*mean_se([r['test_final_reward'] for r in mine])[:2])} | "
            f"{fmt(*mean_se([r['test_drop'] for r in mine])[:2])} | {len(hit)}/{len(mine)} | "
            f"{fmt(*mean_se(hit)[:2], 0)} |"
        )
    return lines


def ranking(runs: list[dict[str, Any]], methods: list[str]) -> list[tuple[str, bool]]:
    """``methods`` ranked on the held-out test prompts, each with whether it *holds* there: every seed
    ends at or above 90 % of the optimum. Those come first, by mean compute to 90 % there (least
    first); the others follow, by mean final test reward (highest first). Methods without test rows
    are left out."""
    target = f"{TARGETS[-1]:.0%}"
    held, rest = [], []
    for method in methods:
        mine = _held_out_runs(runs, method)
        if not mine:
            continue
        if all(_ends_at_target(r) for r in mine):
            held.append((mean_se([r[f"test_fwd_equiv_to_{target}"] for r in mine])[0], method))
        else:
            rest.append((-mean_se([r["test_final_reward"] for r in mine])[0], method))
    return [(m, True) for _, m in sorted(held)] + [(m, False) for _, m in sorted(rest)]


def ranking_table(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """:func:`ranking` as a table, with the spread over seeds of what it ranks by."""
    target = f"{TARGETS[-1]:.0%}"
    lines = [
        "",
        f"Ranking on the held-out test prompts: first the methods whose every seed ends at or above {target} of "
        f"the optimum there, by compute to {target} (least first); then the others, by final test reward:",
        "",
        f"| rank | method | seeds ending at {target} | fwd-equiv to {target} (test) | final test reward | "
        "final test P(opt) | largest fall of the test reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, (method, _) in enumerate(ranking(runs, methods), start=1):
        mine = _held_out_runs(runs, method)
        ending = sum(_ends_at_target(r) for r in mine)
        hit = _test_costs(mine)
        lines.append(
            f"| {rank} | {method} | {ending}/{len(mine)} | {fmt(*mean_se(hit)[:2], 0)} | "
            f"{fmt(*mean_se([r['test_final_reward'] for r in mine])[:2])} | "
            f"{fmt(*mean_se([r['test_final_p_opt'] for r in mine])[:2])} | "
            f"{fmt(*mean_se([r['test_drop'] for r in mine])[:2])} |"
        )
    return lines
