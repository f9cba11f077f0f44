"""Estimators that score the final clean sample ``x_1`` (the action) from re-noised states."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dflow.paths.mixture import MixturePath
from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan, noised_positions, score_tokens
from dflow.sampling import Sampler, Trajectory
from dflow.sampling.grids import time_grid


def _grid(sampler: Sampler, grid_steps: int) -> Tensor:
    """The estimator's time grid ``[grid_steps + 1]`` (same family as the rollout sampler's)."""
    return time_grid(sampler.grid_name, grid_steps, sampler.shift)


class ForwardReconstruction(LikelihoodEstimator):
    """UDM-GRPO: unit ``j`` = ``mean_i log p_theta(x_1^i | xtilde_{t_j}, c)``.

    ``states="forward"``: ``xtilde ~ q(. | x_1)`` re-noised with the pretraining forward process at
    ``num_timesteps`` consecutive times of a ``grid_steps`` grid starting at a random index in
    ``[0, max_start]`` per sample (the paper's "3 of 10 from a random start in {0, 1, 2}": early,
    high-entropy times). ``states="backward"``: the stored rollout states at those step indices of
    the rollout grid (the other column of the paper's 2x2 ablation). CFG-free scoring by default.
    Carry-over positions of a mask source are left out of the mean.
    """

    def __init__(
        self,
        num_timesteps: int = 3,
        grid_steps: int = 10,
        max_start: int = 2,
        states: Literal["forward", "backward"] = "forward",
        token_mean: bool = True,
        use_guidance: bool = False,
    ) -> None:
        if states not in ("forward", "backward"):
            raise ValueError(f"ForwardReconstruction: states must be 'forward' or 'backward', got {states!r}")
        if num_timesteps < 1 or max_start < 0 or num_timesteps + max_start > grid_steps:
            raise ValueError(
                f"ForwardReconstruction: need 1 <= num_timesteps and num_timesteps + max_start <= grid_steps, "
                f"got num_timesteps={num_timesteps}, max_start={max_start}, grid_steps={grid_steps}"
            )
        self.num_timesteps, self.grid_steps, self.max_start = num_timesteps, grid_steps, max_start
        self.states, self.token_mean, self.use_guidance = states, token_mean, use_guidance

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        if self.states == "backward" and sampler.num_steps < self.num_timesteps + self.max_start:
            raise ValueError(
                f"ForwardReconstruction(states='backward') needs rollout num_steps >= num_timesteps + max_start = "
                f"{self.num_timesteps + self.max_start}, got num_steps={sampler.num_steps}"
            )

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, U = traj.batch_size, self.num_timesteps
        dev = traj.x1.device
        start = torch.randint(0, self.max_start + 1, (B, 1), generator=generator)
        idx = (start + torch.arange(U)).to(dev)  # [B, U] grid indices
        if self.states == "backward":
            times = traj.times[idx]  # [B, U]
            rows = torch.arange(B, device=dev)
            states = torch.stack([traj.states[idx[:, u], rows] for u in range(U)])  # [U, B, L]
            return UnitPlan(times=times, states=states)
        times = _grid(sampler, self.grid_steps).to(dev)[idx]  # [B, U]
        states = torch.stack([sampler.path.sample_xt(traj.x1, times[:, u], generator) for u in range(U)])
        return UnitPlan(times=times, states=states.to(traj.states.dtype))

    def log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        for u in range(plan.num_units):
            x_in = plan.states[u].long()
            t = plan.times[:, u]
            logits = sampler.logits(policy, x_in, t, traj.cond) if self.use_guidance else policy(x_in, t, traj.cond)
            out.append(score_tokens(logits, traj.x1, noised_positions(sampler.path, x_in), self.token_mean))
        return torch.stack(out, dim=1)

    def passes_per_unit(self, sampler, traj) -> int:
        return 2 if self.use_guidance and sampler.uses_guidance(traj.cond) else 1


class ELBOLikelihood(LikelihoodEstimator):
    """Design-space paper: unit ``j`` = single-time ELBO estimate ``-sum_i generalized_kl`` at
    ``xtilde_{t_j} ~ q(. | x_1)``, for ``num_timesteps`` distinct times drawn per sample from the first
    ``grid_steps`` points of a ``grid_steps``-step grid (``t = 1`` excluded). The same ``(t, xtilde)`` serve
    theta, old and reference. ``weighting="uniform"`` drops the jump coefficient ``d_kappa / (1 - kappa)``
    (MixturePath only).
    """

    def __init__(
        self,
        num_timesteps: int = 9,
        grid_steps: int = 10,
        weighting: Literal["exact", "uniform"] = "exact",
        token_mean: bool = False,
    ) -> None:
        if weighting not in ("exact", "uniform"):
            raise ValueError(f"ELBOLikelihood: weighting must be 'exact' or 'uniform', got {weighting!r}")
        if not 1 <= num_timesteps <= grid_steps:
            raise ValueError(
                f"ELBOLikelihood: need 1 <= num_timesteps <= grid_steps, got num_timesteps={num_timesteps}, "
                f"grid_steps={grid_steps}"
            )
        self.num_timesteps, self.grid_steps, self.weighting, self.token_mean = (
            num_timesteps, grid_steps, weighting, token_mean,
        )

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        if self.weighting == "uniform" and not isinstance(sampler.path, MixturePath):
            raise ValueError("ELBOLikelihood(weighting='uniform') needs a MixturePath (it rescales its jump coefficient)")

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, U, dev = traj.batch_size, self.num_timesteps, traj.x1.device
        grid = _grid(sampler, self.grid_steps)[:-1]  # [grid_steps] without t = 1
        pick = torch.rand(B, self.grid_steps, generator=generator).argsort(dim=1)[:, :U]  # [B, U] distinct
        times = grid[pick.sort(dim=1).values].to(dev)  # [B, U]
        states = torch.stack([sampler.path.sample_xt(traj.x1, times[:, u], generator) for u in range(U)])
        return UnitPlan(times=times, states=states.to(traj.states.dtype))

    def log_probs(self, policy, traj, plan, sampler) -> Tensor:
        out = []
        path = sampler.path
        for u in range(plan.num_units):
            x_in, t = plan.states[u].long(), plan.times[:, u]
            logits = policy(x_in, t, traj.cond)
            if self.weighting == "uniform":
                gkl = path.generalized_kl(logits, traj.x1, x_in, t, weighted=False)
            else:
                gkl = path.generalized_kl(logits, traj.x1, x_in, t)
            out.append(-(gkl.mean(-1) if self.token_mean else gkl.sum(-1)))
        return torch.stack(out, dim=1)


class MeanFieldLikelihood(LikelihoodEstimator):
    """d1's diffu-GRPO: one unit per sample, ``sum_i log p_theta(x_1^i | x_0)`` from one pass at the fully
    noised input ``x_0 ~ p_0`` (``t = 0``), with each prompt token replaced by ``prompt_mask_id`` with
    probability ``p_mask_prompt`` (the same draw for theta, old and reference)."""

    def __init__(self, p_mask_prompt: float = 0.15, prompt_mask_id: int = 0, token_mean: bool = False) -> None:
        if not 0.0 <= p_mask_prompt <= 1.0:
            raise ValueError(f"MeanFieldLikelihood: p_mask_prompt must be in [0, 1], got {p_mask_prompt!r}")
        # else the bad id only shows up inside the denoiser, as "cond values must be in [0, P)"
        if isinstance(prompt_mask_id, bool) or not isinstance(prompt_mask_id, int) or prompt_mask_id < 0:
            raise ValueError(
                f"MeanFieldLikelihood: prompt_mask_id must be a prompt id >= 0, got prompt_mask_id={prompt_mask_id!r}"
            )
        self.p_mask_prompt, self.prompt_mask_id, self.token_mean = p_mask_prompt, prompt_mask_id, token_mean

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        B, L = traj.x1.shape
        x0 = sampler.path.source.sample((B, L), generator=generator, device=traj.x1.device)
        cond = traj.cond
        if torch.is_tensor(cond) and self.p_mask_prompt > 0:
            drop = torch.rand(cond.shape, generator=generator).to(cond.device) < self.p_mask_prompt
            cond = cond.masked_fill(drop, self.prompt_mask_id)
        times = torch.zeros(B, 1, device=traj.x1.device)
        return UnitPlan(times=times, states=x0[None].to(traj.states.dtype), cond=cond)

    def log_probs(self, policy, traj, plan, sampler) -> Tensor:
        x0 = plan.states[0].long()
        logits = policy(x0, plan.times[:, 0], plan.cond)
        return score_tokens(logits, traj.x1, None, self.token_mean)[:, None]
