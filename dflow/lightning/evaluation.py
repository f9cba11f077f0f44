"""Evaluate a denoiser on a task's prompts: strict per-category accuracy, mean reward, a sample grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dflow.sampling import Sampler
from dflow.tasks.base import Prompt, Task


@dataclass
class EvalResult:
    """Attributes:
    metrics: ``{"acc/<category>": float, "acc/overall": float, "reward": float}``.
    x1: long ``[N, L]`` the samples, in prompt order.
    """

    metrics: dict[str, float]
    x1: Tensor


@torch.no_grad()
def evaluate(
    policy,
    task: Task,
    sampler: Sampler,
    prompts: Sequence[Prompt],
    batch_size: int = 64,
    seed: int = 1234,
    device: torch.device | str = "cpu",
    samples_per_prompt: int = 1,
) -> EvalResult:
    """Sample each prompt ``samples_per_prompt`` times with ``sampler`` (fixed ``seed``: the same noise
    for every model compared). Several samples per prompt, as GenEval's 4, keep categories with few
    test prompts from swinging between 0 and 1."""
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got samples_per_prompt={samples_per_prompt}")
    prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    gen = torch.Generator(device=device).manual_seed(seed)
    metric = task.metric()
    rewards, samples = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        cond = task.encode_prompts(chunk).to(device)
        traj = sampler.rollout(policy, cond, batch_size=len(chunk), seq_len=task.seq_len, generator=gen, device=device)
        metric.update(task.correct(traj.x1.cpu(), chunk), chunk)
        rewards.append(task.reward(traj.x1.cpu(), chunk))
        samples.append(traj.x1.cpu())
    values = {k: float(v) for k, v in metric.compute().items()}
    values["reward"] = float(torch.cat(rewards).mean())
    return EvalResult(metrics=values, x1=torch.cat(samples))


def by_category(prompts: Sequence[Prompt]) -> dict[str, list[Prompt]]:
    """Prompts grouped by category, categories and prompts in first-seen order."""
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    return groups


def spread_prompts(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """``n`` prompts taken round-robin over categories (a grid that shows every category)."""
    by_cat = by_category(prompts)
    out: list[Prompt] = []
    i = 0
    while len(out) < min(n, len(prompts)):
        for cat in by_cat.values():
            if i < len(cat) and len(out) < n:
                out.append(cat[i])
        i += 1
    return out


def balanced_prompts(prompts: Sequence[Prompt], per_category: int) -> list[Prompt]:
    """Exactly ``per_category`` entries for every category: its prompts cycled in order.

    The category mean (GenEval's overall score) is only as precise as its noisiest category; with a
    fixed number of samples per prompt a category of 1 test prompt gets 4 samples and one of 60
    gets 240. Equal counts give every category the same standard error (at most 0.5/sqrt(n)).
    """
    if per_category < 1:
        raise ValueError(f"samples per category must be >= 1, got per_category={per_category}")
    return [cat[i % len(cat)] for cat in by_category(prompts).values() for i in range(per_category)]


def write_grid(task: Task, x1: Tensor, prompts: Sequence[Prompt], path: str | Path, ncol: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return task.render(x1, prompts, path, ncol=ncol)
