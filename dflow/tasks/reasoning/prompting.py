"""Prompt text -> token ids for the reasoning tasks, optionally through a chat template.

``PromptEncoder(tokenizer=None)`` uses the in-code character tokenizer, ``PromptEncoder(words=[...])``
the in-code word tokenizer over those words; ``tokenizer="path/to/folder"`` loads a real model's
tokenizer. With ``chat_template`` (the default when a folder is given) each
prompt becomes one user turn, ``apply_chat_template(..., add_generation_prompt=True)``, so the ids
end where the assistant's answer begins; the templated text is then tokenised without adding
special tokens again (the template writes its own).

Prompts are right-padded with id 0 to the task's ``prompt_len`` (dflow's convention: 0 is the pad
and null prompt). Refused with a ``ValueError`` naming the prompt: an unknown token (``[UNK]``), a
real token with id 0 when id 0 is not the tokenizer's pad token (it would read as padding), and a
prompt longer than ``prompt_len``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dflow.tasks.reasoning.tokenizer import CHAR_VOCAB, build_char_tokenizer, build_word_tokenizer, load_tokenizer


class PromptEncoder:
    """Args:
    tokenizer: ``None`` (the in-code character tokenizer) or a local folder with a saved tokenizer.
    chat_template: wrap each prompt in the tokenizer's chat template. ``None`` (default): yes for a
        folder, no for the in-code tokenizer. ``True`` with a tokenizer that has no chat template
        is a ``ValueError`` naming it.
    task: the task's name, for messages.
    words: with ``tokenizer=None``, the in-code word tokenizer over these words instead of the
        character one (:func:`~dflow.tasks.reasoning.tokenizer.build_word_tokenizer`); ignored
        with a folder, whose tokenizer is the model's own.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        chat_template: bool | None = None,
        task: str = "task",
        words: Sequence[str] | None = None,
    ) -> None:
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ValueError(f"tokenizer must be None or a folder path (str), got {tokenizer!r}")
        if chat_template is not None and not isinstance(chat_template, bool):
            raise ValueError(f"chat_template must be None, True or False, got {chat_template!r}")
        self.task = task
        self.source = tokenizer
        self.words = None if tokenizer is not None or words is None else tuple(words)
        if tokenizer is not None:
            self.tokenizer: Any = load_tokenizer(tokenizer)
        else:
            self.tokenizer = build_char_tokenizer() if self.words is None else build_word_tokenizer(self.words)
        self.chat_template = (tokenizer is not None) if chat_template is None else chat_template
        if self.chat_template and not getattr(self.tokenizer, "chat_template", None):
            kind = "character" if self.words is None else "word"
            where = f"the tokenizer in {tokenizer!r}" if tokenizer is not None else f"the in-code {kind} tokenizer"
            raise ValueError(
                f"task {task!r}: chat_template=True but {where} has no chat template; give a tokenizer folder "
                "whose tokenizer_config.json holds one, or set chat_template: false for raw prompts"
            )

    def text(self, prompt: str) -> str:
        """What is tokenised: the prompt itself, or the prompt as a user turn of the chat template."""
        if not self.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt (no padding); ``ValueError`` for unknown tokens or a real id 0."""
        texts = [self.text(p) for p in prompts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: no per-row wrapping
        if backend is not None:
            rows = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        unk, pad = self.tokenizer.unk_token_id, self.tokenizer.pad_token_id
        for prompt, row in zip(prompts, rows, strict=True):
            if unk is not None and unk in row:
                raise ValueError(f"task {self.task!r}: prompt {_short(prompt)} has {self._unknown(prompt, unk)}")
            if pad != 0 and 0 in row:
                token = self.tokenizer.convert_ids_to_tokens(0)
                raise ValueError(
                    f"task {self.task!r}: prompt {_short(prompt)} contains token {token!r} with id 0, which dflow "
                    f"reads as padding (the tokenizer's pad id is {pad}); use a tokenizer whose id 0 is its pad token"
                )
        return [list(map(int, row)) for row in rows]

    def _unknown(self, prompt: str, unk: int) -> str:
        """What in ``prompt`` the tokenizer reads as ``unk``, in words: its characters, or else the
        pieces of the in-code word tokenizer (a word missing from its list)."""
        chars = sorted({c for c in prompt if self.tokenizer(c, add_special_tokens=False)["input_ids"] == [unk]})
        if chars or self.words is None:
            return f"characters the tokenizer does not know: {chars}"
        pieces = self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(prompt)
        vocab = self.tokenizer.get_vocab()
        unknown = sorted({piece.strip() for piece, _ in pieces if piece not in vocab})
        return f"words the in-code word tokenizer does not know: {unknown} (add them to the task's word list)"

    def lengths(self, prompts: Sequence[str]) -> list[int]:
        """Token count of each prompt, with the checks of :meth:`ids`. The in-code tokenizer without
        a chat template has one token per character: counted and checked without tokenising."""
        if self.source is None and self.words is None and not self.chat_template:
            unknown = set().union(*map(set, prompts)) - CHAR_VOCAB.keys()
            if unknown:
                self.ids([next(p for p in prompts if set(p) & unknown)])  # raises, naming the prompt
            return [len(p) for p in prompts]
        return [len(row) for row in self.ids(prompts)]

    def encode(self, prompts: Sequence[str], prompt_len: int) -> Tensor:
        """Long ``[B, prompt_len]``, right-padded with 0; ``ValueError`` naming a prompt that is longer."""
        rows = self.ids(prompts)
        out = torch.zeros(len(rows), prompt_len, dtype=torch.long)  # [B, Lc]
        for b, row in enumerate(rows):
            if len(row) > prompt_len:
                raise ValueError(
                    f"task {self.task!r}: prompt {_short(prompts[b])} is {len(row)} tokens long, more than "
                    f"prompt_len={prompt_len}; raise prompt_len or leave it unset (the longest prompt of the splits)"
                )
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out


def _short(text: str, keep: int = 60) -> str:
    """``repr`` of the end of a prompt (the instance sits at the end; instructions come first)."""
    return repr(text if len(text) <= keep else "..." + text[-keep:])
