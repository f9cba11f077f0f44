"""scripts/gpu_check.py runs on the CPU too, so that the one command kept for lent GPUs does not rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "gpu.json"
    methods = ["udm_grpo", "diffu_grpo_mask", "udm_grpo_lora"]
    assert module.main(["--device", "cpu", "--only", *methods, "--scale", "tiny", "--json", str(report)]) == 0
    assert report.is_file()


def test_scale_check_runs_tiny_on_the_cpu():
    """The GPU command's scale item (1.2B DiffusionGemma, bf16, LoRA, checkpointing, BlockSampler) on a
    model of the same code path and a few hundred thousand parameters: the first ratio is exactly 1,
    the adapters get finite gradients and the frozen base gets none."""
    pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location("scale_check", ROOT / "scripts" / "scale_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = module.scale_check(__import__("torch").device("cpu"), "tiny")
    assert row["ok"], row
    assert "first ratio 1.000000..1.000000" in row["note"]
