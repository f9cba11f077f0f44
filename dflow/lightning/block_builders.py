"""Block decoding in recipes: the DiffusionGemma denoiser builder and the start-up checks that tie a
block sampler (``rollout.block`` / ``evaluation.block``) to the task, the denoiser and the likelihood.

A DiffusionGemma recipe over the ``text`` task (a tiny random model; the task's tokenizer is the
model's)::

    model:
      init_args:
        denoiser:
          class_path: dflow.lightning.DiffusionGemma
          init_args:
            config: {canvas_length: 4, text_config: {hidden_size: 32, num_hidden_layers: 2}}
        path:
          class_path: dflow.paths.MixturePath
          init_args: {source: {class_path: dflow.paths.UniformSource, init_args: {vocab_size: 4}}}
        rollout:
          num_steps: 4                   # steps per block
          block:
            block_len: 4                 # = canvas_length
            kernel: {class_path: dflow.sampling.EntropyBoundKernel, init_args: {entropy_bound: 0.5}}
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dflow.lightning.builders import DenoiserBuilder, check_flag, check_task_path, read_meta, resolve_path
from dflow.models import DiffusionGemmaDenoiser
from dflow.paths import ProbabilityPath
from dflow.rl.likelihood import SpanLikelihood, TrajectoryLikelihood
from dflow.rl.likelihood.base import LikelihoodEstimator
from dflow.sampling import BlockSampler, Sampler, SamplerConfig
from dflow.tasks import Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

# A tiny text model: two layers (one sliding-window, one full attention), two experts. Every key
# can be overridden under ``config.text_config``; the sizes the task fixes are filled in by build().
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    global_head_dim=16,
    sliding_window=8,
    num_experts=2,
    top_k_experts=1,
    moe_intermediate_size=32,
    layer_types=["sliding_attention", "full_attention"],
)
# The vision tower is unused by text tasks but part of the model class: a one-layer stub.
TINY_VISION = dict(
    model_type="gemma4_vision",
    hidden_size=8,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=1,
    num_key_value_heads=1,
    head_dim=8,
    patch_size=2,
    position_embedding_size=8,
)


class DiffusionGemma(DenoiserBuilder):
    """A ``transformers`` DiffusionGemma (``DiffusionGemmaForBlockDiffusion``) over a task's tokenizer,
    as :class:`~dflow.models.DiffusionGemmaDenoiser` (a block policy for ``BlockSampler``).

    The task's data value ``v`` is the model's token ``task.data_token_ids[v]`` and the prompt is the
    task's token ids, unchanged (the ``text`` task's prompts are 19 ids, never padded). The policy is
    the model's posterior restricted to the data tokens. DiffusionGemma is uniform-source block
    diffusion, so the path must have a ``UniformSource``.

    Args:
        config: a fresh, randomly initialised model: ``DiffusionGemmaConfig`` keyword arguments
            (``canvas_length``, ``initializer_range``, ``text_config: {...}``, ``vision_config``);
            the text model defaults to a two-layer one of width 32 and the vision tower to a stub.
            ``text_config.vocab_size`` is the tokenizer's size plus the three image ids (placed after
            it), ``max_position_embeddings`` is ``prompt_len + seq_len``, and ``pad/bos/eos`` are the
            tokenizer's ``[PAD]`` / ``[CLS]`` / ``[SEP]``.
        path: a local model folder instead (what ``dflow export`` writes from a DiffusionGemma run, or
            any DiffusionGemma folder whose ids are the task tokenizer's); its ``dflow_meta.json``
            ``data_token_ids``, when present, must equal the task's.
        self_conditioning / self_conditioning_grad: as :class:`~dflow.models.DiffusionGemmaDenoiser`.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float64"``.
        gradient_checkpointing: switch on the model's own gradient checkpointing.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        path: str | None = None,
        self_conditioning: bool = True,
        self_conditioning_grad: bool = True,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
    ) -> None:
        if (config is None) == (path is None):
            raise ValueError(f"DiffusionGemma: give exactly one of config and path, got config={config!r}, {path=}")
        if dtype not in DTYPES:
            raise ValueError(f"DiffusionGemma: dtype must be one of {sorted(DTYPES)}, got dtype={dtype!r}")
        self.config = copy.deepcopy(dict(config)) if config is not None else None
        self.path = path
        self.self_conditioning = check_flag("self_conditioning", self_conditioning)
        self.self_conditioning_grad = check_flag("self_conditioning_grad", self_conditioning_grad)
        self.dtype = dtype
        self.gradient_checkpointing = check_flag("gradient_checkpointing", gradient_checkpointing)

    def model_config(self, task: Task) -> Any:
        """The ``DiffusionGemmaConfig`` of a fresh model for ``task`` (from ``config``)."""
        from transformers import DiffusionGemmaConfig

        assert self.config is not None
        tokenizer = task.tokenizer  # type: ignore[attr-defined]  # checked in build()
        n = len(tokenizer)
        given = dict(self.config)
        text = {
            **TINY_TEXT,
            "vocab_size": n + 3,
            "max_position_embeddings": task.prompt_len + task.seq_len,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            **dict(given.pop("text_config", None) or {}),
        }
        vision = {**TINY_VISION, **dict(given.pop("vision_config", None) or {})}
        init = given.get("initializer_range")
        if init is not None:
            text.setdefault("initializer_range", init)
        kwargs = {"boi_token_id": n, "eoi_token_id": n + 1, "image_token_id": n + 2, **given}
        return DiffusionGemmaConfig(text_config=text, vision_config=vision, **kwargs)

    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        from transformers import DiffusionGemmaForBlockDiffusion

        check_task_path(task, path)
        data_ids = getattr(task, "data_token_ids", None)
        if getattr(task, "tokenizer", None) is None or data_ids is None:
            raise ValueError(
                f"DiffusionGemma needs a task with a tokenizer and data_token_ids (e.g. text); task {task.name!r} "
                "has none"
            )
        if path.source.mask_id is not None:
            raise ValueError(
                f"DiffusionGemma is uniform-source block diffusion: the path's source must be "
                f"dflow.paths.UniformSource(vocab_size={task.vocab_size}), got source={path.source!r}"
            )
        kwargs = dict(self_conditioning=self.self_conditioning, self_conditioning_grad=self.self_conditioning_grad)
        if self.config is not None:
            model = DiffusionGemmaForBlockDiffusion(self.model_config(task))
            model = model.to(dtype=DTYPES[self.dtype])  # type: ignore[call-arg]  # transformers types .to oddly
            denoiser = DiffusionGemmaDenoiser(model, data_token_ids=list(data_ids), **kwargs)
        else:
            assert self.path is not None  # __init__ takes exactly one of config and path
            folder = resolve_path(self.path)
            recorded = read_meta(folder).get("diffusion_gemma", {}).get("data_token_ids")
            if recorded is not None and list(recorded) != list(data_ids):
                raise ValueError(
                    f"model data_token_ids={recorded} (from {folder}) do not match task {task.name!r} "
                    f"data_token_ids={list(data_ids)}"
                )
            denoiser = DiffusionGemmaDenoiser.from_pretrained(
                folder, dtype=DTYPES[self.dtype], data_token_ids=list(data_ids), **kwargs
            )
        if self.gradient_checkpointing:
            denoiser.model.gradient_checkpointing_enable()
        return denoiser


def is_block_policy(denoiser: Any) -> bool:
    """The denoiser samples through its own block session (DiffusionGemma), not as a plain denoiser."""
    return callable(getattr(denoiser, "block_session", None))


def check_block_rollouts(
    denoiser: nn.Module,
    task: Task,
    configs: dict[str, SamplerConfig],
    rollout: Sampler,
    likelihood: LikelihoodEstimator,
) -> None:
    """Start-up checks of the block settings (``configs``: record name -> setting) once the task and the
    denoiser exist, against the ``rollout`` sampler and ``likelihood`` (``ValueError`` naming the field,
    its value and the fix):

    - ``<where>.block.block_len`` divides the task's ``seq_len``;
    - a block policy (DiffusionGemma) decodes only with a block sampler whose ``block_len`` is its
      ``canvas_length``;
    - the likelihood can score the rollout sampler's trajectories: the final-sample estimators call
      the denoiser on the whole sequence, which a block policy does only for a one-block answer;
      ``IntermediateActionLikelihood`` scores whole-sequence draws (not defined on block rollouts).
    """
    canvas = getattr(denoiser, "canvas_length", None) if is_block_policy(denoiser) else None
    for where, config in configs.items():
        if config.block is not None:
            config.block.check_seq_len(where, task.seq_len)
        if canvas is None:
            continue
        if config.block is None:
            raise ValueError(
                f"{type(denoiser).__name__} decodes block by block: set {where}.block with "
                f"block_len={canvas} (the model's canvas_length) and a kernel (EntropyBoundKernel)"
            )
        if config.block.block_len != canvas:
            raise ValueError(
                f"{where}.block.block_len={config.block.block_len} must equal the model's canvas_length={canvas} "
                f"({type(denoiser).__name__} denoises one canvas per block); set {where}.block.block_len={canvas}"
            )
    if not isinstance(rollout, BlockSampler) or isinstance(likelihood, (TrajectoryLikelihood, SpanLikelihood)):
        return
    name = type(likelihood).__name__
    if likelihood.needs_draws:
        raise ValueError(
            f"{name} scores whole-sequence posterior draws, which are not defined on block rollouts "
            f"({rollout!r}); use TrajectoryLikelihood or SpanLikelihood, or drop rollout.block"
        )
    if canvas is not None and task.seq_len != canvas:
        raise ValueError(
            f"{name} scores the final sample with the denoiser called on the whole sequence (seq_len="
            f"{task.seq_len}), but {type(denoiser).__name__} with {rollout!r} is called one canvas of "
            f"{canvas} tokens at a time (a block-aware forward process is not implemented); use "
            f"TrajectoryLikelihood or SpanLikelihood, or a one-block answer (canvas_length = seq_len = {task.seq_len})"
        )
