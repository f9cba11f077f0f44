"""The denoising sampler as an MDP: it returns what it sampled and the exact log-probability of it.

State ``s_k = (x_{t_k}, t_k, c)``, action ``x_{t_{k+1}}``, policy ``prod_i P_theta(x^i_{t_{k+1}} | x_{t_k})``
with the path's step kernel around the posterior ``softmax(logits / temperature)`` where, with
classifier-free guidance, ``logits = logits_u + w (logits_c - logits_u)`` (``w = 1`` is CFG-free and
costs one forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dflow.logprobs import HeadLogits, can_fuse_head
from dflow.paths.base import ProbabilityPath
from dflow.sampling.grids import TIME_GRIDS
from dflow.sampling.grids import time_grid as make_grid
from dflow.sampling.trajectory import Trajectory, compact_dtype

Policy = Callable[[Tensor, Tensor, Any], Tensor]  # (x_t [B, L] long, t [B], cond) -> logits [B, L, V]


def rollout_device(
    where: str, cond: Any, batch_size: int, seq_len: int, generator: torch.Generator | None, device: Any
) -> torch.device | str:
    """Check a rollout's sizes and prompts, and return its device: ``device``, else the prompts', else the
    generator's, else the CPU. Shared by :class:`Sampler` and the block sampler."""
    for name, val in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {name}={val!r}")
    if torch.is_tensor(cond) and cond.shape[0] != batch_size:
        raise ValueError(f"{where}: cond has batch {cond.shape[0]} but batch_size={batch_size}")
    if device is not None:
        return device
    return cond.device if torch.is_tensor(cond) else (generator.device if generator is not None else "cpu")


class Sampler:
    """MDP sampler over a :class:`~dflow.paths.ProbabilityPath`.

    Args:
        path: the probability path (its source gives ``x_0``, its kernel the steps).
        num_steps: ``K`` steps. Reduced-Step training uses a smaller ``K`` than evaluation.
        time_grid: ``"uniform"``, ``"shifted"`` (with ``shift``) or ``"cosine"``.
        guidance_scale: ``w`` of classifier-free guidance; 1 = CFG-free (one forward pass per step).
        temperature: posterior temperature (> 0).
        record_draws: also keep each step's posterior draw ``xhat_1^k`` (naive intermediate-action GRPO).

    Example::

        sampler = Sampler(path, num_steps=10)
        traj = sampler.rollout(model, cond, batch_size=B, seq_len=L, generator=g)
        new_lp = recompute_log_probs(sampler, model, traj)   # equals traj.log_probs at the same weights
    """

    def __init__(
        self,
        path: ProbabilityPath,
        num_steps: int = 10,
        time_grid: str = "uniform",
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        shift: float = 3.0,
        record_draws: bool = False,
    ) -> None:
        if not isinstance(path, ProbabilityPath):
            raise ValueError(f"Sampler: path must be a dflow ProbabilityPath, got {path!r}")
        if time_grid not in TIME_GRIDS:
            raise ValueError(f"Sampler: unknown time_grid={time_grid!r}; choose one of {TIME_GRIDS}")
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"Sampler: temperature must be a finite number > 0, got temperature={temperature!r}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise ValueError(f"Sampler: guidance_scale must be a finite number, got guidance_scale={guidance_scale!r}")
        self.path = path
        self.times = make_grid(time_grid, num_steps, shift)  # [K+1]; validates num_steps
        self.num_steps = num_steps
        self.grid_name = time_grid
        self.guidance_scale = float(guidance_scale)
        self.temperature = float(temperature)
        self.shift = shift
        self.record_draws = record_draws

    def __repr__(self) -> str:
        return (
            f"Sampler(path={self.path!r}, num_steps={self.num_steps}, time_grid={self.grid_name!r}, "
            f"guidance_scale={self.guidance_scale}, temperature={self.temperature})"
        )

    def uses_guidance(self, cond: Any) -> bool:
        return cond is not None and self.guidance_scale != 1.0

    def logits(self, policy: Policy, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """Sampling logits ``[B, L, V]``: guided, divided by the temperature."""
        out = policy(x_t, t, cond)
        if self.uses_guidance(cond):
            uncond = policy(x_t, t, None)
            out = uncond + self.guidance_scale * (out - uncond)
        if not torch.is_tensor(out):
            return out  # rollout's shape check names the problem
        return self._tempered(out)

    def _tempered(self, logits: Tensor) -> Tensor:
        """Half precision to float32 (under mixed precision: score in float32), then the temperature."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits / self.temperature if self.temperature != 1.0 else logits

    def scoring_logits(self, policy: Policy, x_t: Tensor, t: Tensor, cond: Any) -> Tensor | HeadLogits:
        """:meth:`logits` for scoring: the denoiser's :class:`~dflow.logprobs.HeadLogits` with the
        temperature applied to each chunk where it has them and no guidance applies (guidance mixes
        two passes' logits), else :meth:`logits`. Equal values, less memory."""
        if self.uses_guidance(cond) or not can_fuse_head(policy):
            return self.logits(policy, x_t, t, cond)
        out = policy.head_logits(x_t, t, cond)  # type: ignore[attr-defined]  # can_fuse_head checked it
        # at temperature 1 the chunks are cast to float32 by the scoring itself
        return out if self.temperature == 1.0 else out.with_head(self._tempered)

    def _check_logits(self, logits: Tensor, x_t: Tensor) -> None:
        want = (*x_t.shape, self.path.vocab_size)
        if not torch.is_tensor(logits) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
            raise ValueError(f"policy must return logits of shape [B, L, V]={want}, got {got}")

    @torch.no_grad()
    def rollout(
        self,
        policy: Policy,
        cond: Any = None,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Trajectory:
        """Sample ``batch_size`` sequences of ``seq_len`` tokens and record the trajectory."""
        device = rollout_device("Sampler.rollout", cond, batch_size, seq_len, generator, device)
        K, B, L = self.num_steps, batch_size, seq_len
        sdt = compact_dtype(self.path.num_states)
        times = self.times.to(device)
        states = torch.empty(K + 1, B, L, dtype=sdt, device=device)
        argmax = torch.empty(K, B, L, dtype=sdt, device=device)
        draws = torch.empty(K, B, L, dtype=sdt, device=device) if self.record_draws else None
        log_probs = torch.empty(B, K, dtype=torch.float32, device=device)
        x = self.path.source.sample((B, L), generator=generator, device=device)  # [B, L] x_0 ~ p_0
        states[0] = x
        for k in range(K):
            t, s = times[k].expand(B), times[k + 1].expand(B)
            logits = self.logits(policy, x, t, cond)  # [B, L, V]
            if k == 0:
                self._check_logits(logits, x)
            step = self.path.sample_step(logits, x, t, s, generator=generator)
            log_probs[:, k] = step.log_prob.sum(-1)
            # the decode of x_1 at this state: tokens already certainly clean (a mask source's
            # revealed ones) are kept, the others take the posterior's argmax
            argmax[k] = torch.where(self.path.is_clean(x), x, logits.argmax(-1))
            if draws is not None:
                draws[k] = step.draw
            x = step.x_s
            states[k + 1] = x
        passes = K * (2 if self.uses_guidance(cond) else 1)
        return Trajectory(states, times, log_probs, x.long(), argmax, draws, cond, passes, rollout_batch_size=B)

    def moving_tokens(self, traj: Trajectory, k: int) -> Tensor:
        """bool ``[B, L]``: the tokens step ``k`` can move, i.e. all but the certainly-clean carry-over
        tokens of ``x_{t_k}`` (what per-step estimators count for ``token_mean`` and per-token units)."""
        return ~self.path.is_clean(traj.state(k))

    def log_probs(self, policy: Policy, traj: Trajectory, steps: Sequence[int] | Tensor | None = None) -> Tensor:
        """Recompute ``log P_theta(x_{t_{k+1}} | x_{t_k})`` for the chosen steps, with gradient: ``[B, len(steps)]``.

        Float32 like ``Trajectory.log_probs``, whatever the policy's precision: a float64 policy's values
        are rounded exactly as the rollout rounded them when recording, so the on-policy ratio is exactly 1
        (the gradient still flows back through the cast into float64 weights).
        """
        return self.token_log_probs(policy, traj, steps).sum(-1).to(torch.float32)

    def token_log_probs(self, policy: Policy, traj: Trajectory, steps: Sequence[int] | Tensor | None = None) -> Tensor:
        """Per-token ``log P_theta(x^i_{t_{k+1}} | x_{t_k})`` for the chosen steps, with gradient:
        ``[B, len(steps), L]`` in the logits' precision (summing over ``L`` gives what the rollout recorded)."""
        K = traj.num_steps
        steps = list(range(K)) if steps is None else [int(k) for k in steps]
        if any(k < 0 or k >= K for k in steps):
            raise ValueError(f"steps must lie in [0, {K}), got {steps}")
        times = traj.times
        out = []
        for k in steps:
            x_t, x_s = traj.state(k), traj.state(k + 1)
            B = x_t.shape[0]
            t, s = times[k].expand(B), times[k + 1].expand(B)
            logits = self.logits(policy, x_t, t, traj.cond)
            out.append(self.path.step_log_prob(logits, x_t, x_s, t, s))
        return torch.stack(out, dim=1)


def recompute_log_probs(
    sampler: Sampler, policy: Policy, traj: Trajectory, steps: Sequence[int] | Tensor | None = None
) -> Tensor:
    """Per-step float32 log-probs ``[B, len(steps)]`` of a stored trajectory under ``policy``
    (what RL differentiates)."""
    return sampler.log_probs(policy, traj, steps)
