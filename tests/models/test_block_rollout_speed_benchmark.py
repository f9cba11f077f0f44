"""Smoke test of benchmarks/block_rollout_speed.py at toy sizes: it runs, dflow's rollout and
``generate`` make the same network calls (else the ratio would compare different work), and it reports
what it promises. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "block_rollout_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("block_rollout_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_compares_the_same_work(capsys) -> None:
    bench = _load()
    result = bench.main(["--quick"])  # prints only; docs/benchmarks.md is not touched
    calls = result["calls"]
    # 2 canvases x 2 steps: one decoder and one head pass per step; the encoder sees the prompt and
    # each finished block (generate: also the last block, which dflow never needs)
    assert calls["dflow"]["decoder"] == calls["generate"]["decoder"] == 4
    assert calls["dflow"]["head"] == calls["generate"]["head"] == 4
    assert result["ratio"] > 0 and all(0 < s <= 1 for s in result["network_share"].values())
    out = capsys.readouterr().out
    assert bench.BEGIN in out and bench.END in out and "Ratio generate / dflow" in out
