"""What one RL step logs: ``train/*`` (reward, accuracy, entropy, gradient norm, lr, the objective's
per-mini-batch statistics), ``reward/*`` per reward term, ``adv/*``, ``time/*`` and ``compute/*``
(forward, backward, tokens and forward-pass equivalents so far: the x-axis of equal-compute plots)."""

from __future__ import annotations

from torch import Tensor

from dflow.rl.update import Compute


def compute_logs(compute: Compute) -> dict[str, float]:
    """``compute/*``: the passes spent so far."""
    return {
        "compute/forward": float(compute.forward),
        "compute/backward": float(compute.backward),
        "compute/tokens": float(compute.tokens),
        "compute/fwd_equiv": float(compute.fwd_equiv),
    }


def aggregate(name: str, values: list[float]) -> float:
    """One RL step's value of a per-mini-batch statistic: the extreme of ``ratio_min`` / ``ratio_max``
    (how far any inner update moved a ratio), the mean of the others."""
    if name == "ratio_min":
        return min(values)
    if name == "ratio_max":
        return max(values)
    return sum(values) / len(values)


def step_logs(
    record,
    *,
    correct: Tensor,
    traj,
    seq_len: int,
    grad_norms: list[float],
    lr: float,
    rl_step: int,
    adv_stats: dict[str, float],
    stats: dict[str, list[float]],
    times: dict[str, float],
    compute: Compute,
) -> dict[str, float]:
    """The row of RL step ``rl_step`` (1-based): ``record`` the rewards of its rollouts (``total``
    ``[B]`` and ``components``), ``correct`` ``[B]`` the task's strict verdicts, ``traj`` the rollouts
    (entropy per token from their sampled log-probabilities), ``grad_norms`` one per optimiser step."""
    B = record.total.shape[0]
    return {
        "train/reward": record.total.mean().item(),
        "train/reward_std": record.total.std().item() if B > 1 else 0.0,
        "train/acc": correct.mean().item(),
        "train/entropy": -traj.log_probs.sum(-1).mean().item() / seq_len,
        "train/grad_norm": sum(grad_norms) / len(grad_norms),
        "train/lr": lr,
        "train/rl_step": float(rl_step),
        **{f"reward/{k}": v.float().mean().item() for k, v in record.components.items()},
        **{f"adv/{k}": v for k, v in adv_stats.items()},
        **{f"train/{k}": aggregate(k, v) for k, v in stats.items()},
        **{f"time/{k}": v for k, v in times.items()},
        **compute_logs(compute),
    }
