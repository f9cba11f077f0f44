"""One RL step's logged row (dflow.lightning.rl_logs), worked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dflow.lightning.rl_logs import aggregate, compute_logs, step_logs
from dflow.rl.update import Compute


def test_ratio_extremes_over_inner_updates_and_means_of_the_rest() -> None:
    # ratio_min / ratio_max report how far any inner update moved a ratio: the mean would hide it
    assert aggregate("ratio_min", [1.0, 0.7, 0.9]) == 0.7
    assert aggregate("ratio_max", [1.0, 1.4, 1.1]) == 1.4
    assert aggregate("kl", [0.1, 0.2, 0.6]) == pytest.approx(0.3)


def test_step_row_by_hand() -> None:
    record = SimpleNamespace(total=torch.tensor([1.0, 0.0, 0.5, 0.5]), components={"fmt": torch.tensor([1, 1, 0, 0])})
    traj = SimpleNamespace(log_probs=torch.tensor([[-1.0, -1.0], [-2.0, 0.0], [0.0, 0.0], [-3.0, -1.0]]))
    compute = Compute()
    compute.add(forward=10, tokens_per_pass=4)
    row = step_logs(
        record,
        correct=torch.tensor([1.0, 0.0, 0.0, 0.0]),
        traj=traj,
        seq_len=2,
        grad_norms=[2.0, 4.0],
        lr=1e-4,
        rl_step=7,
        adv_stats={"frac_zero_std_groups": 0.5},
        stats={"ratio_max": [1.0, 1.2], "loss": [0.5, 1.5]},
        times={"rollout": 0.25},
        compute=compute,
    )
    assert row["train/reward"] == pytest.approx(0.5)
    assert row["train/reward_std"] == pytest.approx(torch.tensor([1.0, 0.0, 0.5, 0.5]).std().item())
    assert row["train/acc"] == 0.25
    assert row["train/entropy"] == pytest.approx((2 + 2 + 0 + 4) / 4 / 2)  # per token
    assert row["train/grad_norm"] == 3.0 and row["train/lr"] == 1e-4 and row["train/rl_step"] == 7.0
    assert row["reward/fmt"] == 0.5 and row["adv/frac_zero_std_groups"] == 0.5
    assert row["train/ratio_max"] == 1.2 and row["train/loss"] == 1.0 and row["time/rollout"] == 0.25
    assert {k: v for k, v in row.items() if k.startswith("compute/")} == compute_logs(compute)
    assert row["compute/forward"] == 10.0 and row["compute/tokens"] == 40.0
