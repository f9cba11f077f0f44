"""The ``transformers`` masked-LM builder: :class:`HFMaskedLM` (a fresh model over the task's
tokenizer, or a saved one with its own tokenizer translated to the task's ids), and the checks it
makes on a model folder (its mask token, its number of positions). The other builders are in
:mod:`dflow.lightning.builders` (and the block-decoding dLLMs' in :mod:`dflow.lightning.block_builders`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dflow.lightning.builders import DenoiserBuilder, check_flag, check_task_path, resolve_path
from dflow.lightning.tokens import load_model_tokenizer, translate_token_ids
from dflow.models import HFMaskedLMDenoiser
from dflow.models.hf_loading import (
    check_remote_code_allowed,
    max_sequence_length,
    read_folder_config,
    remote_class_entry,
)
from dflow.paths import ProbabilityPath
from dflow.tasks import Task


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
