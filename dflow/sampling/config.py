"""Typed sampler settings for YAML recipes; the path is supplied once by the module that builds it.

``SamplerConfig`` builds a :class:`~dflow.sampling.Sampler`, or, with a ``block`` setting, a
:class:`~dflow.sampling.BlockSampler` (semi-autoregressive decoding, docs/block_sampling.md)::

    rollout:
      num_steps: 4                  # with block: steps per block (S), as BlockSampler's num_steps
      block:
        block_len: 4
        kernel: {class_path: dflow.sampling.ConfidenceUnmaskKernel, init_args: {confidence: sampled}}
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from dflow.paths.base import ProbabilityPath
from dflow.sampling.block import BlockSampler
from dflow.sampling.kernels import BlockKernel, ConfidenceUnmaskKernel, EntropyBoundKernel, PathKernel
from dflow.sampling.sampler import Sampler

# which source each kernel takes: the fix a kernel/source mismatch names
_KERNEL_FIX = {
    ConfidenceUnmaskKernel: "it needs a dflow.paths.MaskSource path; with a uniform source use EntropyBoundKernel "
    "or PathKernel",
    EntropyBoundKernel: "it needs a dflow.paths.UniformSource path; with a mask source use ConfidenceUnmaskKernel "
    "or PathKernel",
}


@dataclass
class BlockConfig:
    """Block decoding: blocks of ``block_len`` tokens left to right, ``num_steps`` kernel steps each.

    The kernel is an object chosen by ``class_path`` in YAML (jsonargparse instantiates a class-typed
    field inside a dataclass, so the setting stays one record beside the sampler's other fields).
    The steps per block are the sampler's own ``num_steps`` (``BlockSampler``'s ``num_steps`` is
    ``S`` too), so a flat override such as ``rollout.num_steps=4`` means the same with and without
    blocks and no second field can disagree with it.

    Attributes:
        block_len: ``C``, tokens per block; the task's ``seq_len`` must be a multiple of it (checked
            when the task is known), and a block policy such as DiffusionGemma needs ``C`` equal to
            its ``canvas_length``.
        kernel: the in-block kernel: ``PathKernel`` (any path), ``ConfidenceUnmaskKernel`` (mask
            source), ``EntropyBoundKernel`` (uniform source). A mapping ``{class_path, init_args}``
            (a checkpoint's or a model folder's record) is instantiated.
    """

    block_len: int = 32
    kernel: BlockKernel = field(default_factory=PathKernel)

    def __post_init__(self) -> None:
        if isinstance(self.block_len, bool) or not isinstance(self.block_len, int) or self.block_len < 1:
            raise ValueError(f"block.block_len must be an int >= 1, got block_len={self.block_len!r}")
        given: Any = self.kernel
        if hasattr(given, "keys") and "class_path" in given:
            self.kernel = _instantiate_kernel(dict(given))
        if not isinstance(self.kernel, BlockKernel):
            raise ValueError(
                f"block.kernel must be a dflow.sampling.BlockKernel (PathKernel, ConfidenceUnmaskKernel or "
                f"EntropyBoundKernel, by class_path), got kernel={self.kernel!r}"
            )

    def check_seq_len(self, where: str, seq_len: int) -> None:
        """``ValueError`` naming ``<where>.block.block_len`` when ``seq_len`` is not a multiple of it."""
        if seq_len % self.block_len:
            fits = [c for c in range(1, seq_len + 1) if seq_len % c == 0]
            raise ValueError(
                f"{where}.block.block_len={self.block_len} does not divide the task's seq_len={seq_len}; "
                f"use one of {fits}"
            )


def _instantiate_kernel(description: dict[str, Any]) -> BlockKernel:
    module_name, _, name = str(description["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"block.kernel: class_path={description['class_path']!r} cannot be imported: {err}") from err
    return cls(**dict(description.get("init_args") or {}))


@dataclass
class SamplerConfig:
    """Settings of a :class:`Sampler` without its path (rollout and evaluation samplers share one path).

    Attributes:
        num_steps: ``K``; Reduced-Step training uses fewer steps in rollouts than at evaluation.
            With ``block``: the steps per block ``S`` (a rollout takes ``(L / C) S`` steps).
        time_grid: ``"uniform"``, ``"shifted"`` or ``"cosine"`` (with ``block``: each block's own grid).
        guidance_scale: classifier-free guidance ``w``; 1 is CFG-free (one pass per step).
        temperature: posterior temperature.
        shift: shift of the ``"shifted"`` grid.
        block: block decoding (:class:`BlockConfig`): ``build`` returns a ``BlockSampler``; None
            (default): the whole sequence at once.
    """

    num_steps: int = 10
    time_grid: str = "uniform"
    guidance_scale: float = 1.0
    temperature: float = 1.0
    shift: float = 3.0
    block: BlockConfig | None = None

    def __post_init__(self) -> None:
        if self.block is not None and not isinstance(self.block, BlockConfig):
            if not hasattr(self.block, "keys"):
                raise ValueError(f"block must be a BlockConfig, a mapping of its fields or null, got {self.block!r}")
            self.block = BlockConfig(**dict(self.block))  # a checkpoint's or a model folder's record

    def build(self, path: ProbabilityPath, record_draws: bool = False, where: str = "sampler") -> Sampler:
        """The sampler on ``path``; ``where`` (``rollout`` / ``evaluation``) names the record in errors."""
        if self.block is None:
            return Sampler(
                path,
                num_steps=self.num_steps,
                time_grid=self.time_grid,
                guidance_scale=self.guidance_scale,
                temperature=self.temperature,
                shift=self.shift,
                record_draws=record_draws,
            )
        kernel = self.block.kernel
        try:
            kernel.check(path)
        except ValueError as err:
            fix = _KERNEL_FIX.get(type(kernel), "choose a kernel that fits the path's source")
            raise ValueError(f"{where}.block.kernel={kernel!r} does not fit the path: {err}; {fix}") from err
        return BlockSampler(
            path,
            kernel,
            block_len=self.block.block_len,
            steps_per_block=self.num_steps,
            time_grid=self.time_grid,
            guidance_scale=self.guidance_scale,
            temperature=self.temperature,
            shift=self.shift,
            record_draws=record_draws,
        )
