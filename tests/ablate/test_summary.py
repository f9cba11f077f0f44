"""summary.md from known numbers: the mean ± SE over seeds at every evaluation, the paired change,
the rank and every final metric. Each expected string is worked out by hand in a comment."""

from __future__ import annotations

import math

from dflow.ablate.spec import parse_grid
from dflow.ablate.summary import mean_se, summary_markdown
from tests.ablate.test_results import _result


def _spec(tmp_path, recipes, eval_every=20):
    return parse_grid(
        {
            "name": "known",
            "methods": {m: str(p) for m, p in recipes.items()},
            "grid": {"seed": [0, 1, 2]},
            "budget": {"unit": "fwd_equiv", "value": 40, "eval_every": eval_every},
            "target_accuracy": 0.5,
            "out": str(tmp_path / "known"),
        }
    )


def _row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _results():
    return [
        # udm: three seeds; the first evaluations differ, so the paired change is not the change of the means
        _result("udm-a", "udm", 0, [(0, 0.2), (20, 0.4), (40, 0.6)], kl=0.01),
        _result("udm-b", "udm", 1, [(0, 0.2), (20, 0.3), (40, 0.3)], kl=0.02),
        _result("udm-c", "udm", 2, [(0, 0.5), (20, 0.6), (40, 0.9)], kl=0.03),
        # elbo: two seeds, the second stopped after its first evaluation (no later columns)
        _result("elbo-a", "elbo", 0, [(0, 0.2), (20, 0.8), (40, 0.8)]),
        _result("elbo-b", "elbo", 1, [(0, 0.2), (21, 0.6), (42, 0.8)]),
    ]


def test_mean_se_by_hand():
    assert mean_se([]) == "—" and mean_se([None, math.nan]) == "—"
    assert mean_se([0.25]) == "0.250"
    # (0.2, 0.4): mean 0.3, sample std 0.141421, / sqrt(2) = 0.1
    assert mean_se([0.2, 0.4]) == "0.300 ± 0.100"
    # (1000, 2000, 3000): mean 2000, std 1000, SE 577.35 -> whole numbers with separators
    assert mean_se([1000, 2000, 3000]) == "2,000 ± 577"


def test_curve_table_by_hand(tmp_path, recipes):
    text = summary_markdown(_spec(tmp_path, recipes), _results())
    head = _row(text, "setting")
    assert head == [
        "setting", "n", "acc @ 0", "acc @ 20", "acc @ 40", "change (paired)", "rank", "fwd_equiv to 0.5",
    ]  # fmt: skip
    udm = _row(text, "udm.yaml")
    assert udm[:2] == ["udm.yaml", "3"]
    # step 0: (0.2, 0.2, 0.5): mean 0.3, std 0.173205, SE 0.1
    assert udm[2] == "0.300 ± 0.100"
    # at 20: (0.4, 0.3, 0.6): mean 0.433333, std 0.152753, SE 0.088192
    assert udm[3] == "0.433 ± 0.088"
    # at 40: (0.6, 0.3, 0.9): mean 0.6, std 0.3, SE 0.173205
    assert udm[4] == "0.600 ± 0.173"
    # paired changes (0.4, 0.1, 0.4): mean 0.3, std 0.173205, SE 0.1
    assert udm[5] == "0.300 ± 0.100"
    # final means: udm 0.6, elbo 0.8 -> elbo first
    assert udm[6] == "2" and _row(text, "elbo.yaml")[6] == "1"
    # to 0.5: seed a at 40, seed b never, seed c at 0 (0.5 >= 0.5): mean 20, std 28.28, SE 20
    assert udm[7] == "20 ± 20 (2/3)"
    elbo = _row(text, "elbo.yaml")
    # at 20: (0.8, 0.6): mean 0.7, SE 0.1; changes (0.6, 0.6): SE 0
    assert elbo[3] == "0.700 ± 0.100" and elbo[5] == "0.600 ± 0.000"


def test_final_metrics_table_has_every_eval_metric_and_the_kl(tmp_path, recipes):
    text = summary_markdown(_spec(tmp_path, recipes), _results())
    final = text.split("## Final metrics")[1]
    head = _row(final, "setting")
    assert head == ["setting", "n", "acc_counting", "acc_overall", "reward", "train KL"]
    udm = _row(final, "udm.yaml")
    # acc_counting = acc / 2: (0.3, 0.15, 0.45): mean 0.3, std 0.15, SE 0.086603
    assert udm[2] == "0.300 ± 0.087"
    # KL (0.01, 0.02, 0.03): mean 0.02, std 0.01, SE 0.005774
    assert udm[5] == "0.0200 ± 0.0058"
    assert _row(final, "elbo.yaml")[5] == "—"  # no KL penalty


def test_runs_of_unequal_length_leave_cells_empty(tmp_path, recipes):
    results = [
        _result("udm-a", "udm", 0, [(0, 0.2), (20, 0.4), (40, 0.6)]),
        _result("elbo-a", "elbo", 0, [(0, 0.2)]),  # one evaluation only: no later value, no change
    ]
    text = summary_markdown(_spec(tmp_path, recipes, eval_every=None), results)
    assert _row(text, "setting")[2:5] == ["acc @ 0", "acc @ eval 1", "acc @ eval 2"]
    assert _row(text, "elbo.yaml")[2:6] == ["0.200", "—", "—", "—"]
    assert _row(text, "udm.yaml")[5] == "0.400"


def test_equal_final_means_share_the_best_rank(tmp_path, recipes):
    results = [
        _result("udm-a", "udm", 0, [(0, 0.2), (40, 0.5)]),
        _result("elbo-a", "elbo", 0, [(0, 0.1), (40, 0.5)]),
    ]
    text = summary_markdown(_spec(tmp_path, recipes), results)
    assert _row(text, "udm.yaml")[-2] == _row(text, "elbo.yaml")[-2] == "1"


def test_columns_follow_the_budget_points_not_the_recipes_extra_evaluations(tmp_path, recipes):
    """A recipe's own evaluation schedule adds rows between the budget's points; a column takes each
    run's first evaluation at or past its point, and a budget that is no multiple of eval_every
    gets its own last column."""
    spec = _spec(tmp_path, recipes, eval_every=15)  # budget 40: points 0, 15, 30 and 40
    results = [
        _result("udm-a", "udm", 0, [(0, 0.1), (10, 0.9), (16, 0.2), (25, 0.9), (31, 0.3), (41, 0.4)]),
        _result("elbo-a", "elbo", 0, [(0, 0.1), (15, 0.5), (20, 0.6)]),  # stopped before 30
    ]
    text = summary_markdown(spec, results)
    assert _row(text, "setting")[2:6] == ["acc @ 0", "acc @ 15", "acc @ 30", "acc @ 40"]
    assert _row(text, "udm.yaml")[2:6] == ["0.100", "0.200", "0.300", "0.400"]
    assert _row(text, "elbo.yaml")[2:6] == ["0.100", "0.500", "—", "—"]
