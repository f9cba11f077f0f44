"""Two CPU processes (Lightning DDP, gloo) match one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(devices: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=WORKER.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_process_ddp_matches_one_process(tmp_path):
    one = run_worker(1, tmp_path / "one.pt")
    two = run_worker(2, tmp_path / "two.pt")
    # Groups never split: each rank rolled out whole prompts (G copies made on the rank), and the two
    # ranks together saw exactly the single process's prompts at every step.
    single = one["batches"]  # [steps, 4]
    ranks = two["batches"]  # [2, steps, 2]
    for step, prompts in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(prompts)
    # Same rollouts (seeded per prompt), gradients averaged over ranks == mean over the global batch:
    # weights agree up to float summation order. Tolerance 1e-5 (float32, lr 1e-2, two Adam steps).
    for name, p in one["state"].items():
        torch.testing.assert_close(two["state"][name], p, rtol=1e-5, atol=1e-5, msg=name)
    rank0 = torch.load(f"{tmp_path / 'two.pt'}.rank0", weights_only=True)
    rank1 = torch.load(f"{tmp_path / 'two.pt'}.rank1", weights_only=True)
    for name, p in rank0.items():  # DDP kept the replicas identical
        assert torch.equal(p, rank1[name]), name
    # The logged reward is reduced across ranks: the mean over both ranks equals the single run's.
    assert abs(two["reward"] - one["reward"]) < 1e-6
