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
    assert module.main(["--device", "cpu", "--only", *methods, "--json", str(report)]) == 0
    assert report.is_file()
