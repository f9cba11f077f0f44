"""benchmarks/checkpoint_memory.py: the profiler's numbers agree with autograd's saved tensors, and
checkpointing keeps less after the forward pass for the same gradients (memory only, never time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoint_memory.py"


def _load():
    spec = importlib.util.spec_from_file_location("checkpoint_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_measures_tensors_and_checkpointing_keeps_less(monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "write_block", lambda text: None)  # --quick prints only; make sure
    result = bench.main(["--quick"])
    plain, ckpt = result["plain"], result["checkpointed"]
    assert result["max_grad_diff"] == 0.0  # same gradients
    # the profiler's total before backward = autograd's saved storages + logits [2, 64, 32] + loss (a few bytes)
    logits = 2 * 64 * 32 * 4
    assert 0 <= plain.after_forward - result["saved_for_backward"] - logits < 1024
    assert ckpt.after_forward < 0.5 * plain.after_forward
    assert ckpt.peak < plain.peak
    text = bench.render(result, "python benchmarks/checkpoint_memory.py")
    assert text.startswith(bench.BEGIN) and text.endswith(bench.END) and "| ratio |" in text
