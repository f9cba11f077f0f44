"""SIGTERM during `dflow fit`: the step finishes, last.ckpt is saved, the process exits cleanly, and
`--ckpt_path last` resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--model.init_args.denoiser=dflow.lightning.TransformerDenoiser",
    "--model.init_args.denoiser.init_args.hidden_size=16",
    "--model.init_args.denoiser.init_args.num_layers=1",
    "--model.init_args.denoiser.init_args.num_heads=2",
    "--model.init_args.evaluation.every_n_steps=0",
    "--data.init_args.prompts_per_step=2",
    "--model.init_args.rollout.num_steps=3",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.rewards=[{source: test_graceful_shutdown:marked_reward}]",
]


def marked_reward(x1: torch.Tensor, prompts) -> torch.Tensor:
    """A varying reward that also tells the test a training step is under way."""
    Path(os.environ["DFLOW_TEST_MARKER"]).touch()
    return (x1 == 1).float().mean(-1)


def fit(tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "DFLOW_TEST_MARKER": str(tmp_path / "marker")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dflow.cli",
            "fit",
            "--config",
            str(ROOT / "recipes/shapes/udm_grpo.yaml"),
            *TINY,
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_saves_last_checkpoint_and_resume_continues(tmp_path):
    proc = fit(tmp_path, "--trainer.max_steps=1000")
    deadline = time.time() + 240
    while not (tmp_path / "marker").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no training step started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received" in out
    last = tmp_path / "runs/shapes_udm_grpo/version_0/checkpoints/last.ckpt"  # the run's own folder
    ckpt = torch.load(last, weights_only=False)
    stopped_at = ckpt["global_step"]
    assert 1 <= stopped_at < 1000
    resumed = fit(tmp_path, f"--trainer.max_steps={stopped_at + 1}", "--ckpt_path=last")
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out[-3000:]
    # the resumed invocation continues in the run's own version folder; its step is numbered after the
    # interrupted run's, one more RL step
    versions = sorted((tmp_path / "runs/shapes_udm_grpo").glob("version_*"))
    assert [v.name for v in versions] == ["version_0"]
    steps = [
        int(line.split(",")[header_index(versions[0], "step")])
        for line in (versions[0] / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert steps[-1] == stopped_at and steps.count(stopped_at) == 1


def header_index(version: Path, column: str) -> int:
    return (version / "metrics.csv").read_text().splitlines()[0].split(",").index(column)
