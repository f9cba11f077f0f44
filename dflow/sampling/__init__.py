"""The MDP denoising sampler, its block variant and kernels, its time grids and the Trajectory record."""

from dflow.sampling.block import BlockSampler, BlockSession, PolicySession
from dflow.sampling.config import BlockConfig, SamplerConfig
from dflow.sampling.grids import TIME_GRIDS, time_grid
from dflow.sampling.kernels import (
    BlockKernel,
    BlockStep,
    ConfidenceUnmaskKernel,
    EntropyBoundKernel,
    PathKernel,
)
from dflow.sampling.sampler import Policy, Sampler, recompute_log_probs
from dflow.sampling.trajectory import Trajectory, compact_dtype

__all__ = [
    "TIME_GRIDS",
    "BlockConfig",
    "BlockKernel",
    "BlockSampler",
    "BlockSession",
    "BlockStep",
    "ConfidenceUnmaskKernel",
    "EntropyBoundKernel",
    "PathKernel",
    "Policy",
    "PolicySession",
    "Sampler",
    "SamplerConfig",
    "Trajectory",
    "compact_dtype",
    "recompute_log_probs",
    "time_grid",
]
