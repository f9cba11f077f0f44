"""Per-step estimators: one unit per chosen sampler step of the stored backward trajectory."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan, noised_positions, score_tokens
from dflow.rl.likelihood.steps import AllSteps, StepSelection
from dflow.sampling import Sampler, Trajectory


class TrajectoryLikelihood(LikelihoodEstimator):
    """dFlowGRPO: unit ``k`` = ``log P_theta(x_{t_{k+1}} | x_{t_k})``, the exact step kernel of the sampler.

    Args:
        steps: which steps are trained (``AllSteps``, ``AllButLast``, ``StepWindow``, ``RandomSteps``).
        token_mean: divide by ``L`` (dFlowGRPO's per-step ratio is the geometric mean over tokens).
    """

    per_step = True

    def __init__(self, steps: StepSelection | None = None, token_mean: bool = False) -> None:
        self.steps = steps if steps is not None else AllSteps()
        self.token_mean = token_mean

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        return UnitPlan(steps=self.steps.select(traj.num_steps, generator))

    def _scale(self, lp: Tensor, traj: Trajectory) -> Tensor:
        return lp / traj.x1.shape[1] if self.token_mean else lp

    def log_probs(self, policy, traj, plan, sampler) -> Tensor:
        return self._scale(sampler.log_probs(policy, traj, plan.steps), traj)

    def recorded_log_probs(self, traj, plan) -> Tensor:
        return self._scale(traj.log_probs[:, plan.steps], traj)

    def passes_per_unit(self, sampler, traj) -> int:
        return 2 if sampler.uses_guidance(traj.cond) else 1


class IntermediateActionLikelihood(LikelihoodEstimator):
    """Naive GRPO on uniform diffusion: unit ``k`` = ``log p_theta(xhat_1^k | state_k)``, the posterior
    draw taken at step ``k`` scored as the action.

    ``states="backward"`` scores it at the stored rollout state ``x_{t_k}`` (the naive baseline);
    ``"forward"`` at ``xtilde ~ q(. | x_1)`` re-noised to ``t_k`` (a cell of UDM-GRPO's 2x2 ablation).
    The score uses the sampler's guided, tempered posterior, i.e. the distribution the draw came from.
    """

    per_step = True
    needs_draws = True

    def __init__(
        self,
        steps: StepSelection | None = None,
        states: Literal["backward", "forward"] = "backward",
        token_mean: bool = True,
    ) -> None:
        if states not in ("backward", "forward"):
            raise ValueError(f"IntermediateActionLikelihood: states must be 'backward' or 'forward', got {states!r}")
        self.steps = steps if steps is not None else AllSteps()
        self.states = states
        self.token_mean = token_mean

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        steps = self.steps.select(traj.num_steps, generator)
        if self.states == "backward":
            return UnitPlan(steps=steps)
        B = traj.batch_size
        noised = [sampler.path.sample_xt(traj.x1, traj.times[k].expand(B), generator) for k in steps]
        return UnitPlan(steps=steps, states=torch.stack(noised).to(traj.states.dtype))

    def log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        for u, k in enumerate(plan.steps):
            x_in = traj.state(k) if plan.states is None else plan.states[u].long()
            t = traj.times[k].expand(x_in.shape[0])
            logits = sampler.logits(policy, x_in, t, traj.cond)
            out.append(score_tokens(logits, traj.draws[k].long(), None, self.token_mean))
        return torch.stack(out, dim=1)

    def passes_per_unit(self, sampler, traj) -> int:
        return 2 if sampler.uses_guidance(traj.cond) else 1
