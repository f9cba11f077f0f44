"""Shared check of an embedded base (dflow/assets/<name>): small, its meta names the task and the
source, and ``dflow sample`` scores it from that meta alone; the per-task tests then check the band."""

from __future__ import annotations

import json
from pathlib import Path

from dflow import cli

ROOT = Path(__file__).resolve().parents[1]


def sample_embedded_base(
    name: str, task_name: str, source: str, tmp_path: Path, monkeypatch, task_args: dict | None = None
) -> dict:
    """``dflow sample`` of 48 test prompts x 1 sample at 16 steps, guidance 1; returns its JSON report.

    ``task_args``: task arguments the meta must carry (``dflow sample`` rebuilds the task from them)."""
    folder = ROOT / "dflow" / "assets" / name
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 3e6, f"{name} is {size / 1e6:.1f} MB; embedded bases must stay small"
    meta = json.loads((folder / "dflow_meta.json").read_text())
    assert meta["task_name"] == task_name
    assert meta["path"]["init_args"]["source"]["class_path"].endswith(source)
    for key, value in (task_args or {}).items():
        assert meta["task"]["init_args"][key] == value, f"{name}: task {key}"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    report = tmp_path / "report.json"
    args = ["sample", "--checkpoint", str(folder), "--out", str(tmp_path / "grid.png"), "--prompts", "48"]
    assert cli.main([*args, "--steps", "16", "--guidance", "1", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["n"] == 48
    return result
