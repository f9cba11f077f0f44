"""Read finished runs back, check them, and summarise a grid: ``results.csv`` and the seed table.

One CSV row per finished run; the table groups runs that differ only in their seed and shows
mean ± sample std over those seeds.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from dflow.ablate.files import read_json
from dflow.ablate.spec import SEED_AXIS, GridSpec

REQUIRED_KEYS = (
    "schema",
    "run_id",
    "method",
    "recipe_sha256",
    "axes",
    "overrides",
    "seed",
    "budget",
    "budget_reached",
    "steps",
    "compute",
    "final",
    "eval_history",
    "train_history",
    "wall_time_s",
)


def load_result(path: Path, run_id: str, recipe_sha256: str, budget: dict[str, Any]) -> dict[str, Any]:
    """A finished run's ``result.json``, checked against the run it should belong to.

    ``ValueError`` naming the file when it is unreadable, not a result, another run's, or made from
    a different recipe text or budget (then the grid is not the one that was run: pick a new
    ``--out``, or delete that run's directory to run it again).
    """
    result = read_json(path, "result file")
    if not isinstance(result, dict) or any(k not in result for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(result, dict) or k not in result]
        raise ValueError(
            f"result file {str(path)!r} is not a dflow ablate result (missing {missing}); it was left untouched"
        )
    if result["run_id"] != run_id:
        raise ValueError(f"result file {str(path)!r} belongs to run {result['run_id']!r}, not {run_id!r}")
    if result["recipe_sha256"] != recipe_sha256:
        raise ValueError(
            f"result file {str(path)!r} was made from another version of recipe {result.get('recipe')!r}; "
            f"it is kept as it is: use another --out for the edited recipe, or delete {path.parent} to rerun"
        )
    if result["budget"] != budget:
        raise ValueError(
            f"result file {str(path)!r} was made with budget {result['budget']} but the grid asks for {budget}; "
            f"use another --out for a new budget"
        )
    return result


def check_csv(path: Path) -> None:
    """An earlier ``results.csv`` must be a well-formed table with a ``run_id`` column; ``ValueError``
    naming it otherwise (it is derived data, but an unreadable one may be someone's edit: not ours to
    overwrite)."""
    if not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"results file {str(path)!r} is unreadable ({err}); move it away and rerun") from err
    if not rows or "run_id" not in rows[0] or any(len(r) != len(rows[0]) for r in rows[1:]):
        raise ValueError(
            f"results file {str(path)!r} is not a results table written by dflow ablate (no run_id header or "
            f"ragged rows); move it away and rerun (it was left untouched)"
        )


def compute_to_reach(result: dict[str, Any], unit: str, target: float) -> float | None:
    """Compute at the first evaluation with overall accuracy >= ``target`` (``None`` if never).

    Accuracy is only known at evaluations, so this is an upper bound tight to the evaluation
    interval (``budget.eval_every``).
    """
    for row in result["eval_history"]:
        acc = row.get("eval/acc_overall")
        if acc is not None and acc >= target:
            return row.get(f"compute/{unit}")
    return None


def category_keys(results: list[dict[str, Any]]) -> list[str]:
    keys = {k for r in results for k in r["final"] if k.startswith("eval/acc_") and k != "eval/acc_overall"}
    return sorted(keys)


def csv_columns(spec: GridSpec, results: list[dict[str, Any]]) -> list[str]:
    axes = [k for k in spec.axes if k != SEED_AXIS]
    cats = [k.removeprefix("eval/") for k in category_keys(results)]
    return [
        "run_id",
        "method",
        "recipe",
        *axes,
        "seed",
        "steps",
        "budget_unit",
        "budget",
        "budget_reached",
        "compute_used",
        "compute_forward",
        "compute_backward",
        "compute_tokens",
        "compute_fwd_equiv",
        "acc_overall",
        *cats,
        "eval_reward",
        "train_reward",
        "kl",
        target_column(spec),
        "wall_time_s",
    ]


def target_column(spec: GridSpec) -> str:
    return f"compute_to_acc_{spec.target_accuracy:g}"


def csv_row(spec: GridSpec, result: dict[str, Any]) -> dict[str, Any]:
    unit, final, compute = spec.budget.unit, result["final"], result["compute"]
    row: dict[str, Any] = {
        "run_id": result["run_id"],
        "method": result["method"],
        "recipe": recipe_label(spec, result["method"]),
    }
    row.update({k: format_value(result["axes"].get(k)) for k in spec.axes if k != SEED_AXIS})
    row.update(
        {
            "seed": result["seed"],
            "steps": result["steps"],
            "budget_unit": unit,
            "budget": spec.budget.value,
            "budget_reached": result["budget_reached"],
            "compute_used": compute.get(unit),
            **{f"compute_{k}": v for k, v in compute.items()},
            "acc_overall": final.get("eval/acc_overall"),
            **{
                k.removeprefix("eval/"): v
                for k, v in final.items()
                if k.startswith("eval/acc_") and k != "eval/acc_overall"
            },
            "eval_reward": final.get("eval/reward"),
            "train_reward": final.get("train/reward"),
            "kl": final.get("train/kl"),
            target_column(spec): compute_to_reach(result, unit, spec.target_accuracy),
            "wall_time_s": round(float(result["wall_time_s"]), 3),
        }
    )
    return row


def csv_text(spec: GridSpec, results: list[dict[str, Any]]) -> str:
    """The ``results.csv`` text (blank cells for missing values, e.g. a target never reached)."""
    columns = csv_columns(spec, results)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = csv_row(spec, result)
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def format_value(value: Any) -> str:
    """A short label for an axis value: a class_path mapping shows its class name and arguments."""
    if isinstance(value, dict) and "class_path" in value:
        name = str(value["class_path"]).rsplit(".", 1)[-1]
        args = value.get("init_args") or {}
        return name + (f"({', '.join(f'{k}={format_value(v)}' for k, v in args.items())})" if args else "")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------- aggregation over seeds
@dataclass
class SeedGroup:
    """Runs that differ only in their seed: the label, the axis values, the results."""

    label: str
    method: str
    axes: dict[str, Any]
    results: list[dict[str, Any]]


def recipe_label(spec: GridSpec, method: str) -> str:
    """How tables name a method: its recipe file, the method's own overrides (shortened), and the
    grid's name for it when that is not the recipe's stem; e.g. ``elbo_epg.yaml + num_timesteps=3
    [elbo_epg_t3]``. Runs are labelled by what they ran, not by the method they stand for."""
    found = next((m for m in spec.methods if m.name == method), None)
    if found is None:
        return method
    recipe = Path(found.recipe)
    short = short_keys(list(found.overrides))
    parts = [recipe.name, *(f"{short[k]}={format_value(v)}" for k, v in found.overrides.items())]
    label = " + ".join(parts[:1] + [", ".join(parts[1:])] if len(parts) > 1 else parts)
    return label if method == recipe.stem else f"{label} [{method}]"


def group_by_seed(spec: GridSpec, results: list[dict[str, Any]]) -> list[SeedGroup]:
    groups: dict[tuple, SeedGroup] = {}
    axes = [k for k in spec.axes if k != SEED_AXIS]
    for result in results:
        values = {k: result["axes"].get(k) for k in axes}
        key = (result["method"], tuple(format_value(v) for v in values.values()))
        if key not in groups:
            short = short_keys(axes)
            label = " ".join(
                [recipe_label(spec, result["method"]), *(f"{short[k]}={format_value(v)}" for k, v in values.items())]
            )
            groups[key] = SeedGroup(label, result["method"], values, [])
        groups[key].results.append(result)
    return list(groups.values())


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix (``init_args`` dropped) that tells each key apart from the others."""
    parts = {k: [p for p in k.split(".") if p != "init_args"] for k in keys}
    out = {}
    for key, words in parts.items():
        for n in range(1, len(words) + 1):
            suffix = ".".join(words[-n:])
            if all(".".join(w[-n:]) != suffix for other, w in parts.items() if other != key):
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def format_spread(values: Sequence[float | None], digits: int = 2, *, se: bool = False, sep: str = "±") -> str:
    """``"m<sep>s"`` over the values present (``None`` skipped): ``s`` the sample std, or with
    ``se`` the standard error ``std / sqrt(n)``; ``"m"`` for one value, ``"—"`` for none. Values of
    1000 or more (compute counts) are whole numbers with separators."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return "—"
    big = max(abs(v) for v in present) >= 1000

    def fmt(v: float) -> str:
        return f"{v:,.0f}" if big else f"{v:.{digits}f}"

    if len(present) == 1:
        return fmt(present[0])
    spread = statistics.stdev(present) / (math.sqrt(len(present)) if se else 1.0)
    return f"{fmt(statistics.mean(present))}{sep}{fmt(spread)}"


def mean_std(values: list[float | None], digits: int = 2) -> str:
    """``"m±s"`` (sample std) over the values present; ``"m"`` for one value, ``"—"`` for none."""
    return format_spread(values, digits)


def summary_table(spec: GridSpec, results: list[dict[str, Any]]) -> Table:
    """Mean±std over seeds of each method/setting (train reward and per-category accuracy: see the CSV)."""
    unit, target = spec.budget.unit, spec.target_accuracy
    table = Table(
        title=f"{spec.name}: mean±std over seeds, budget {spec.budget.value:g} {unit}",
        caption=f"acc, reward: test prompts, at the end. to {target:g}: {unit} at the first evaluation "
        f"with acc ≥ {target:g} (seeds that got there)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name in ("setting", "n", "acc", "reward", "KL", "used", f"to {target:g}", "wall s"):
        table.add_column(name, justify="left" if name == "setting" else "right")
    for group in group_by_seed(spec, results):
        rs = group.results
        reached = [compute_to_reach(r, unit, target) for r in rs]
        n_reached = sum(v is not None for v in reached)
        table.add_row(
            group.label,
            str(len(rs)),
            mean_std([r["final"].get("eval/acc_overall") for r in rs]),
            mean_std([r["final"].get("eval/reward") for r in rs]),
            mean_std([r["final"].get("train/kl") for r in rs], digits=3),
            mean_std([r["compute"].get(unit) for r in rs], digits=0),
            f"{mean_std(reached, digits=0)} ({n_reached}/{len(rs)})",
            mean_std([float(r["wall_time_s"]) for r in rs], digits=1),
        )
    return table


def table_text(spec: GridSpec, results: list[dict[str, Any]], width: int = 140) -> str:
    """The seed table as plain text (what ``table.txt`` holds)."""
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    console.print(summary_table(spec, results))
    return console.export_text()
