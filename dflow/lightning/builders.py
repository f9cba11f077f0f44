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

Every mismatch raises ``ValueError`` naming the field and both values. The module also holds the
JSON description helpers (:func:`describe` / :func:`instantiate`) that ``dflow_meta.json`` uses.
"""

from __future__ import annotations

import importlib
import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dflow.lightning.tokens import load_model_tokenizer, translate_token_ids
from dflow.models import DFlowConfig, DFlowTransformer, HFMaskedLMDenoiser, enable_gradient_checkpointing
from dflow.models.hf_loading import (
    check_remote_code_allowed,
    max_sequence_length,
    read_folder_config,
    remote_class_entry,
)
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


class HFMaskedLM(DenoiserBuilder):
    """A ``transformers`` masked LM over the task's tokenizer (the text task), via
    :class:`~dflow.models.HFMaskedLMDenoiser`.

    With ``config``, a fresh model takes the task's tokenizer as its own: data value ``v`` is
    ``task.data_token_ids[v]``, the mask state is ``tokenizer.mask_token_id``, prompt id 0 the pad id.

    With ``path``, the model was trained with its own tokenizer, whose ids differ from the task's
    (RoBERTa's padding id 1 is the text task's ``[MASK]``). By default the folder's tokenizer is
    loaded and every task token is translated to the model's id for the same token text (special
    tokens by role: pad to pad, mask to mask, ...); a task token the model's tokenizer does not hold
    as one token is refused by name. ``tokenizer="task"`` skips the translation, for a model trained
    on the task's own ids (then the folder may hold no tokenizer).

    Args:
        config: a fresh, randomly initialised model: a dict with ``"model_type"`` (e.g. ``"bert"``)
            and its sizes; ``vocab_size`` defaults to the tokenizer's, ``max_position_embeddings``
            to ``prompt_len + seq_len``.
        path: a local directory with a saved masked LM (exactly one of ``config`` and ``path``).
        tokenizer: with ``path``: ``"model"`` (default, the folder's tokenizer, as above) or
            ``"task"`` (the task's ids unchanged).
        gradient_checkpointing: switch on the model's own gradient checkpointing; ``ValueError``
            naming the model class when it has none.
        trust_remote_code: with ``path``: let a folder that ships its own modelling code (LLaDA,
            Dream: ``auto_map`` in its ``config.json``) run it; refused by name without it.
        shift_logits: with ``path``: the model predicts the token after each position (Dream).
        dtype: with ``path``: load the weights in this dtype (``bfloat16`` for the released dLLMs).

    With ``path`` and ``tokenizer="model"`` the mask id is the folder tokenizer's mask token, else
    the ``mask_token_id`` of its ``config.json`` (LLaDA declares it there only); both set and
    different is refused. ``prompt_len + seq_len`` must fit the model's positions.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        path: str | None = None,
        tokenizer: str = "model",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        shift_logits: bool = False,
        dtype: str | None = None,
    ) -> None:
        if (config is None) == (path is None):
            raise ValueError(f"HFMaskedLM: give exactly one of config and path, got config={config!r}, path={path!r}")
        if config is not None and "model_type" not in config:
            raise ValueError(f"HFMaskedLM: config needs a 'model_type' key (e.g. 'bert'), got keys {sorted(config)}")
        if tokenizer not in ("model", "task"):
            raise ValueError(f"HFMaskedLM: tokenizer must be 'model' or 'task', got tokenizer={tokenizer!r}")
        self.config = dict(config) if config is not None else None
        self.path = path
        self.tokenizer = tokenizer
        self.gradient_checkpointing = check_flag("gradient_checkpointing", gradient_checkpointing)
        self.trust_remote_code = check_flag("trust_remote_code", trust_remote_code)
        self.shift_logits = check_flag("shift_logits", shift_logits)
        self.dtype = dtype
        given = [n for n, v in (("trust_remote_code", trust_remote_code), ("shift_logits", shift_logits)) if v]
        if config is not None and (given or dtype is not None):
            raise ValueError(
                f"HFMaskedLM: {', '.join(given + (['dtype'] if dtype is not None else []))} apply to a model folder "
                "(path); a fresh model from config runs no folder code and is built in float32"
            )

    def build(self, task: Task, path: ProbabilityPath) -> nn.Module:
        check_task_path(task, path)
        tokenizer = getattr(task, "tokenizer", None)
        data_ids = getattr(task, "data_token_ids", None)
        if tokenizer is None or data_ids is None:
            raise ValueError(
                f"HFMaskedLM needs a task with a tokenizer and data_token_ids; task {task.name!r} has none"
            )
        if tokenizer.mask_token_id is None:
            raise ValueError(f"HFMaskedLM: task {task.name!r}'s tokenizer has no mask token")
        if self.config is not None:
            model: Any = {
                "vocab_size": len(tokenizer),
                "max_position_embeddings": task.prompt_len + task.seq_len,
                "pad_token_id": tokenizer.pad_token_id,
                **self.config,
            }
        else:
            assert self.path is not None  # __init__ takes exactly one of config and path
            model = resolve_path(self.path)
            folder_config = read_folder_config(model)
            check_remote_code_allowed(folder_config, model, self.trust_remote_code)  # before any folder code runs
            check_length_fits(folder_config, task, model)
            table: list[int] | None = None
            if self.tokenizer == "model":
                model_tokenizer = load_model_tokenizer(model, trust_remote_code=self.trust_remote_code)
                mask_id = folder_mask_token_id(model_tokenizer, folder_config, model)
                table = translate_token_ids(tokenizer, model_tokenizer, str(model), role_ids={"mask_token": mask_id})
            return HFMaskedLMDenoiser(
                model,
                data_token_ids=list(data_ids) if table is None else [table[i] for i in data_ids],
                mask_token_id=tokenizer.mask_token_id if table is None else table[tokenizer.mask_token_id],
                prompt_len=task.prompt_len,
                # the task's ids as they are: 0 (BERT-style) needs no translation; translated: the table maps pads
                pad_token_id=(tokenizer.pad_token_id or None) if table is None else None,
                prompt_token_ids=table,
                gradient_checkpointing=self.gradient_checkpointing,
                trust_remote_code=self.trust_remote_code,
                shift_logits=self.shift_logits,
                dtype=self.dtype,
            )
        return HFMaskedLMDenoiser(
            model,
            data_token_ids=list(data_ids),
            mask_token_id=tokenizer.mask_token_id,
            prompt_len=task.prompt_len,
            pad_token_id=tokenizer.pad_token_id or None,  # 0 (BERT-style) needs no translation
            gradient_checkpointing=self.gradient_checkpointing,
        )


def folder_mask_token_id(model_tokenizer: Any, folder_config: dict[str, Any], folder: Path) -> int:
    """The mask id of a model folder: its tokenizer's mask token, else the ``mask_token_id`` of a
    custom-code model's config (``transformers``' own configs may carry an unused default: XLM's 0).

    Raises:
        ValueError: when both are set and differ (naming both), or when neither is.
    """
    from_tokenizer = getattr(model_tokenizer, "mask_token_id", None)
    from_config = folder_config.get("mask_token_id") if remote_class_entry(folder_config, folder) else None
    if from_tokenizer is not None and from_config is not None and from_tokenizer != from_config:
        raise ValueError(
            f"HFMaskedLM: the tokenizer of {str(folder)!r} has mask_token_id={from_tokenizer} but its config.json has "
            f"mask_token_id={from_config}; make them agree (the model was trained with one of them)"
        )
    found = from_tokenizer if from_tokenizer is not None else from_config
    if found is None:
        raise ValueError(
            f"HFMaskedLM: {str(folder)!r} names no mask token: its tokenizer has mask_token_id=None and its "
            "config.json no mask_token_id; add mask_token_id to config.json (the id the model was trained with)"
        )
    return int(found)


def check_length_fits(folder_config: dict[str, Any], task: Task, folder: Path) -> None:
    """``prompt_len + seq_len`` of the task must fit the positions of the folder's model."""
    limit = max_sequence_length(folder_config)
    needed = task.prompt_len + task.seq_len
    if limit is not None and needed > limit[1]:
        raise ValueError(
            f"task {task.name!r} needs prompt_len + seq_len = {task.prompt_len} + {task.seq_len} = {needed} positions, "
            f"but the model in {str(folder)!r} holds {limit[0]}={limit[1]}; shorten the task's prompt or answer"
        )


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


def describe(obj: Any) -> Any:
    """A JSON description ``{"class_path", "init_args"}`` of a path, source, scheduler or task.

    ``init_args`` holds each ``__init__`` parameter that the object keeps as an attribute of the
    same name (nested parts described recursively); parameters it does not keep are listed under
    ``"not_recorded"`` (they had to be left at, or assumed to be, their defaults).
    :func:`instantiate` rebuilds the object from the description.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()  # only small ones get here (_describable)
    cls = type(obj)
    init_args: dict[str, Any] = {}
    missing: list[str] = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(obj, name, inspect.Parameter.empty)
        if value is inspect.Parameter.empty or not _describable(value):
            missing.append(name)
        else:
            init_args[name] = describe(value)
    out: dict[str, Any] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    if missing:
        out["not_recorded"] = missing
    return out


def _describable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_describable(v) for v in value)
    if isinstance(value, torch.Tensor):  # a metric path's distances: recorded while they stay small
        return value.numel() <= MAX_RECORDED_TENSOR
    # library objects (sources, schedulers) are described recursively; other objects are not
    return type(value).__module__.startswith("dflow.")


MAX_RECORDED_TENSOR = 65_536  # a [256, 256] distance matrix; larger ones are listed under not_recorded


def instantiate(description: Any) -> Any:
    """Rebuild an object from :func:`describe`'s output (``class_path`` dicts, recursively)."""
    if isinstance(description, list):
        return [instantiate(v) for v in description]
    if not isinstance(description, dict) or "class_path" not in description:
        return description
    module_name, _, class_name = description["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"class_path={description['class_path']!r} cannot be imported: {err}") from err
    kwargs = {k: instantiate(v) for k, v in description.get("init_args", {}).items()}
    return cls(**kwargs)
