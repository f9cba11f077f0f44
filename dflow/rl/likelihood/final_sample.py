"""Estimators that score the final clean sample ``x_1`` (the action) from re-noised states."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dflow.logprobs import scoring_logits
from dflow.rl.likelihood.base import (
    LikelihoodEstimator,
    UnitPlan,
    counted_tokens,
    forward_states,
    path_scoring_logits,
    stack_masks,
    token_scores,
)
from dflow.rl.likelihood.states import ForwardStates, ScoredStates, check_states
from dflow.rng import draw_device
from dflow.sampling import Sampler
from dflow.sampling.grids import time_grid


def _grid(sampler: Sampler, grid_steps: int) -> Tensor:
    """The estimator's time grid ``[grid_steps + 1]`` (same family as the rollout sampler's)."""
    return time_grid(sampler.grid_name, grid_steps, sampler.shift)


class ForwardReconstruction(LikelihoodEstimator):
    """UDM-GRPO: unit ``j`` = ``mean_i log p_theta(x_1^i | xtilde_{t_j}, c)``.

    ``states=ForwardStates()``: ``xtilde ~ q(. | x_1)`` re-noised with the pretraining forward process
    at ``num_timesteps`` consecutive times of a ``grid_steps`` grid starting at a random index in
    ``[0, max_start]`` per sample (the paper's "3 of 10 from a random start in {0, 1, 2}": early,
    high-entropy times). ``states=BackwardStates()``: the stored rollout states at those step indices
    of the rollout grid (the other column of the paper's 2x2 ablation). CFG-free scoring by default.
    Carry-over positions of a mask source are left out of the mean. ``per_token``: one unit per
    token and time (see :class:`~dflow.rl.likelihood.base.LikelihoodEstimator`).
    """

    def __init__(
        self,
        num_timesteps: int = 3,
        grid_steps: int = 10,
        max_start: int = 2,
        states: ScoredStates | None = None,
        token_mean: bool = True,
        use_guidance: bool = False,
        per_token: bool = False,
    ) -> None:
        states = check_states("ForwardReconstruction", states if states is not None else ForwardStates())
        if num_timesteps < 1 or max_start < 0 or num_timesteps + max_start > grid_steps:
            raise ValueError(
                f"ForwardReconstruction: need 1 <= num_timesteps and num_timesteps + max_start <= grid_steps, "
                f"got num_timesteps={num_timesteps}, max_start={max_start}, grid_steps={grid_steps}"
            )
        self.num_timesteps, self.grid_steps, self.max_start = num_timesteps, grid_steps, max_start
        self.states, self.token_mean, self.use_guidance, self.per_token = states, token_mean, use_guidance, per_token

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        if self.states.on_rollout_grid and sampler.num_steps < self.num_timesteps + self.max_start:
            raise ValueError(
                f"ForwardReconstruction(states={self.states!r}) needs rollout num_steps >= num_timesteps + max_start = "
                f"{self.num_timesteps + self.max_start}, got num_steps={sampler.num_steps}"
            )

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, U = traj.batch_size, self.num_timesteps
        dev = traj.x1.device
        start = torch.randint(0, self.max_start + 1, (B, 1), generator=generator, device=draw_device(generator, dev))
        idx = start.to(dev) + torch.arange(U, device=dev)  # [B, U] grid indices
        grid = traj.times if self.states.on_rollout_grid else _grid(sampler, self.grid_steps).to(dev)
        times = grid[idx]  # [B, U]
        return UnitPlan(times=times, states=self.states.states(traj, sampler, idx, times, generator))

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        for u in range(plan.num_units):
            x_in = plan.states[u].long()
            t = plan.times[:, u]
            if self.use_guidance:
                logits = sampler.scoring_logits(policy, x_in, t, traj.cond)
            else:
                logits = scoring_logits(policy, x_in, t, traj.cond)
            out.append(token_scores(logits, traj.x1))
        return torch.stack(out, dim=1)  # [B, U, L]

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        return stack_masks(
            [counted_tokens(sampler.path, plan.states[u].long()) for u in range(plan.num_units)], traj.x1
        )

    def passes_per_unit(self, sampler, traj) -> int:
        return 2 if self.use_guidance and sampler.uses_guidance(traj.cond) else 1


class ELBOLikelihood(LikelihoodEstimator):
    """Design-space paper: unit ``j`` = single-time ELBO estimate ``-w_j sum_i generalized_kl`` at
    ``xtilde_{t_j} ~ q(. | x_1)``, for ``num_timesteps`` distinct times drawn per sample from the first
    ``grid_steps`` points of a ``grid_steps``-step grid (``t = 1`` excluded). The same ``(t, xtilde)`` serve
    theta, old and reference (common random numbers).

    The ELBO is an integral over ``t``; a unit at grid point ``t_j`` estimates it with the quadrature
    weight ``w_j = grid_steps * (t_{j+1} - t_j)`` (left Riemann sum, so every unit is an estimate of
    the same integral whatever the grid: ``w_j = 1`` on the uniform grid, while on a shifted or cosine
    grid equal weights would over-count where the points crowd).

    Args:
        weighting: ``"exact"`` keeps the path's jump coefficient (``d_kappa / (1 - kappa)`` for a
            mixture path); ``"uniform"`` drops it (``ProbabilityPath.generalized_kl(weighted=False)``).
        token_mean: divide each unit by the number of tokens it counts (carry-over tokens of a mask
            source are not counted).
        per_token: one unit per token and time (see :class:`~dflow.rl.likelihood.base.LikelihoodEstimator`).
    """

    def __init__(
        self,
        num_timesteps: int = 9,
        grid_steps: int = 10,
        weighting: Literal["exact", "uniform"] = "exact",
        token_mean: bool = False,
        per_token: bool = False,
    ) -> None:
        if weighting not in ("exact", "uniform"):
            raise ValueError(f"ELBOLikelihood: weighting must be 'exact' or 'uniform', got {weighting!r}")
        if not 1 <= num_timesteps <= grid_steps:
            raise ValueError(
                f"ELBOLikelihood: need 1 <= num_timesteps <= grid_steps, got num_timesteps={num_timesteps}, "
                f"grid_steps={grid_steps}"
            )
        self.num_timesteps, self.grid_steps, self.weighting = num_timesteps, grid_steps, weighting
        self.token_mean, self.per_token = token_mean, per_token

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, U, dev = traj.batch_size, self.num_timesteps, traj.x1.device
        grid = _grid(sampler, self.grid_steps).to(dev)  # [grid_steps + 1]
        weight = (grid[1:] - grid[:-1]) * self.grid_steps  # [grid_steps] quadrature weight per point
        noise = torch.rand(
            B, self.grid_steps, generator=generator, device=draw_device(generator, dev), dtype=torch.float32
        )
        pick = noise.to(dev).argsort(dim=1)[:, :U].sort(dim=1).values  # [B, U] distinct grid indices
        times = grid[:-1][pick]  # [B, U]
        states = forward_states(sampler.path, traj.x1, times, generator, traj.states.dtype)
        return UnitPlan(times=times, states=states, weights=weight[pick])

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        weighted = self.weighting == "exact"
        for u in range(plan.num_units):
            x_in, t = plan.states[u].long(), plan.times[:, u]
            logits = path_scoring_logits(sampler.path, policy, x_in, t, traj.cond)
            gkl = sampler.path.generalized_kl(logits, traj.x1, x_in, t, weighted=weighted)
            out.append(-plan.weights[:, u, None].to(gkl.dtype) * gkl)  # [B, L]
        return torch.stack(out, dim=1)  # [B, U, L]

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        return stack_masks(
            [counted_tokens(sampler.path, plan.states[u].long()) for u in range(plan.num_units)], traj.x1
        )


class MeanFieldLikelihood(LikelihoodEstimator):
    """d1's diffu-GRPO: ``log p_theta(x_1^i | x_0)`` from one pass at the fully noised input
    ``x_0 ~ p_0`` (``t = 0``), with each prompt token replaced by ``prompt_mask_id`` with probability
    ``p_mask_prompt`` (the same draw for theta, old and reference).

    ``per_token=True`` (d1): one unit per token, so each token has its own ratio, clip and KL term,
    averaged over the sequence by the aggregation. ``per_token=False``: one unit per sample, the sum
    (or with ``token_mean`` the mean) over tokens; then a single ratio clips the whole sequence.
    """

    def __init__(
        self, p_mask_prompt: float = 0.15, prompt_mask_id: int = 0, token_mean: bool = False, per_token: bool = False
    ) -> None:
        if not 0.0 <= p_mask_prompt <= 1.0:
            raise ValueError(f"MeanFieldLikelihood: p_mask_prompt must be in [0, 1], got {p_mask_prompt!r}")
        # else the bad id only shows up inside the denoiser, as "cond values must be in [0, P)"
        if isinstance(prompt_mask_id, bool) or not isinstance(prompt_mask_id, int) or prompt_mask_id < 0:
            raise ValueError(
                f"MeanFieldLikelihood: prompt_mask_id must be a prompt id >= 0, got prompt_mask_id={prompt_mask_id!r}"
            )
        self.p_mask_prompt, self.prompt_mask_id = p_mask_prompt, prompt_mask_id
        self.token_mean, self.per_token = token_mean, per_token

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, L = traj.x1.shape
        x0 = sampler.path.source.sample((B, L), generator=generator, device=traj.x1.device)
        cond = traj.cond
        if torch.is_tensor(cond) and self.p_mask_prompt > 0:
            u = torch.rand(
                cond.shape, generator=generator, device=draw_device(generator, cond.device), dtype=torch.float32
            )
            cond = cond.masked_fill(u.to(cond.device) < self.p_mask_prompt, self.prompt_mask_id)
        times = torch.zeros(B, 1, dtype=torch.float32, device=traj.x1.device)
        return UnitPlan(times=times, states=x0[None].to(traj.states.dtype), cond=cond)

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        logits = scoring_logits(policy, plan.states[0].long(), plan.times[:, 0], plan.cond)
        return token_scores(logits, traj.x1)[:, None]  # [B, 1, L]
