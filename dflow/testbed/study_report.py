"""Tables and plots of a testbed study (``dflow.testbed.study``): mean and standard error over seeds.

Files written into the study folder:

- ``results.csv``: every run's exact-evaluation rows, with its method, source, reward and seed.
- ``summary.csv``: per (source, reward, method, split, step): mean, standard error (SE) and number of
  seeds of every score. SE = sample standard deviation (n - 1) / sqrt(n); empty for one seed.
- ``collapse.csv``: per run, on the ``rl`` prompts: how far its expected reward fell from its running
  peak, how far its KL to the base went, and the steps and fwd-equiv it took to reach 50% and 90% of
  the optimal expected reward; ``summary.md`` reports them with mean and SE over seeds, and ranks the
  methods on the held-out prompts (:func:`dflow.testbed.study_ranking.ranking`).
- ``summary.md``: the tables (markdown); ``<source>_<reward>_<plot>.png``: the curves against RL steps
  and one against compute (mean over seeds, band from the lowest to the highest seed), drawn with
  ``dflow.ablate.plots.line_chart`` (pillow; matplotlib is not a dependency).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dflow.ablate.plots import line_chart, seed_band
from dflow.testbed.study_ranking import held_out_table, ranking_table
from dflow.testbed.study_stats import TARGETS, fmt, mean_se

METRICS = ("reward", "frac_opt", "p_opt", "entropy", "kl", "fwd_equiv", "train_reward")
KEYS = ("source", "reward_kind", "method")
PLOTS = (  # (file suffix, x, split, metric, y label, y range)
    ("reward_rl", "step", "rl", "reward", "exact expected reward, rl prompts", (0.0, 1.0)),
    ("reward_test", "step", "test", "reward", "exact expected reward, test prompts", (0.0, 1.0)),
    ("p_opt_test", "step", "test", "p_opt", "exact P(optimum), test prompts", (0.0, 1.0)),  # the trap's number
    ("kl_rl", "step", "rl", "kl", "exact KL(policy || base), rl prompts (nats)", None),
    ("reward_rl_vs_compute", "fwd_equiv", "rl", "reward", "exact expected reward, rl prompts", (0.0, 1.0)),
)
X_LABELS = {"step": "RL step", "fwd_equiv": "compute (forward-pass equivalents)"}


def unfinished_runs(out: str | Path) -> list[str]:
    """The runs under ``out/runs`` that have not finished the study's steps (``study.json``; without it,
    those with no ``run.json``): stopped or still running. Their curves end early, so a table of
    them next to finished runs would mix horizons."""
    out = Path(out)
    saved = out / "study.json"
    steps = json.loads(saved.read_text())["steps"] if saved.exists() else None
    left = []
    for history in sorted(out.glob("runs/*/history.csv")):
        done = history.parent / "run.json"
        finished = done.exists() and (steps is None or json.loads(done.read_text()).get("finished_steps") == steps)
        if not finished:
            left.append(history.parent.name)
    return left


def load_results(out: str | Path, unfinished: bool = False) -> list[dict[str, Any]]:
    """Every row of every finished run's ``runs/<id>/history.csv`` (with ``unfinished``, of every run),
    numbers parsed, with the run's labels."""
    return _read_histories(out, skip=set() if unfinished else set(unfinished_runs(out)))


def _read_histories(out: str | Path, skip: set[str]) -> list[dict[str, Any]]:
    rows = []
    for history in sorted(Path(out).glob("runs/*/history.csv")):
        if history.parent.name in skip:
            continue
        method, source, reward, seed = history.parent.name.split("__")
        with open(history, newline="") as f:
            for r in csv.DictReader(f):
                row: dict[str, Any] = {"method": method, "source": source, "reward_kind": reward, "seed": int(seed[1:])}
                row.update({k: (v if k == "split" else float(v)) for k, v in r.items()})
                row["step"] = int(row["step"])
                rows.append(row)
    return rows


def summarise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean / SE / n over seeds per (source, reward, method, split, step), for every metric."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in KEYS) + (r["split"], r["step"])].append(r)
    out = []
    for key, members in sorted(groups.items()):
        row: dict[str, Any] = dict(zip((*KEYS, "split", "step"), key, strict=True))
        for metric in METRICS:
            values = [m[metric] for m in members if not math.isnan(m[metric])]
            row[f"{metric}_mean"], row[f"{metric}_se"], _ = mean_se(values)
        row["n"] = len(members)
        out.append(row)
    return out


def _fall(members: list[dict[str, Any]]) -> tuple[float, int]:
    """The largest fall of the reward below its running peak, and the step it was reached."""
    peak, drop, drop_step = -math.inf, 0.0, 0
    for r in members:
        peak = max(peak, r["reward"])
        if peak - r["reward"] > drop:
            drop, drop_step = peak - r["reward"], r["step"]
    return drop, drop_step


def collapse(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, on the ``rl`` prompts: peak expected reward and its step, final reward, the largest fall
    from the running peak (``drop``, with the step it was reached), final and largest KL to the base,
    compute to each of ``TARGETS``. On the held-out ``test`` prompts (``test_*``, NaN without them):
    final reward, largest fall, and the compute to 90 % of the optimum there. RL trains on the ``rl``
    prompts, so a method can fit them while its ``test`` reward falls (diffu-GRPO and wd1 do)."""
    runs: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    held_out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["split"] in ("rl", "test"):
            key = tuple(r[k] for k in KEYS) + (r["seed"],)
            (runs if r["split"] == "rl" else held_out)[key].append(r)
    out = []
    for key, members in sorted(runs.items()):
        members.sort(key=lambda r: r["step"])
        drop, drop_step = _fall(members)
        best = max(members, key=lambda r: r["reward"])
        last = members[-1]
        reached = {}
        for level in TARGETS:  # the first evaluation at or above this fraction of the optimal reward
            hit = next((r for r in members if r["frac_opt"] >= level), None)
            reached[f"step_to_{level:.0%}"] = math.nan if hit is None else hit["step"]
            reached[f"fwd_equiv_to_{level:.0%}"] = math.nan if hit is None else hit["fwd_equiv"]
        test = sorted(held_out.get(key, []), key=lambda r: r["step"])
        test_hit = next((r for r in test if r["frac_opt"] >= TARGETS[-1]), None)
        out.append(
            {
                **dict(zip((*KEYS, "seed"), key, strict=True)),
                "steps": last["step"],
                "peak_reward": best["reward"],
                "peak_step": best["step"],
                "final_reward": last["reward"],
                "drop": drop,
                "drop_step": drop_step,
                "final_kl": last["kl"],
                "max_kl": max(r["kl"] for r in members),
                "fwd_equiv_per_step": last["fwd_equiv"] / max(last["step"], 1),
                **reached,
                "test_final_reward": test[-1]["reward"] if test else math.nan,
                "test_final_frac_opt": test[-1]["frac_opt"] if test else math.nan,
                "test_final_p_opt": test[-1]["p_opt"] if test else math.nan,
                "test_drop": _fall(test)[0] if test else math.nan,
                f"test_fwd_equiv_to_{TARGETS[-1]:.0%}": math.nan if test_hit is None else test_hit["fwd_equiv"],
            }
        )
    return out


def table_steps(steps: Sequence[int], rows: int = 11) -> list[int]:
    """About ``rows`` evaluated steps spread over the run (always the first and the last)."""
    steps = sorted(set(steps))
    if len(steps) <= rows:
        return steps
    picks = {steps[round(i * (len(steps) - 1) / (rows - 1))] for i in range(rows)}
    return sorted(picks)


def markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = ["Exact scores; mean ± standard error over seeds (n = seeds; no SE for one seed).", ""]
    for source, kind in sorted({(r["source"], r["reward_kind"]) for r in summary}):
        part = [r for r in summary if r["source"] == source and r["reward_kind"] == kind]
        by_key = {(r["method"], r["split"], r["step"]): r for r in part}
        methods = sorted({r["method"] for r in part})
        lines += [
            f"### {source} source, {kind} reward",
            "",
            "| method | step | fwd-equiv | seeds | rl reward | test reward | rl P(opt) | rl KL to base | rl entropy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            for step in table_steps([r["step"] for r in part if r["method"] == method]):
                rl, test = by_key.get((method, "rl", step)), by_key.get((method, "test", step))
                if rl is None or test is None:
                    continue
                lines.append(
                    f"| {method} | {step} | {rl['fwd_equiv_mean']:,.0f} | {rl['n']} | "
                    f"{fmt(rl['reward_mean'], rl['reward_se'])} | {fmt(test['reward_mean'], test['reward_se'])} | "
                    f"{fmt(rl['p_opt_mean'], rl['p_opt_se'])} | {fmt(rl['kl_mean'], rl['kl_se'], 2)} | "
                    f"{fmt(rl['entropy_mean'], rl['entropy_se'], 2)} |"
                )
        lines += ["", "Stability on the rl prompts (per run, then mean ± SE over seeds):", ""]
        lines += [
            "| method | seeds | steps | peak reward | step of peak | final reward | largest fall from the "
            "running peak | final KL | largest KL | fwd-equiv per step |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            mine = [r for r in runs if (r["source"], r["reward_kind"], r["method"]) == (source, kind, method)]
            cells = [fmt(*mean_se([r[k] for r in mine])[:2], d) for k, d in _COLLAPSE_COLUMNS]
            steps = sorted({r["steps"] for r in mine})
            lines.append(f"| {method} | {len(mine)} | {'/'.join(map(str, steps))} | " + " | ".join(cells) + " |")
        these = [r for r in runs if (r["source"], r["reward_kind"]) == (source, kind)]
        lines += _cost_table(these, methods) + held_out_table(these, methods) + ranking_table(these, methods)
        lines.append("")
    return "\n".join(lines)


def _cost_table(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Cost to reach each of ``TARGETS`` (fractions of the optimal expected reward, rl prompts)."""
    head = " | ".join(f"reached {t:.0%} | RL steps to {t:.0%} | fwd-equiv to {t:.0%}" for t in TARGETS)
    lines = [
        "",
        "Cost to reach a fraction of the optimal expected reward on the rl prompts (the first evaluation at or "
        "above it; mean ± SE over the seeds that reached it):",
        "",
        f"| method | {head} |",
        "|---|" + "---|---|---|" * len(TARGETS),
    ]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        cells = []
        for t in TARGETS:
            hit = [r for r in mine if not math.isnan(r[f"step_to_{t:.0%}"])]
            steps, fwd = ([r[f"{k}_to_{t:.0%}"] for r in hit] for k in ("step", "fwd_equiv"))
            cells += [f"{len(hit)}/{len(mine)}", fmt(*mean_se(steps)[:2], 0), fmt(*mean_se(fwd)[:2], 0)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


_COLLAPSE_COLUMNS: tuple[tuple[str, int | str], ...] = (
    ("peak_reward", 3),
    ("peak_step", 0),
    ("final_reward", 3),
    ("drop", ".1e"),  # falls of 1e-5 matter: is a curve monotone?
    ("final_kl", 2),
    ("max_kl", 2),
    ("fwd_equiv_per_step", 0),
)


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    written = []
    for source, kind in sorted({(r["source"], r["reward_kind"]) for r in rows}):
        for suffix, x_key, split, metric, y_label, y_range in PLOTS:
            bands = []
            for method in sorted({r["method"] for r in rows}):
                curves: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
                for r in rows:
                    if (r["source"], r["reward_kind"], r["method"], r["split"]) == (source, kind, method, split):
                        curves[r["seed"]][0].append(r[x_key])
                        curves[r["seed"]][1].append(r[metric])
                band = seed_band(f"{method} ({len(curves)} seeds)", list(curves.values()))
                if band is not None:
                    bands.append(band)
            title = f"{source} source, {kind} reward: {y_label}"
            image = line_chart(bands, title, X_LABELS[x_key], y_label, y_range)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            path = out / f"{source}_{kind}_{suffix}.png"
            path.write_bytes(buffer.getvalue())
            written.append(path)
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def write_report(out: str | Path, unfinished: bool = False) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.csv``, ``collapse.csv``, ``summary.md`` and the plots, from the
    finished runs (with ``unfinished``, from every run: to watch a study that is still going).
    ``summary.md`` names the runs it left out."""
    out = Path(out)
    left = [] if unfinished else unfinished_runs(out)
    rows = _read_histories(out, skip=set(left))  # load_results, with the run.json files read once
    if not rows:
        raise ValueError(
            f"no finished run histories under {out / 'runs'}"
            + (f" ({len(left)} unfinished: {', '.join(left)}; pass unfinished=True to report them)" if left else "")
        )
    summary, runs = summarise(rows), collapse(rows)
    files = {name: out / f"{name}.csv" for name in ("results", "summary", "collapse")}
    _write_csv(files["results"], rows)
    _write_csv(files["summary"], summary)
    _write_csv(files["collapse"], runs)
    files["markdown"] = out / "summary.md"
    note = f"Left out, not finished ({len(left)}): {', '.join(left)}.\n\n" if left else ""
    files["markdown"].write_text(note + markdown(summary, runs))
    for path in plots(rows, out):
        files[path.stem] = path
    return files
