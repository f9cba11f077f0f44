"""One policy-gradient update, independent of Lightning: units, old/reference values, minibatch losses.

The RLModule calls :meth:`PolicyUpdate.prepare` once per rollout batch and :meth:`PolicyUpdate.loss`
once per mini-batch of every inner epoch; the optimiser step stays with the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dflow.rl.advantages import Advantages
from dflow.rl.aggregation import LossAggregation, SampleMeanAggregation
from dflow.rl.kl import KLPenalty
from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan
from dflow.rl.objectives import Objective
from dflow.rng import draw_device
from dflow.sampling import Sampler, Trajectory


@dataclass
class Compute:
    """Denoiser work, in passes over one sample (compute accounting for equal-budget comparisons).

    ``tokens`` counts input positions processed (forward passes x sequence length incl. prompt).
    ``fwd_equiv`` weighs a backward pass as two forward passes.
    """

    forward: int = 0
    backward: int = 0
    tokens: int = 0

    def add(self, forward: int = 0, backward: int = 0, tokens_per_pass: int = 0) -> None:
        self.forward += forward
        self.backward += backward
        self.tokens += (forward + backward) * tokens_per_pass

    @property
    def fwd_equiv(self) -> int:
        return self.forward + 2 * self.backward


@dataclass
class PreparedBatch:
    """A rollout batch made ready for the inner epochs.

    Attributes:
        traj: the rollouts (``B = P * G``).
        plan: the units' random choices (shared by theta, old, reference).
        advantages: ``[B]`` or ``[B, U]`` advantage per unit.
        old_logp: ``[B, U]`` old-policy units, computed once before the first optimiser step and
            frozen for every inner epoch, or None when the update is a single on-policy mini-batch
            (then ``logp.detach()`` is the old value and the ratio is exactly 1).
        ref_logp: ``[B, U]`` reference units, or None without a KL penalty.
        mask: bool ``[B, U]`` units that count (per-token units of tokens that cannot move are
            left out), or None (all count).
    """

    traj: Trajectory
    plan: UnitPlan
    advantages: Tensor
    old_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    mask: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class LossOutput:
    loss: Tensor  # scalar with grad
    stats: dict[str, float]


class PolicyUpdate:
    """Ties a likelihood estimator, an objective, a KL penalty and a loss aggregation together."""

    def __init__(
        self,
        likelihood: LikelihoodEstimator,
        objective: Objective,
        kl: KLPenalty | None = None,
        aggregation: LossAggregation | None = None,
        num_inner_epochs: int = 1,
        minibatch_size: int | None = None,
    ) -> None:
        if num_inner_epochs < 1:
            raise ValueError(f"num_inner_epochs must be >= 1, got num_inner_epochs={num_inner_epochs}")
        if minibatch_size is not None and minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1 or None, got minibatch_size={minibatch_size}")
        kind, accepted = getattr(likelihood, "unit_kind", "log_prob"), getattr(objective, "unit_kinds", ("log_prob",))
        if kind not in accepted:
            raise ValueError(
                f"{type(objective).__name__} takes units of kind {accepted}, but {type(likelihood).__name__} gives "
                f"{kind!r} units; pair SandwichedBounds with SandwichedObjective (SPG)"
            )
        self.likelihood = likelihood
        self.objective = objective
        self.kl = kl if kl is not None else KLPenalty(beta=0.0)
        self.aggregation = aggregation if aggregation is not None else SampleMeanAggregation()
        self.num_inner_epochs = num_inner_epochs
        self.minibatch_size = minibatch_size

    def check_advantages(self, per_step: bool) -> None:
        if per_step and not self.likelihood.per_step:
            raise ValueError(
                f"a per-step advantage estimator needs per-step likelihood units, but "
                f"{type(self.likelihood).__name__} scores the final sample; use TrajectoryLikelihood or "
                "IntermediateActionLikelihood, or a per-sample advantage such as GroupAdvantage"
            )

    def _minibatch_size(self, batch_size: int, group_size: int) -> int:
        mb = batch_size if self.minibatch_size is None else self.minibatch_size
        if mb % group_size or batch_size % mb:
            raise ValueError(
                f"minibatch_size={mb} must be a multiple of group_size={group_size} and divide the batch "
                f"of {batch_size} rollouts"
            )
        return mb

    def minibatches(self, batch_size: int, group_size: int, generator: torch.Generator | None) -> list[Tensor]:
        """Index sets of one inner epoch: whole prompt groups, shuffled, ``minibatch_size`` samples each."""
        mb = self._minibatch_size(batch_size, group_size)
        if mb == batch_size:
            return [torch.arange(batch_size)]
        groups = torch.randperm(batch_size // group_size, generator=generator, device=draw_device(generator)).cpu()
        order = (groups[:, None] * group_size + torch.arange(group_size)).flatten()
        return list(order.split(mb))

    def single_pass(self, batch_size: int) -> bool:
        mb = batch_size if self.minibatch_size is None else self.minibatch_size
        return self.num_inner_epochs == 1 and mb == batch_size

    def _units(self, policy, traj: Trajectory, plan: UnitPlan, sampler: Sampler, chunks: list[Tensor]) -> Tensor:
        # float32 whatever the default dtype (``precision: bf16-true`` makes it bfloat16 inside a step)
        out = torch.empty(
            traj.batch_size, self.likelihood.num_units(traj, plan), dtype=torch.float32, device=traj.x1.device
        )
        for idx in chunks:
            out[idx] = self.likelihood.log_probs(policy, traj.select(idx), plan.select(idx), sampler).float()
        return out

    @torch.no_grad()
    def prepare(
        self,
        policy,
        reference,
        traj: Trajectory,
        advantages: Advantages,
        sampler: Sampler,
        group_size: int,
        compute: Compute,
        generator: torch.Generator | None = None,
    ) -> PreparedBatch:
        """Plan the units and compute the old and reference values they need (no gradient)."""
        plan = self.likelihood.plan(traj, sampler, generator)
        adv = advantages.values
        if advantages.per_step:
            # the unit of sampler step k gets the advantage of step k (column k of [B, K])
            adv = self.likelihood.expand(adv[:, plan.steps], traj)  # [B, U]
        B, U = traj.batch_size, plan.num_units
        mb = self._minibatch_size(B, group_size)
        # Old and reference units are computed in chunks of the loss's mini-batch size: a denoiser's
        # output for one row can change in the last bit with the batch size (matmul kernels are
        # picked by shape), so only equal shapes give the exact on-policy ratio of 1.
        chunks = list(torch.arange(B, device=traj.x1.device).split(mb))
        passes = B * U * self.likelihood.passes_per_unit(sampler, traj)
        tokens = traj.x1.shape[1] + (traj.cond.shape[1] if torch.is_tensor(traj.cond) else 0)
        old = None
        if not self.single_pass(B):
            # values recorded during the rollout are exact only when the loss scores batches of the
            # size the rollout ran at
            old = self.likelihood.recorded_log_probs(traj, plan, sampler) if mb == traj.rollout_batch_size else None
            if old is None:  # recompute once, before any update, on the same draws
                old = self._units(policy, traj, plan, sampler, chunks)
                compute.add(forward=passes, tokens_per_pass=tokens)
        ref = None
        if self.kl.enabled:
            if reference is None:
                raise ValueError("the KL penalty has beta > 0 but no reference model was built")
            ref = self._units(reference, traj, plan, sampler, chunks)
            compute.add(forward=passes, tokens_per_pass=tokens)
        mask = self.likelihood.unit_mask(traj, plan, sampler)
        return PreparedBatch(traj=traj, plan=plan, advantages=adv, old_logp=old, ref_logp=ref, mask=mask)

    def loss(self, policy, batch: PreparedBatch, index: Tensor, sampler: Sampler, compute: Compute) -> LossOutput:
        """Objective (+ KL) on the mini-batch ``index``, aggregated to a scalar."""
        traj, plan = batch.traj.select(index), batch.plan.select(index)
        # float32 like the old and reference values (recorded or recomputed): a float64 policy's units
        # are rounded the same way, so the first mini-batch's ratio is exactly 1 (the gradient flows
        # back through the cast)
        logp = self.likelihood.log_probs(policy, traj, plan, sampler).float()  # [b, U] with grad
        old = logp.detach() if batch.old_logp is None else batch.old_logp[index].to(logp)
        mask = None if batch.mask is None else batch.mask[index]
        out = self.objective(logp, old, batch.advantages[index].to(logp), mask)
        unit_loss = out.loss
        stats: dict[str, float] = {}
        valid = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask
        if batch.ref_logp is not None:
            kl = self.kl(logp, batch.ref_logp[index].to(logp), mask)  # [b, U], beta * kl (penalty added to the loss)
            unit_loss = unit_loss + kl
            stats["kl"] = (kl.detach().sum() / valid.sum().clamp_min(1) / self.kl.beta).item()
        loss = self.aggregation(unit_loss, mask)
        b = logp.shape[0]
        passes = b * plan.num_units * self.likelihood.passes_per_unit(sampler, batch.traj)
        tokens = traj.x1.shape[1] + (traj.cond.shape[1] if torch.is_tensor(traj.cond) else 0)
        compute.add(forward=passes, backward=passes, tokens_per_pass=tokens)
        ratio = out.ratio[valid]
        stats.update(
            {
                "ratio_mean": ratio.mean().item(),
                "ratio_min": ratio.min().item(),
                "ratio_max": ratio.max().item(),
                "clip_frac": out.clipped[valid].float().mean().item(),
                "logp_mean": logp.detach()[valid].mean().item(),
            }
        )
        return LossOutput(loss=loss, stats=stats)
