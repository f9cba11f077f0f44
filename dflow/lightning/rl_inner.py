"""The inner loop of one RL step: ``num_inner_epochs`` x mini-batches of loss -> backward -> clip ->
optimiser step, undone as a whole when a loss or a gradient is not finite.

Split out of :mod:`dflow.lightning.rl_module` so that what changes the weights within an RL step is
read in one place; the module keeps the rollout, the rewards and the bookkeeping around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from dflow.lightning.rl_state import restore, snapshot
from dflow.lightning.sharding import norm_value
from dflow.rl.update import Compute, PolicyUpdate, PreparedBatch
from dflow.sampling import Sampler

DIVERGED = (
    " (the update diverged: lower model.init_args.optim.lr or optim.max_grad_norm, or check that the reward and the "
    "denoiser's logits are finite)"
)


class NonFiniteStep(ValueError):
    """A loss or a gradient norm was not finite; every optimiser step of the RL step has been undone."""


@dataclass
class InnerResult:
    """Per-mini-batch objective stats (``stats[name][i]`` for optimiser step ``i``) and gradient norms."""

    stats: dict[str, list[float]]
    grad_norms: list[float]


def clip_gradients(denoiser: torch.nn.Module, max_norm: float) -> Tensor:
    """Clip the policy's gradient to ``max_norm``; returns the norm before clipping. Under FSDP2 each
    rank holds a shard of every gradient (DTensors), and ``clip_grad_norm_`` reduces the norm over
    the ranks (a norm of one rank's shards would clip by the wrong factor: tests/lightning/test_ddp.py)."""
    params = [p for p in denoiser.parameters() if p.grad is not None]
    return norm_value(torch.nn.utils.clip_grad_norm_(params, max_norm))


def optimise(
    update: PolicyUpdate,
    policy: Callable,
    denoiser: torch.nn.Module,
    opt: LightningOptimizer,
    batch: PreparedBatch,
    sampler: Sampler,
    compute: Compute,
    *,
    batch_size: int,
    group_size: int,
    generator: torch.Generator,
    max_grad_norm: float | None,
    device: torch.device,
    backward: Callable[[Tensor], None],
) -> InnerResult:
    """Run the inner loop on a prepared batch. ``policy`` is what the losses call (the denoiser or its
    compiled wrapper), ``denoiser`` the module whose weights are clipped and snapshotted, ``backward``
    Lightning's ``manual_backward``. Raises :class:`NonFiniteStep` after a non-finite loss or gradient,
    with the weights and the optimiser state as they were before the RL step."""
    schedule = [
        idx for _ in range(update.num_inner_epochs) for idx in update.minibatches(batch_size, group_size, generator)
    ]
    # With several optimiser steps per RL step, a fault in a later mini-batch must also undo the
    # earlier ones: snapshot the trainable weights and the optimiser state (three copies of them
    # with AdamW; with LoRA, of the adapters only).
    saved = snapshot(denoiser, opt.optimizer) if len(schedule) > 1 else None
    result = InnerResult({}, [])
    for i, idx in enumerate(schedule):
        out = update.loss(policy, batch, idx.to(device), sampler, compute)
        opt.zero_grad(set_to_none=True)
        fault = None if torch.isfinite(out.loss) else NonFiniteStep(f"loss is {out.loss.item()}{DIVERGED}")
        if fault is None:
            backward(out.loss)
            norm = clip_gradients(denoiser, max_grad_norm or math.inf)
            if not torch.isfinite(norm):
                fault = NonFiniteStep(f"gradient norm is {norm.item()}{DIVERGED}")
        if fault is not None:
            opt.zero_grad(set_to_none=True)
            if saved is not None and i > 0:
                restore(denoiser, opt.optimizer, saved)
            raise fault
        # Only the last optimiser step of an RL step goes through Lightning's wrapper, so that
        # trainer.global_step (max_steps, checkpoint cadence, log x-axis) counts RL steps.
        (opt.step if i == len(schedule) - 1 else opt.optimizer.step)()
        result.grad_norms.append(float(norm))
        for k, v in out.stats.items():
            result.stats.setdefault(k, []).append(v)
    return result
