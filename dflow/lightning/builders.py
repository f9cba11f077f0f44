"""Denoiser builders and the evaluation-sampler config: YAML parts that need the task and the path.

The task (under ``data:``) fixes ``V``, ``L``, ``Lc`` and the prompt vocabulary; the path (under
``model:``) fixes the source. A builder turns both into a denoiser, so a recipe never types a
vocabulary or a length twice, and a saved base is checked against them at start-up::

    model:
      denoiser:
        class_path: dflow.lightning.TransformerDenoiser      # or PretrainedDenoiser / HFMaskedLM
        init_args: {hidden_size: 128, num_layers: 4}

Every builder takes ``gradient_checkpointing`` (default false): the built denoiser recomputes its
blocks' activations in the backward pass instead of keeping them (``docs/scaling.md``)::

    model:
      init_args:
        denoiser:
          class_path: dflow.lightning.PretrainedDenoiser
          init_args: {path: dflow/assets/shapes_uniform, gradient_checkpointing: true}

It is a setting of the run, not of the model: exported model folders do not record it.

Every mismatch raises ``ValueError`` naming the field and both values. The ``transformers``
masked-LM builder is in :mod:`dflow.lightning.hf_builders`, the block-decoding dLLMs' in
:mod:`dflow.lightning.block_builders`; the JSON descriptions ``dflow_meta.json`` uses in
:mod:`dflow.lightning.describe`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch import nn

from dflow.models import DFlowConfig, DFlowTransformer, HFMaskedLMDenoiser, enable_gradient_checkpointing
from dflow.paths import ProbabilityPath
from dflow.tasks import Task

META_FILE = "dflow_meta.json"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../dflow


def resolve_path(path: str | Path) -> Path:
    """Find a directory given as written in a recipe.

    Tried in order: as given (absolute, or relative to the working directory), relative to the
    folder that holds the ``dflow`` package (``dflow/assets/shapes_uniform`` works from any working
    directory, in a checkout and in an installed wheel), relative to the package
    (``assets/shapes_uniform``). Raises ``ValueError`` naming every place tried.
    """
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, _PACKAGE_DIR.parent / given, _PACKAGE_DIR / given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(f"path={str(path)!r} is not a directory (tried {tried})")


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The ``dflow_meta.json`` of an exported base, or ``{}`` when the directory has none."""
    file = Path(directory) / META_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def check_task_path(task: Task, path: ProbabilityPath) -> None:
    """The path's vocabulary must be the task's: ``ValueError`` naming both otherwise."""
    if path.vocab_size != task.vocab_size:
        raise ValueError(
            f"path vocab_size={path.vocab_size} (source {path.source!r}) does not match "
            f"task {task.name!r} vocab_size={task.vocab_size}; set the source's vocab_size to {task.vocab_size}"
        )


def image_shape(task: Task) -> tuple[int, int] | None:
    """``(H, W)`` of an image task (``height * width == seq_len``), else ``None``."""
    height, width = getattr(task, "height", None), getattr(task, "width", None)
    if isinstance(height, int) and isinstance(width, int) and height * width == task.seq_len:
        return (height, width)
    return None


def check_flag(name: str, value: Any) -> bool:
    """A builder's bool option: ``ValueError`` naming it for anything but ``True`` / ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {name}={value!r}")
    return value


class DenoiserBuilder(ABC):
    """Builds the denoiser ``(x_t [B, L], t [B], cond [B, Lc] | None) -> logits [B, L, V]``."""

    @abstractmethod
    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        """A denoiser whose sizes agree with ``task`` and whose input states agree with ``path``."""


class TransformerDenoiser(DenoiserBuilder):
    """A fresh :class:`~dflow.models.DFlowTransformer` sized from the task and the path.

    ``vocab_size`` and ``mask_id`` come from ``path.source``; ``seq_len``, ``prompt_len``,
    ``prompt_vocab_size`` and ``image_shape`` (2-D positions for image tasks) from the task.

    Args:
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: attention heads (divide ``hidden_size``).
        mlp_ratio: MLP width as a multiple of ``hidden_size``.
        dropout: dropout in the blocks (0 keeps RL log-prob recomputation exact).
        time_conditioning: feed ``t`` through adaptive LayerNorm (off: time-agnostic, like FUDOKI).
        initializer_range: std of the initial weights. The transformers default 0.02 leaves a
            small model on the image tasks stuck for thousands of steps predicting the per-pixel
            marginal (near-uniform attention never finds the neighbouring pixels); 0.1 breaks out
            within ~200 steps on 12x12 images (measured: docs/pretraining.md).
        conv_kernel: depthwise image convolution before each block (0 = off; image tasks only).
        gradient_checkpointing: recompute each block in the backward pass instead of keeping its
            activations (less memory, about one more forward pass of compute); not saved with the model.
    """

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        time_conditioning: bool = False,
        initializer_range: float = 0.02,
        conv_kernel: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.gradient_checkpointing = check_flag("gradient_checkpointing", gradient_checkpointing)
        self.kwargs: dict[str, Any] = dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            time_conditioning=time_conditioning,
            initializer_range=initializer_range,
            conv_kernel=conv_kernel,
        )

    def config(self, task: Task, path: ProbabilityPath) -> DFlowConfig:
        check_task_path(task, path)
        return DFlowConfig(
            vocab_size=path.vocab_size,
            mask_id=path.source.mask_id,
            seq_len=task.seq_len,
            prompt_len=task.prompt_len,
            prompt_vocab_size=task.prompt_vocab_size,
            image_shape=image_shape(task),
            **self.kwargs,
        )

    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        model = DFlowTransformer(self.config(task, path))
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model


class PretrainedDenoiser(DenoiserBuilder):
    """Load a base exported by :meth:`PretrainModule.export_pretrained` (or any ``save_pretrained``
    directory of a :class:`~dflow.models.DFlowTransformer`) and check it against the task and path.

    Args:
        path: the directory; a short name such as ``dflow/assets/shapes_uniform`` is resolved with
            :func:`resolve_path`.
        gradient_checkpointing: switch on the loaded model's gradient checkpointing (a
            ``DFlowTransformer``, or the masked LM of an ``HFMaskedLMDenoiser`` base).
        trust_remote_code: let an exported custom-code dLLM (its folder keeps the model's .py
            files and ``auto_map``) run its code; refused by name without it.
    """

    def __init__(self, path: str, gradient_checkpointing: bool = False, trust_remote_code: bool = False) -> None:
        self.path = path
        self.gradient_checkpointing = check_flag("gradient_checkpointing", gradient_checkpointing)
        self.trust_remote_code = check_flag("trust_remote_code", trust_remote_code)

    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        check_task_path(task, path)
        directory = resolve_path(self.path)
        meta = read_meta(directory)
        if meta.get("denoiser") == "HFMaskedLMDenoiser":
            return self._build_hf(directory, meta, task, path)
        if not (directory / "config.json").is_file():
            raise ValueError(f"path={str(directory)!r} has no config.json (not a save_pretrained directory)")
        model = DFlowTransformer.from_pretrained(directory)
        check_model_config(model.config, task, path, where=str(directory))
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model

    def _build_hf(self, directory: Path, meta: dict[str, Any], task: Task, path: ProbabilityPath) -> nn.Module:
        adapter = meta.get("hf_adapter", {})
        data_ids = list(getattr(task, "data_token_ids", []) or [])  # the task's ids (the model's may differ)
        if adapter.get("data_token_ids") != data_ids:
            raise ValueError(
                f"model data_token_ids={adapter.get('data_token_ids')} (from {directory}) do not match "
                f"task {task.name!r} data_token_ids={data_ids}"
            )
        if adapter.get("prompt_len") != task.prompt_len:
            raise ValueError(
                f"model prompt_len={adapter.get('prompt_len')} (from {directory}) does not match "
                f"task {task.name!r} prompt_len={task.prompt_len}"
            )
        return HFMaskedLMDenoiser(
            directory,
            data_token_ids=adapter.get("model_data_token_ids", data_ids),
            mask_token_id=adapter["mask_token_id"],
            prompt_len=adapter["prompt_len"],
            pad_token_id=adapter.get("pad_token_id"),
            prompt_token_ids=adapter.get("prompt_token_ids"),
            gradient_checkpointing=self.gradient_checkpointing,
            trust_remote_code=self.trust_remote_code,
            shift_logits=adapter.get("shift_logits", False),
        )


def check_model_config(config: DFlowConfig, task: Task, path: ProbabilityPath, where: str = "model") -> None:
    """A saved transformer must fit the task and path; ``ValueError`` naming field and values."""
    if config.vocab_size != task.vocab_size:
        raise ValueError(
            f"vocab_size mismatch: model vocab_size={config.vocab_size} ({where}) but task "
            f"{task.name!r} vocab_size={task.vocab_size}"
        )
    if config.seq_len != task.seq_len:
        shape = image_shape(task)
        size = f"image size {shape[0]}x{shape[1]} = " if shape else ""
        raise ValueError(
            f"seq_len mismatch: model seq_len={config.seq_len} ({where}) but task {task.name!r} has "
            f"{size}seq_len={task.seq_len}"
        )
    if path.source.mask_id is not None and config.mask_id is None:
        raise ValueError(
            f"mask_id mismatch: source {path.source!r} uses mask_id={path.source.mask_id} but the model "
            f"({where}) has mask_id=None (no mask embedding); use a base trained with a mask source"
        )
    if config.prompt_len != task.prompt_len:
        raise ValueError(
            f"prompt_len mismatch: model prompt_len={config.prompt_len} ({where}) but task "
            f"{task.name!r} prompt_len={task.prompt_len}"
        )
    if config.prompt_vocab_size < task.prompt_vocab_size:
        raise ValueError(
            f"prompt_vocab_size mismatch: model prompt_vocab_size={config.prompt_vocab_size} ({where}) "
            f"is smaller than task {task.name!r} prompt_vocab_size={task.prompt_vocab_size}"
        )
