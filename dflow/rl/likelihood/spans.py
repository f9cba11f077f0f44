"""Trajectory-aware spans (TraceRL's "trajectory shrinkage", Wang et al. 2025): the steps the sampler
took, grouped into spans of consecutive steps, each span scored in one forward pass."""

from __future__ import annotations

import torch
from torch import Tensor

from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan, counted_tokens, stack_masks
from dflow.sampling import BlockSampler, Sampler, Trajectory


class SpanLikelihood(LikelihoodEstimator):
    """Unit ``j`` = ``log P_theta(x_{t_e} | x_{t_b})`` for the span of sampler steps ``b .. e - 1``
    (``b = j span``, ``e = min(b + span, K)``): the path's own step kernel for one coarse step from
    ``t_b`` to ``t_e``, with the sampler's guided, tempered posterior at the stored state
    ``x_{t_b}``, so one pass scores every token the sampler settled during the span.

    Per token (mixture path): a token revealed in the span contributes ``log lam + log
    p_theta(x_1^i | x_{t_b})`` (``lam`` the chance of a jump over the span: a constant), which is
    TraceRL's term for the tokens decoded in a span, scored at the state the span started from; a
    token that stays masked contributes ``log(1 - lam)``, free of ``theta``, and is not counted. A
    uniform source has no "revealed": every token's coarse transition ``log[(1 - lam) [x_e = x_b] +
    lam p_theta(x_e)]`` counts (our analogue; TraceRL is masked only). ``span=1`` is
    :class:`TrajectoryLikelihood` over all steps, token for token.

    The coarse kernel is not what the sampler drew from (it took ``span`` finer steps, each with a
    fresher posterior), so a span's unit is TraceRL's surrogate, not the recorded log-probability:
    old values are recomputed, never read from the rollout.

    On block rollouts (:class:`~dflow.sampling.BlockSampler`) a span stays inside one block (``span``
    must divide the steps per block): the coarse kernel runs on the block's positions with the
    block-local times, from the block policy's posterior at ``x_{t_b}``
    (:meth:`~dflow.sampling.BlockSampler.span_token_log_probs`), and only the block's tokens count.

    Args:
        span: consecutive sampler steps per unit (TraceRL's ``shrink``; 8 of 512 steps for LLaDA).
        token_mean / per_token: see :class:`~dflow.rl.likelihood.base.LikelihoodEstimator`
            (TraceRL: one clipped unit per token).
    """

    def __init__(self, span: int = 2, token_mean: bool = False, per_token: bool = False) -> None:
        if isinstance(span, bool) or not isinstance(span, int) or span < 1:
            raise ValueError(f"SpanLikelihood: span must be an int >= 1 (sampler steps per unit), got span={span!r}")
        self.span, self.token_mean, self.per_token = span, token_mean, per_token

    def _bounds(self, traj: Trajectory, plan: UnitPlan) -> list[tuple[int, int]]:
        assert plan.steps is not None
        K = traj.num_steps
        return [(b, min(b + self.span, K)) for b in plan.steps]

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        return UnitPlan(steps=list(range(0, traj.num_steps, self.span)))  # the first step of each span

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        if isinstance(sampler, BlockSampler) and sampler.steps_per_block % self.span:
            raise ValueError(
                f"SpanLikelihood(span={self.span}) on block rollouts: a span must not cross a block, so span "
                f"must divide the steps per block (rollout.num_steps={sampler.steps_per_block})"
            )

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        if isinstance(sampler, BlockSampler):  # one coarse kernel step inside the span's block
            return sampler.span_token_log_probs(policy, traj, self._bounds(traj, plan))
        out, times = [], traj.times
        for b, e in self._bounds(traj, plan):
            x_b, x_e = traj.state(b), traj.state(e)
            B = x_b.shape[0]
            t, s = times[b].expand(B), times[e].expand(B)
            logits = sampler.logits(policy, x_b, t, traj.cond)  # [B, L, V]
            out.append(sampler.path.step_log_prob(logits, x_b, x_e, t, s))  # [B, L]
        return torch.stack(out, dim=1)  # [B, U, L]

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        """Counted: tokens that can move at ``x_{t_b}`` and end the span on a data value (a token
        still masked at ``x_{t_e}`` has a ``theta``-free term)."""
        V, masks = sampler.path.vocab_size, []
        for b, e in self._bounds(traj, plan):
            movable = counted_tokens(sampler.path, traj.state(b))
            counted = traj.state(e) < V
            if isinstance(sampler, BlockSampler):  # a block span moves its own block only
                counted = counted & sampler.block_positions(b, counted.shape[1], counted.device)
            masks.append(counted if movable is None else movable & counted)
        if all(bool(m.all()) for m in masks):
            return None
        return stack_masks(masks, traj.x1)

    def passes_per_unit(self, sampler: Sampler, traj: Trajectory) -> int:
        return 2 if sampler.uses_guidance(traj.cond) else 1
