"""Evaluate a denoiser on a task's prompts: strict per-category accuracy, mean reward, a sample grid.

One function, :func:`evaluate`, scores a model everywhere (RL evaluations, ``dflow sample``, the
benchmark scripts), and one, :func:`evaluation_prompts`, chooses what it samples: the same model,
prompts, sampler, batch size and seed give the same numbers whoever asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dflow.rewards.base import WeightedRewards
from dflow.sampling import Sampler
from dflow.tasks.base import Prompt, Task


@dataclass
class EvalResult:
    """Attributes:
    metrics: ``{"acc/<category>": float, "acc/overall": float, "reward": float}``, ``reward`` the
        task's partial-credit reward (the mean over samples); the task's extra metrics
        (:meth:`~dflow.tasks.base.Task.extra_metrics`, e.g. sudoku's pooled blank-cell accuracy
        ``"cells/<category>"``, ``"cells/overall"``); with ``rewards`` also ``"reward/<name>"`` per
        reward term and ``"reward/total"``, the weighted sum RL maximises.
    x1: long ``[N, L]`` the samples, in prompt order.
    """

    metrics: dict[str, float]
    x1: Tensor


EVAL_SEED = 1234  # the noise of every evaluation unless a caller chooses another
EVAL_BATCH_SIZE = 64


@torch.no_grad()
def evaluate(
    policy,
    task: Task,
    sampler: Sampler,
    prompts: Sequence[Prompt],
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = EVAL_SEED,
    device: torch.device | str = "cpu",
    samples_per_prompt: int = 1,
    rewards: WeightedRewards | None = None,
) -> EvalResult:
    """Sample each prompt ``samples_per_prompt`` times with ``sampler`` in batches of ``batch_size``,
    from one generator seeded with ``seed`` (the same noise for every model compared; the noise, and
    so the numbers, depend on the batch size too). Several samples per prompt, as GenEval's 4, keep
    categories with few test prompts from swinging between 0 and 1 (see :func:`evaluation_prompts`).
    ``rewards`` (an RL run's own reward terms) adds their means to the metrics."""
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got samples_per_prompt={samples_per_prompt}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got batch_size={batch_size!r}")
    prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    gen = torch.Generator(device=device).manual_seed(seed)
    metric, extra = task.metric(), task.extra_metrics()
    task_rewards, samples, records = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        cond = task.encode_prompts(chunk).to(device)
        traj = sampler.rollout(policy, cond, batch_size=len(chunk), seq_len=task.seq_len, generator=gen, device=device)
        x1 = traj.x1.cpu()  # one device-to-host copy per chunk, shared by every score below
        metric.update(task.correct(x1, chunk), chunk)
        for m in extra:
            m.update(x1, chunk)
        task_rewards.append(task.reward(x1, chunk))
        if rewards is not None:
            records.append(rewards(x1, chunk))
        samples.append(x1)
    values = {k: float(v) for k, v in metric.compute().items()}
    for m in extra:
        values.update({k: float(v) for k, v in m.compute().items()})
    values["reward"] = float(torch.cat(task_rewards).mean())
    if records:
        for name in records[0].components:
            values[f"reward/{name}"] = float(torch.cat([r.components[name] for r in records]).mean())
        values["reward/total"] = float(torch.cat([r.total for r in records]).mean())
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


def evaluation_prompts(
    prompts: Sequence[Prompt],
    num_prompts: int | None = None,
    samples_per_prompt: int = 1,
    samples_per_category: int | None = None,
) -> list[Prompt]:
    """What an evaluation samples, one entry per sample: ``num_prompts`` of ``prompts`` taken
    round-robin over the categories (all when None), then either each ``samples_per_prompt`` times
    in a row, or (``samples_per_category``) exactly that many entries per category, its prompts cycled.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got samples_per_prompt={samples_per_prompt}")
    chosen = list(prompts) if num_prompts is None else spread_prompts(prompts, num_prompts)
    if samples_per_category is not None:
        return balanced_prompts(chosen, samples_per_category)
    return [p for p in chosen for _ in range(samples_per_prompt)]


def write_grid(task: Task, x1: Tensor, prompts: Sequence[Prompt], path: str | Path, ncol: int = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return task.render(x1, prompts, path, ncol=ncol)
