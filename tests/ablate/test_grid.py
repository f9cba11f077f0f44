"""A tiny grid end to end: 2 methods x 2 seeds -> results.csv, the seed table, PNG plots; a rerun
trains nothing and changes no file; an unfinished run is rerun alone.

The 2 x 2 grid trains in this process (``launcher="inline"``) so the suite does not pay four
interpreter start-ups; one run goes through the worker process, the default launcher, on its own,
and the whole grid through ``dflow ablate`` processes is a slow test.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image
from rich.console import Console

import dflow.ablate.launch as launch
import dflow.ablate.runner as runner
from dflow.ablate.cli import main
from dflow.ablate.runner import run_grid
from dflow.ablate.spec import load_grid


def _snapshot(directory):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


def _console(width=120):
    return Console(file=io.StringIO(), width=width)


def _no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")


def test_tiny_grid_end_to_end_then_reused(grid_file, config_parser, monkeypatch):
    spec = load_grid(grid_file)
    ids = [r.run_id for r in spec.runs()]
    report = run_grid(spec, console=_console(), parser=config_parser, launcher="inline")
    assert report.failed == {}
    assert report.executed == ids and report.reused == []

    out = spec.out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("udm", "0"),
        ("udm", "1"),
        ("elbo", "0"),
        ("elbo", "1"),
    ]
    for row in rows:
        assert row["budget_unit"] == "fwd_equiv" and row["budget_reached"] == "True"
        assert float(row["compute_used"]) >= 40  # stopped at the first step that reached the budget
        assert 0.0 <= float(row["acc_overall"]) <= 1.0 and row["acc_counting"] != ""
    assert all(r["kl"] != "" for r in rows[:2]) and all(r["kl"] == "" for r in rows[2:])  # elbo has no KL penalty

    table = (out / "table.txt").read_text()
    assert report.table == table and "mean±std over seeds" in table
    # rows are labelled by the recipe they ran
    assert any(line.split()[:2] == ["udm.yaml", "2"] for line in table.splitlines())
    assert [r["recipe"] for r in rows] == ["udm.yaml", "udm.yaml", "elbo.yaml", "elbo.yaml"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# tiny: mean ± SE over seeds") and "| udm.yaml | 2 |" in summary
    for name in ("acc_vs_compute.png", "reward_vs_compute.png", "kl_vs_compute.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"

    for run_id in ids:
        result = json.loads((out / "runs" / run_id / "result.json").read_text())
        assert result["run_id"] == run_id and result["budget_reached"]
        # evaluated at compute 0 and where the budget stopped it, on the same 8 prompts
        assert result["eval_history"][0]["compute/fwd_equiv"] == 0.0
        assert result["eval_history"][-1]["compute/fwd_equiv"] == result["compute"]["fwd_equiv"]
        assert result["seed"] == result["axes"]["seed"]
        assert (out / "runs" / run_id / "config.yaml").is_file()  # the resolved config sits with the run

    # rerunning the finished grid trains nothing and leaves every file as it was
    before = _snapshot(out)
    monkeypatch.setattr(launch, "execute", _no_training)
    monkeypatch.setattr(runner, "launch", _no_training)
    monkeypatch.setattr(runner, "launch_inline", _no_training)
    again = run_grid(spec, console=_console(), parser=config_parser, launcher="inline")
    assert again.executed == [] and again.reused == ids
    assert _snapshot(out) == before
    monkeypatch.undo()

    # an unfinished run (no result.json: killed, crashed) is the only one trained next time
    (out / "runs" / ids[1] / "result.json").unlink()
    kept = {p: v for p, v in _snapshot(out / "runs").items() if ids[1] not in str(p)}
    third = run_grid(spec, console=_console(), parser=config_parser, launcher="inline")
    assert third.executed == [ids[1]] and third.reused == [ids[0], *ids[2:]]
    assert {p: v for p, v in _snapshot(out / "runs").items() if ids[1] not in str(p)} == kept

    # another output folder borrows this grid's finished runs (--reuse-from): nothing trains, the
    # run folders are copied whole, the summaries match; the source is left as it was
    source_files = _snapshot(out)
    monkeypatch.setattr(runner, "launch", _no_training)
    monkeypatch.setattr(runner, "launch_inline", _no_training)
    other = load_grid(grid_file, out=out.parent / "other")
    listing = _console(width=1000)  # long tmp paths must not wrap in the table
    dry = run_grid(other, console=listing, parser=config_parser, launcher="inline", dry_run=True, reuse_from=[out])
    assert dry.reused == [] and not (other.out / "runs").exists()  # a dry run copies nothing
    assert listing.file.getvalue().count(f"finished in {out}") == len(ids)
    copied = run_grid(other, console=_console(), parser=config_parser, launcher="inline", reuse_from=[out])
    assert copied.executed == [] and copied.reused == ids
    assert (other.out / "results.csv").read_text() == (out / "results.csv").read_text()
    for run_id in ids:
        assert (other.out / "runs" / run_id / "result.json").read_bytes() == (
            out / "runs" / run_id / "result.json"
        ).read_bytes()
    assert _snapshot(out) == source_files
    # a source run made from another recipe text is not borrowed (it would not be this grid's run)
    tampered = other.out / "runs" / ids[0] / "result.json"
    tampered.write_text(tampered.read_text().replace(copied.results[0]["recipe_sha256"], "0" * 64))
    listing = _console(width=1000)  # long tmp paths must not wrap in the table
    third_dir = load_grid(grid_file, out=out.parent / "third")
    check = run_grid(
        third_dir, console=listing, parser=config_parser, launcher="inline", dry_run=True, reuse_from=[other.out]
    )
    text = listing.file.getvalue()
    assert "not reused" in text and "another version of recipe" in text
    assert text.count(f"finished in {other.out}") == len(ids) - 1 and check.reused == []
    with pytest.raises(ValueError, match="not a dflow ablate output folder"):
        run_grid(third_dir, console=_console(), parser=config_parser, launcher="inline", reuse_from=[out / "runs"])


def test_one_run_through_the_worker_process(tmp_path, recipes, config_parser):
    grid = tmp_path / "one.yaml"
    grid.write_text(
        f"methods: {{elbo: {recipes['elbo']}}}\nbudget: {{unit: tokens, value: 100}}\nout: {tmp_path / 'one'}\n"
    )
    spec = load_grid(grid)
    report = run_grid(spec, console=_console(), parser=config_parser)  # launcher="process"
    assert report.failed == {} and len(report.executed) == 1
    run_dir = spec.out / "runs" / report.executed[0]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["compute"]["tokens"] >= 100 and result["world_size"] == 1
    assert json.loads((run_dir / "run.json").read_text())["args"][:2] == [
        "--config",
        str(recipes["elbo"]),
    ]
    assert (run_dir / "train.log").is_file() and (spec.out / "results.csv").is_file()


def test_two_runs_at_once_through_worker_processes(tmp_path, recipes, config_parser, monkeypatch):
    """``jobs=2``: both runs train in worker processes at the same time, one torch thread each."""
    grid = tmp_path / "two.yaml"
    grid.write_text(
        f"methods: {{elbo: {recipes['elbo']}}}\ngrid: {{seed: [0, 1]}}\n"
        f"budget: {{unit: tokens, value: 100}}\nout: {tmp_path / 'two'}\n"
    )
    spec = load_grid(grid)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    starts, real = [], launch.subprocess.Popen

    def popen(*args, **kwargs):
        starts.append(kwargs["env"]["OMP_NUM_THREADS"])
        return real(*args, **kwargs)

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    report = run_grid(spec, console=_console(), parser=config_parser, jobs=2)
    assert report.failed == {} and sorted(report.executed) == sorted(r.run_id for r in spec.runs())
    assert starts == ["1", "1"]
    assert len(list(csv.DictReader((spec.out / "results.csv").open()))) == 2

    with pytest.raises(ValueError, match="jobs=0"):
        run_grid(spec, console=_console(), parser=config_parser, jobs=0)
    with pytest.raises(ValueError, match="jobs=2 needs launcher='process'"):
        run_grid(spec, console=_console(), parser=config_parser, jobs=2, launcher="inline")


def test_cli_dry_run_lists_runs_and_rejects_bad_input(grid_file, tmp_path, capsys):
    from dflow.cli import main as dflow_main

    # `dflow ablate` dispatches here
    assert dflow_main(["ablate", str(grid_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("to run") == 4
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    assert main([str(grid_file), "--dry-run", "--trainer.max_stepz=3"]) == 2
    assert "override 'trainer.max_stepz' names no field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(grid_file), "--model.init_args.optim.lr=1"])  # only trainer settings pass through
    assert "only trainer settings pass through" in capsys.readouterr().err


def test_methods_trains_a_subset_now_and_the_rest_later(grid_file, config_parser, capsys):
    spec = load_grid(grid_file)
    ids = {m: [r.run_id for r in spec.runs() if r.method == m] for m in ("udm", "elbo")}
    # the CLI lists the other method's runs as left for later, and names an unknown method
    assert main([str(grid_file), "--dry-run", "--methods", "elbo"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("to run") == 2 and listing.count("later (not in --methods)") == 2
    assert main([str(grid_file), "--dry-run", "--methods", "eblo"]) == 2
    assert "['eblo']" in capsys.readouterr().err

    report = run_grid(spec, console=_console(), parser=config_parser, launcher="inline", methods=["elbo"])
    assert report.executed == ids["elbo"] and report.failed == {}
    rows = list(csv.DictReader((spec.out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["elbo", "elbo"]
    assert not any((spec.out / "runs" / i).exists() for i in ids["udm"])


@pytest.mark.slow
def test_tiny_grid_through_dflow_ablate_processes(grid_file, tmp_path):
    out = tmp_path / "processes"
    assert main([str(grid_file), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and (out / "acc_vs_compute.png").is_file()
    before = _snapshot(out)
    assert main([str(grid_file), "--out", str(out)]) == 0
    assert _snapshot(out) == before
