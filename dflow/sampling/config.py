"""Typed sampler settings for YAML recipes; the path is supplied once by the module that builds it."""

from __future__ import annotations

from dataclasses import dataclass

from dflow.paths.base import ProbabilityPath
from dflow.sampling.sampler import Sampler


@dataclass
class SamplerConfig:
    """Settings of a :class:`Sampler` without its path (rollout and evaluation samplers share one path).

    Attributes:
        num_steps: ``K``; Reduced-Step training uses fewer steps in rollouts than at evaluation.
        time_grid: ``"uniform"``, ``"shifted"`` or ``"cosine"``.
        guidance_scale: classifier-free guidance ``w``; 1 is CFG-free (one pass per step).
        temperature: posterior temperature.
        shift: shift of the ``"shifted"`` grid.
    """

    num_steps: int = 10
    time_grid: str = "uniform"
    guidance_scale: float = 1.0
    temperature: float = 1.0
    shift: float = 3.0

    def build(self, path: ProbabilityPath, record_draws: bool = False) -> Sampler:
        return Sampler(
            path,
            num_steps=self.num_steps,
            time_grid=self.time_grid,
            guidance_scale=self.guidance_scale,
            temperature=self.temperature,
            shift=self.shift,
            record_draws=record_draws,
        )
