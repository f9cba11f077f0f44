"""Two CPU processes (Lightning DDP, or FSDP2 through ModelParallelStrategy; gloo) match one process
with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(devices: int, out: Path, strategy: str = "ddp") -> dict:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(devices), str(out), strategy],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=WORKER.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict:
    """The single-process run both strategies are compared with."""
    return run_worker(1, tmp_path_factory.mktemp("one") / "one.pt")


def test_two_process_ddp_matches_one_process(one, tmp_path):
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


def test_two_process_fsdp2_resumed_matches_one_process(one, tmp_path):
    """FSDP2 (ModelParallelStrategy): every weight, gradient and optimiser state is split over the two
    ranks, and so is the frozen KL reference. The sharded run trains one step, writes a checkpoint,
    and a fresh module resumes it for the second step. Every step clips (norm ~0.08 > 1e-3), so the
    clipping factor must come from the norm over both ranks' shards: with one rank's own shards
    (planted in dflow.lightning.rl_inner.clip_gradients) the weights differ from the single run. Measured: the
    resumed run equals an uninterrupted sharded one exactly (max difference 0.0)."""
    two = run_worker(2, tmp_path / "two.pt", "fsdp-resume")
    assert float(two["grad_norm"]) > 1e-3  # the limit in ddp_worker: clipping was active
    torch.testing.assert_close(two["grad_norm"], one["grad_norm"], rtol=1e-5, atol=1e-7)
    for name, p in one["state"].items():
        torch.testing.assert_close(two["state"][name], p, rtol=1e-5, atol=1e-5, msg=name)
    rank0 = torch.load(f"{tmp_path / 'two.pt'}.rank0", weights_only=True)
    rank1 = torch.load(f"{tmp_path / 'two.pt'}.rank1", weights_only=True)
    for name, p in rank0.items():  # the gathered weights are the same model on both ranks
        assert torch.equal(p, rank1[name]), name
    assert abs(two["reward"] - one["reward"]) < 1e-6
