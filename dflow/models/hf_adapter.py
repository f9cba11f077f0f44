"""Use a ``transformers`` masked LM (BERT, RoBERTa, ...) or a custom-code masked dLLM (LLaDA, Dream) as a denoiser.

A masked LM already predicts clean tokens at masked positions from bidirectional context, which is
what ``p_{1|t}`` of a mask-source path is. The adapter only translates between dflow's states and
the tokenizer's ids:

- data value ``v`` in ``0..V-1`` -> ``data_token_ids[v]``; mask state ``V`` -> ``mask_token_id``;
- the prompt ``cond`` (tokenizer ids ``[B, Lc]``) is prepended; ``cond=None`` is the all-zero
  prompt;
- the MLM runs with a full attention mask, and the logits of the ``L`` output positions are
  restricted to the ``data_token_ids`` columns (in that order) -> ``[B, L, V]``.

It is time-agnostic (``t`` is checked, then ignored), like FUDOKI, URSA and LLaDA.

A folder whose ``config.json`` has an ``auto_map`` ships its own modelling code (LLaDA, Dream); it
loads only with ``trust_remote_code=True`` (see :mod:`dflow.models.hf_loading` for the checks), is
called as ``model(input_ids=...)`` with no attention mask (these models attend to every position
by design), and may take its mask id from the config's ``mask_token_id``. Dream predicts the token
*after* each position, as the autoregressive model it was adapted from did: ``shift_logits=True``
reads position ``i``'s logits from output position ``i - 1`` (position 0 keeps its own, as Dream's
``generate`` does).

With ``gradient_checkpointing=True`` the MLM's own checkpointing is switched on (non-reentrant), or
a ``ValueError`` names the MLM class when it has none (ALBERT, for one). ``transformers`` layers
checkpoint only in train mode, and dflow's RL losses run the denoiser in eval mode (no dropout); so
while autograd records, the adapter lets the checkpointed layers see train mode for the call
(their flag only: dropout and the other submodules stay in eval mode).

Example::

    denoiser = HFMaskedLMDenoiser("ckpt/tiny-bert", data_token_ids=[5, 6, 7, 8], mask_token_id=4)
    logits = denoiser(x_t, t, cond)   # x_t in 0..4 (4 = mask) -> logits [B, L, 4]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from dflow.models.checkpointing import (
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_gradient_checkpointing,
)
from dflow.models.hf_loading import load_masked_model, max_sequence_length


def _is_integer_tensor(x: Tensor) -> bool:
    return not (x.dtype.is_floating_point or x.is_complex() or x.dtype == torch.bool)


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16`` from ``torch.bfloat16`` or ``"bfloat16"``; ``ValueError`` naming anything else."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as 'bfloat16' or 'float32', got dtype={dtype!r}")
    return found


def input_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the model's input embedding (ids ``0..n-1`` can be fed); the config's ``vocab_size``
    for custom code that does not expose its embedding."""
    try:
        # typed nn.Module by transformers; an nn.Embedding (or a subclass) in its masked LMs
        return cast(nn.Embedding, model.get_input_embeddings()).num_embeddings
    except (NotImplementedError, AttributeError):
        return int(model.config.vocab_size)


def resolve_mask_token_id(given: int | None, from_config: int | None) -> int:
    """The mask id: ``given``, else ``from_config`` (a custom-code model config's ``mask_token_id``);
    ``ValueError`` when neither is set or when they disagree (a tokenizer and a config that number
    the mask differently)."""
    if given is not None:
        if from_config is not None and given != from_config:
            raise ValueError(
                f"mask_token_id={given!r} (given, e.g. from the tokenizer) disagrees with the model config's "
                f"mask_token_id={from_config!r}; the model was trained with one of them: fix the tokenizer or config"
            )
        return given
    if from_config is None:
        raise ValueError(
            "mask_token_id: none given, and no custom-code model config with a mask_token_id to take it from; "
            "pass the tokenizer's mask id as mask_token_id"
        )
    return int(from_config)


class HFMaskedLMDenoiser(nn.Module):
    """A ``transformers`` masked LM seen as a denoiser ``(x_t [B, L], t [B], cond) -> [B, L, V]``.

    Args:
        model: a local directory holding a saved masked LM (loaded with ``local_files_only``), or a
            ``PretrainedConfig`` / dict with a ``"model_type"`` key (randomly initialised with
            ``AutoModelForMaskedLM.from_config``).
        data_token_ids: tokenizer id of each data value ``0..V-1``; unique, within the MLM's vocab.
        mask_token_id: tokenizer id fed for the mask state ``V``; not one of ``data_token_ids``.
        prompt_len: ``Lc``; ``cond`` must be ``[B, Lc]``, and ``cond=None`` means ``Lc`` zeros.
        pad_token_id: tokenizer id that dflow's prompt id ``0`` (pad / null) stands for. ``None``
            (default) passes prompt ids unchanged, right when the tokenizer pads with 0 (BERT);
            otherwise every 0 in ``cond`` is replaced by it (so id 0 cannot be a real prompt token).
        prompt_token_ids: a table from the task's prompt ids to the model's token ids (entry ``i``
            is the model id of the task's token ``i``), for a model whose own tokenizer numbers
            tokens differently from the task's; ``cond`` then holds task ids, and ``pad_token_id``
            is not used. ``None`` (default): ``cond`` already holds model ids.
        gradient_checkpointing: switch on the MLM's own gradient checkpointing (see the module
            doc); ``ValueError`` naming the MLM class when it does not support it.
        trust_remote_code: allow a folder that ships its own modelling code (``auto_map`` in its
            ``config.json``: LLaDA, Dream) to run it. Without it such a folder is refused before
            any of its code is imported.
        shift_logits: read position ``i``'s logits from output position ``i - 1`` (Dream); see the
            module doc.
        dtype: load a folder's weights in this dtype (``torch.bfloat16`` or ``"bfloat16"`` for the
            released dLLM sizes); ``None`` keeps ``transformers``' default (float32).

    ``mask_token_id=None`` takes a custom-code model config's ``mask_token_id`` (LLaDA: 126336); a
    given id that disagrees with it is refused, naming both. A ``transformers`` masked LM needs the id.
    """

    data_token_ids: Tensor  # buffers (register_buffer in __init__)
    state_to_token: Tensor
    prompt_token_ids: Tensor | None

    def __init__(
        self,
        model: str | os.PathLike | PretrainedConfig | Mapping[str, Any],
        data_token_ids: Sequence[int],
        mask_token_id: int | None = None,
        prompt_len: int = 0,
        pad_token_id: int | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        shift_logits: bool = False,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__()
        for name, flag in (
            ("gradient_checkpointing", gradient_checkpointing),
            ("trust_remote_code", trust_remote_code),
            ("shift_logits", shift_logits),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        self.mlm, self.custom_code = self._build_mlm(model, trust_remote_code, as_dtype(dtype))
        self.shift_logits = shift_logits
        if gradient_checkpointing:
            self.gradient_checkpointing_enable()
        model_vocab = input_vocab_size(self.mlm)
        # only custom code: transformers' own configs may carry an unused default (XLM: 0, its mask is 5)
        from_config = getattr(self.mlm.config, "mask_token_id", None) if self.custom_code else None
        mask_token_id = resolve_mask_token_id(mask_token_id, from_config)
        ids = list(data_token_ids)
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise ValueError(f"data_token_ids must be a non-empty list of ints, got {data_token_ids!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"data_token_ids must be unique, got {ids}")
        bad = [i for i in ids if not 0 <= i < model_vocab]
        if bad:
            raise ValueError(f"data_token_ids must be in [0, {model_vocab}) (the MLM's vocab), got {bad}")
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
            raise ValueError(f"mask_token_id must be an int, got {mask_token_id!r}")
        if not 0 <= mask_token_id < model_vocab:
            raise ValueError(f"mask_token_id must be in [0, {model_vocab}), got {mask_token_id}")
        if mask_token_id in ids:
            raise ValueError(f"mask_token_id ({mask_token_id}) must not be one of data_token_ids {ids}")
        if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 0:
            raise ValueError(f"prompt_len must be an int >= 0, got {prompt_len!r}")
        if pad_token_id is not None and (
            isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or not 0 <= pad_token_id < model_vocab
        ):
            raise ValueError(f"pad_token_id must be None or in [0, {model_vocab}), got {pad_token_id!r}")
        if prompt_token_ids is not None:
            table = list(prompt_token_ids)
            wrong = [i for i in table if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < model_vocab]
            if not table or wrong:
                raise ValueError(
                    f"prompt_token_ids must be a non-empty list of model ids in [0, {model_vocab}), "
                    f"got {wrong or table}"
                )
            self.register_buffer("prompt_token_ids", torch.tensor(table, dtype=torch.long), persistent=False)
        else:
            self.prompt_token_ids = None
        self.prompt_len = prompt_len
        self.pad_token_id = pad_token_id
        self.model_vocab_size = model_vocab
        # non-persistent: the state dict stays exactly the MLM's (under "mlm."); they follow .to()
        data_ids = torch.tensor(ids, dtype=torch.long)  # [V]
        self.register_buffer("data_token_ids", data_ids, persistent=False)
        state_ids = torch.tensor(ids + [mask_token_id], dtype=torch.long)  # [V + 1]: state -> token
        self.register_buffer("state_to_token", state_ids, persistent=False)

    @staticmethod
    def _build_mlm(model: Any, trust_remote_code: bool, dtype: torch.dtype | None) -> tuple[PreTrainedModel, bool]:
        """The model, and whether it runs a folder's own code (then it is called without a mask)."""
        if isinstance(model, PretrainedConfig):
            return AutoModelForMaskedLM.from_config(model), False
        if isinstance(model, Mapping):
            kwargs = dict(model)
            model_type = kwargs.pop("model_type", None)
            if model_type is None:
                raise ValueError(f"model given as a dict needs a 'model_type' key, got keys {sorted(kwargs)}")
            return AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **kwargs)), False
        if isinstance(model, (str, os.PathLike)):
            loaded = load_masked_model(model, trust_remote_code=trust_remote_code, dtype=dtype)
            return loaded.model, loaded.custom_code
        raise ValueError(f"model must be a directory path, a PretrainedConfig or a dict, got {type(model).__name__}")

    def gradient_checkpointing_enable(self) -> None:
        """Switch on the MLM's gradient checkpointing; ``ValueError`` naming its class if it has none."""
        enable_gradient_checkpointing(self.mlm)

    def gradient_checkpointing_disable(self) -> None:
        """Switch the MLM's gradient checkpointing off."""
        disable_gradient_checkpointing(self.mlm)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the MLM checkpoints its layers while autograd records."""
        return is_gradient_checkpointing(self.mlm)

    @property
    def vocab_size(self) -> int:
        """``V``, the number of data values (the logits' last dimension)."""
        return self.data_token_ids.numel()

    @property
    def num_states(self) -> int:
        """``V + 1``: the data values and the mask state ``V``."""
        return self.vocab_size + 1

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Logits ``[B, L, V]`` for ``x_t`` long ``[B, L]`` (states ``0..V``), ``t`` ``[B]``
        (ignored), ``cond`` tokenizer ids ``[B, Lc]`` or ``None``."""
        batch, length = self._check_inputs(x_t, t, cond)
        input_ids = self.state_to_token[x_t.long()]  # [B, L]
        if self.prompt_len > 0:
            prompt = x_t.new_zeros(batch, self.prompt_len) if cond is None else cond  # [B, Lc]
            prompt = prompt.to(device=input_ids.device, dtype=torch.long)
            if self.prompt_token_ids is not None:
                prompt = self.prompt_token_ids[prompt]  # task ids -> the model's own ids
            elif self.pad_token_id is not None:
                prompt = prompt.masked_fill(prompt == 0, self.pad_token_id)
            input_ids = torch.cat([prompt, input_ids], dim=1)  # [B, Lc + L]
        with self._checkpointing_in_eval_mode():
            if self.custom_code:  # LLaDA / Dream attend everywhere without a mask; Dream's code rejects a 2-D one
                output = self.mlm(input_ids=input_ids)
            else:
                output = self.mlm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        if not self.shift_logits:
            logits = output.logits[:, self.prompt_len :, :]  # [B, L, model_vocab]
            return logits.index_select(-1, self.data_token_ids)  # [B, L, V]
        data_logits = output.logits.index_select(-1, self.data_token_ids)  # [B, Lc + L, V]
        # position Lc + i is predicted at output position Lc + i - 1; the very first keeps its own
        source = (torch.arange(length, device=data_logits.device) + self.prompt_len - 1).clamp_min(0)  # [L]
        return data_logits[:, source, :]  # [B, L, V]

    @contextmanager
    def _checkpointing_in_eval_mode(self) -> Iterator[None]:
        """Let checkpointed layers checkpoint in eval mode while autograd records.

        ``transformers`` gates checkpointing on the layer's (or encoder's) own ``training`` flag.
        Only the modules that carry ``gradient_checkpointing = True`` see ``training = True``, and
        only for this call: their submodules (dropout, attention's dropout probability) keep eval
        mode, so the logits are the eval-mode logits. The recompute during backward runs after
        the flags are restored; a layer that read its own flag for something else would recompute
        differently, which non-reentrant checkpointing reports as an error rather than hiding.
        """
        flipped = []
        if not self.training and torch.is_grad_enabled():
            flipped = [
                m for m in self.mlm.modules() if getattr(m, "gradient_checkpointing", False) is True and not m.training
            ]
        for module in flipped:
            module.training = True
        try:
            yield
        finally:
            for module in flipped:
                module.training = False

    def _check_inputs(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> tuple[int, int]:
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or not _is_integer_tensor(x_t):
            is_tensor = isinstance(x_t, Tensor)
            desc = f"{tuple(x_t.shape)} {x_t.dtype}" if is_tensor else type(x_t).__name__
            raise ValueError(f"x_t must be an integer tensor of shape [B, L], got {desc}")
        batch, length = x_t.shape
        if x_t.numel() > 0:
            low, high = torch.aminmax(x_t)
            if low.item() < 0 or high.item() >= self.num_states:
                raise ValueError(
                    f"x_t values must be in [0, {self.num_states}) (mask state {self.vocab_size}), "
                    f"got min {low.item()} and max {high.item()}"
                )
        positions = max_sequence_length(self.mlm.config)
        if positions is not None and self.prompt_len + length > positions[1]:
            field, most = positions
            needed = f"x_t length {length} plus prompt_len {self.prompt_len}"
            raise ValueError(f"{needed} exceeds the MLM's {field} ({most})")
        if not isinstance(t, Tensor) or tuple(t.shape) != (batch,):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must have shape [{batch}], got {shape}")
        if cond is not None:
            if not isinstance(cond, Tensor) or tuple(cond.shape) != (batch, self.prompt_len):
                shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
                raise ValueError(f"cond must have shape [{batch}, {self.prompt_len}], got {shape}")
            if not _is_integer_tensor(cond):
                raise ValueError(f"cond must be an integer tensor of tokenizer ids, got {cond.dtype}")
            if cond.numel() > 0:
                low, high = torch.aminmax(cond)
                limit = self.model_vocab_size if self.prompt_token_ids is None else self.prompt_token_ids.numel()
                if low.item() < 0 or high.item() >= limit:
                    raise ValueError(f"cond ids must be in [0, {limit}), got min {low.item()} and max {high.item()}")
        return batch, length

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the wrapped MLM (config + safetensors, and a custom-code model's .py files); reload
        with ``HFMaskedLMDenoiser(path)`` (plus ``trust_remote_code=True`` for custom code)."""
        self.mlm.save_pretrained(path)
