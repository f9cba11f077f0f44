"""The record of one batch of denoising rollouts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


def compact_dtype(num_states: int) -> torch.dtype:
    """Smallest integer dtype that holds states ``[0, num_states)``; keeps ``[K+1, B, L]`` records small."""
    if num_states <= 256:
        return torch.uint8
    if num_states <= 2**15:
        return torch.int16
    return torch.int32


@dataclass
class Trajectory:
    """A batch of ``B`` rollouts of ``K`` steps.

    Attributes:
        states: ``[K+1, B, L]`` compact integer states, ``states[0]`` from the source, ``states[K] == x1``.
        times: float ``[K+1]`` the grid, ``times[0] = 0``, ``times[K] = 1``. From a
            :class:`~dflow.sampling.BlockSampler`: the block-local time of each state (restarting at 0
            with each block), ``times[K] = 1``.
        log_probs: float32 ``[B, K]`` ``log P(x_{t_{k+1}} | x_{t_k})`` summed over tokens, under the
            distribution actually sampled (guidance, temperature, kernel).
        x1: long ``[B, L]`` final clean samples.
        posterior_argmax: ``[K, B, L]`` compact, argmax of ``p_{1|t_k}`` (the discrete Tweedie estimate).
        draws: ``[K, B, L]`` compact posterior draws ``xhat_1^k`` or None (``Sampler(record_draws=True)``).
        cond: the condition the rollouts used (prompt ids ``[B, Lc]``) or None.
        forward_passes: denoiser forward passes spent per sample (``K`` or ``2K`` with guidance).
        rollout_batch_size: rows per denoiser call during the rollout (``B``, or ``G`` for trajectories
            concatenated from per-group rollouts); recorded log-probs are bit-exact only for
            recomputations at this batch size.
    """

    states: Tensor
    times: Tensor
    log_probs: Tensor
    x1: Tensor
    posterior_argmax: Tensor
    draws: Tensor | None = None
    cond: Any = None
    forward_passes: int = 0
    rollout_batch_size: int = 0

    @property
    def num_steps(self) -> int:
        return self.states.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.states.shape[1]

    def state(self, k: int) -> Tensor:
        """``x_{t_k}`` as long ``[B, L]``."""
        return self.states[k].long()

    def select(self, index: Tensor | slice | list[int]) -> Trajectory:
        """Rows ``index`` of the batch (for mini-batches and group splits)."""
        idx = torch.as_tensor(index, device=self.states.device) if isinstance(index, list) else index
        cond = self.cond[idx] if torch.is_tensor(self.cond) else self.cond
        return replace(
            self,
            states=self.states[:, idx],
            log_probs=self.log_probs[idx],
            x1=self.x1[idx],
            posterior_argmax=self.posterior_argmax[:, idx],
            draws=None if self.draws is None else self.draws[:, idx],
            cond=cond,
        )

    @staticmethod
    def concat(parts: list[Trajectory]) -> Trajectory:
        """Stack trajectories of the same grid along the batch."""
        if not parts:
            raise ValueError("Trajectory.concat needs at least one trajectory")
        first = parts[0]
        cond = torch.cat([p.cond for p in parts]) if torch.is_tensor(first.cond) else first.cond
        draws = [p.draws for p in parts if p.draws is not None]
        if draws and len(draws) != len(parts):
            raise ValueError("Trajectory.concat: some trajectories recorded draws and some did not")
        return Trajectory(
            states=torch.cat([p.states for p in parts], dim=1),
            times=first.times,
            log_probs=torch.cat([p.log_probs for p in parts]),
            x1=torch.cat([p.x1 for p in parts]),
            posterior_argmax=torch.cat([p.posterior_argmax for p in parts], dim=1),
            draws=torch.cat(draws, dim=1) if draws else None,
            cond=cond,
            forward_passes=first.forward_passes,
            rollout_batch_size=first.rollout_batch_size,
        )
