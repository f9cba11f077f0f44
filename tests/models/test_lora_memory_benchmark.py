"""benchmarks/lora_memory.py: with LoRA one RL update holds no reference copy, gradients and AdamW
state for the adapters only, and a lower peak, for the same reference values (memory only, never time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "lora_memory.py"


def _load():
    spec = importlib.util.spec_from_file_location("lora_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_holds_the_adapters_only(monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "write_block", lambda text: None)
    result = bench.main(["--quick"])  # raises if the two references disagree
    full, lora = result["full"], result["lora"]
    assert full.reference == 4 * full.total and lora.reference == 0  # float32 deep copy vs adapters off
    assert full.trainable == full.total and lora.total == full.total + lora.trainable
    assert lora.grads == 4 * lora.trainable and full.grads == 4 * full.trainable
    # AdamW: two float32 moments per trainable scalar and a step counter per tensor
    assert 8 * lora.trainable <= lora.optimiser_state < 8 * lora.trainable + 1024
    assert lora.weight_side < 0.15 * full.weight_side and lora.peak < full.peak
    text = bench.render(result, "python benchmarks/lora_memory.py")
    assert text.startswith(bench.BEGIN) and text.endswith(bench.END) and "LoRA / full" in text
