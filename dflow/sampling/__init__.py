"""The MDP denoising sampler, its time grids and the Trajectory record."""

from dflow.sampling.config import SamplerConfig
from dflow.sampling.grids import TIME_GRIDS, time_grid
from dflow.sampling.sampler import Policy, Sampler, recompute_log_probs
from dflow.sampling.trajectory import Trajectory, compact_dtype

__all__ = [
    "TIME_GRIDS",
    "Policy",
    "Sampler",
    "SamplerConfig",
    "Trajectory",
    "compact_dtype",
    "recompute_log_probs",
    "time_grid",
]
