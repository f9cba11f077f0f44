"""Per-step estimators: one unit per chosen sampler step of the stored backward trajectory."""

from __future__ import annotations

import torch
from torch import Tensor

from dflow.rl.likelihood.base import (
    LikelihoodEstimator,
    UnitPlan,
    counted_tokens,
    stack_masks,
    token_scores,
)
from dflow.rl.likelihood.states import BackwardStates, ScoredStates, check_states
from dflow.rl.likelihood.steps import AllSteps, StepSelection
from dflow.sampling import Sampler, Trajectory


class TrajectoryLikelihood(LikelihoodEstimator):
    """dFlowGRPO: unit ``k`` = ``log P_theta(x_{t_{k+1}} | x_{t_k})``, the exact step kernel of the sampler.

    Args:
        steps: which steps are trained (``AllSteps``, ``AllButLast``, ``StepWindow``, ``RandomSteps``).
        token_mean: divide by the number of tokens that can move at ``x_{t_k}`` (all ``L`` for a
            uniform source; the masked ones for a mask source): dFlowGRPO's per-step ratio is the
            geometric mean over tokens.
        per_token: one unit per token and step (``log P_theta(x^i_{t_{k+1}} | x_{t_k})``), see
            :class:`~dflow.rl.likelihood.base.LikelihoodEstimator`.
    """

    per_step = True

    def __init__(self, steps: StepSelection | None = None, token_mean: bool = False, per_token: bool = False) -> None:
        self.steps = steps if steps is not None else AllSteps()
        self.token_mean, self.per_token = token_mean, per_token

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        return UnitPlan(steps=self.steps.select(traj.num_steps, generator))

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        return sampler.token_log_probs(policy, traj, plan.steps)  # [B, U, L]

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        # the sampler says which tokens a step moves (a block sampler: only inside the step's block)
        moving = [sampler.moving_tokens(traj, k) for k in plan.steps]
        return stack_masks([None if bool(m.all()) else m for m in moving], traj.x1)

    def recorded_log_probs(self, traj, plan, sampler) -> Tensor | None:
        if self.per_token:
            return None  # the rollout records per-step sums only
        recorded = traj.log_probs[:, plan.steps]  # [B, U] sums over tokens
        if not self.token_mean:
            return recorded
        counted = torch.stack([sampler.moving_tokens(traj, k) for k in plan.steps], dim=1)  # [B, U, L]
        return recorded / counted.sum(-1).clamp_min(1).to(recorded.dtype)

    def passes_per_unit(self, sampler, traj) -> int:
        return 2 if sampler.uses_guidance(traj.cond) else 1


class IntermediateActionLikelihood(LikelihoodEstimator):
    """Naive GRPO on uniform diffusion: unit ``k`` = ``log p_theta(xhat_1^k | state_k)``, the posterior
    draw taken at step ``k`` scored as the action.

    ``states=BackwardStates()`` scores it at the stored rollout state ``x_{t_k}`` (the naive baseline);
    ``ForwardStates()`` at ``xtilde ~ q(. | x_1)`` re-noised to ``t_k`` (a cell of UDM-GRPO's 2x2 ablation).
    The score uses the sampler's guided, tempered posterior, i.e. the distribution the draw came from.
    Tokens that are certainly clean at the scored state (a mask source's revealed tokens, whose draw
    the kernel discards) are not counted.
    """

    per_step = True
    needs_draws = True

    def __init__(
        self,
        steps: StepSelection | None = None,
        states: ScoredStates | None = None,
        token_mean: bool = True,
        per_token: bool = False,
    ) -> None:
        self.steps = steps if steps is not None else AllSteps()
        self.states = check_states("IntermediateActionLikelihood", states if states is not None else BackwardStates())
        self.token_mean, self.per_token = token_mean, per_token

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        steps = self.steps.select(traj.num_steps, generator)
        idx = torch.as_tensor(steps, device=traj.times.device).expand(traj.batch_size, -1)  # [B, U]
        return UnitPlan(steps=steps, states=self.states.states(traj, sampler, idx, traj.times[idx], generator))

    @staticmethod
    def _state(traj: Trajectory, plan: UnitPlan, u: int) -> Tensor:
        assert plan.states is not None  # every plan of this estimator carries its scored states
        return plan.states[u].long()

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        for u, k in enumerate(plan.steps):
            x_in = self._state(traj, plan, u)
            logits = sampler.scoring_logits(policy, x_in, traj.times[k].expand(x_in.shape[0]), traj.cond)
            out.append(token_scores(logits, traj.draws[k].long()))
        return torch.stack(out, dim=1)  # [B, U, L]

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        return stack_masks(
            [counted_tokens(sampler.path, self._state(traj, plan, u)) for u in range(plan.num_units)], traj.x1
        )

    def passes_per_unit(self, sampler: Sampler, traj: Trajectory) -> int:
        return 2 if sampler.uses_guidance(traj.cond) else 1
