"""The answer of a reasoning task: ``L`` data values, each one symbol of a small alphabet.

A model writes its answer as ``L`` tokens with values in ``[0, V)``; value ``v`` stands for the
string ``symbols[v]`` (one character). With an end marker (``eos=True``) value 0 is ``[EOS]``: the
answer is the text before the first ``[EOS]`` and everything after it is ignored, so a short
answer is written and then padded with ``[EOS]`` to the fixed length ``L`` (as LLaDA pads its
completions with its end token). An answer that has no ``[EOS]`` fills all ``L`` positions.
Without an end marker (sudoku) every answer has exactly ``L`` symbols.

The alphabet is a property of the task, not of the tokenizer: ``token_ids(tokenizer)`` maps the
values to a tokenizer's ids (``[EOS]`` to its ``eos_token_id``), for a masked LM whose logits are
restricted to those ids.

Example::

    alphabet = AnswerAlphabet(("", "1", "2", "+"), eos=True)
    alphabet.encode("1+2", 5)          # [1, 3, 2, 0, 0]
    alphabet.decode([[1, 3, 2, 0, 1]])  # ["1+2"]: the 1 after [EOS] is ignored
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EOS_SYMBOL = ""  # the text of the end marker: nothing


@dataclass(frozen=True)
class AnswerAlphabet:
    """Attributes:
    symbols: the string of each data value; with ``eos``, ``symbols[0]`` is the end marker ``""``
        and the others are single characters, all distinct.
    eos: whether value 0 ends the answer.
    """

    symbols: tuple[str, ...]
    eos: bool

    def __post_init__(self) -> None:
        body = self.symbols[1:] if self.eos else self.symbols
        if self.eos and (not self.symbols or self.symbols[0] != EOS_SYMBOL):
            raise ValueError(f"with eos=True, symbols[0] must be {EOS_SYMBOL!r}, got {self.symbols[:1]!r}")
        if not body or any(len(s) != 1 for s in body) or len(set(body)) != len(body):
            raise ValueError(f"answer symbols must be distinct single characters, got {body!r}")

    def __len__(self) -> int:
        return len(self.symbols)

    def decode(self, values: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """The answer text of each row of int ``[B, L]`` values (stops at the first ``[EOS]``)."""
        out = []
        for row in np.asarray(values).tolist():
            if self.eos and 0 in row:
                row = row[: row.index(0)]
            out.append("".join(self.symbols[v] for v in row))
        return out

    def encode(self, text: str, length: int) -> list[int]:
        """The ``length`` values of ``text``, padded with ``[EOS]``; ``ValueError`` for a character
        outside the alphabet or a text that does not fit (or, without ``[EOS]``, is not exactly
        ``length`` long)."""
        index = {s: v for v, s in enumerate(self.symbols) if s != EOS_SYMBOL}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"answer {text!r} has characters {unknown} outside the alphabet {self.symbols[1:]}")
        if len(text) > length or (not self.eos and len(text) != length):
            raise ValueError(f"answer {text!r} has {len(text)} characters; the answer length is {length}")
        return [index[c] for c in text] + [0] * (length - len(text))

    def token_ids(self, tokenizer: Any, where: str = "the tokenizer") -> list[int]:
        """Tokenizer id of each value: ``[EOS]`` is ``tokenizer.eos_token_id``, every other symbol
        must be exactly one known token. ``ValueError`` naming every symbol that is not."""
        ids: list[int] = []
        missing: list[str] = []
        for symbol in self.symbols:
            if symbol == EOS_SYMBOL:
                if tokenizer.eos_token_id is None:
                    missing.append("[EOS] (the tokenizer has no eos_token)")
                    continue
                ids.append(int(tokenizer.eos_token_id))
                continue
            encoded = tokenizer(symbol, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
                missing.append(f"{symbol!r} (encodes to {encoded})")
                continue
            ids.append(int(encoded[0]))
        if missing:
            raise ValueError(
                f"{where} has no single token for the answer symbol(s) {', '.join(missing)}; the task needs "
                f"one token for each of {[s for s in self.symbols if s]}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where} maps two answer symbols to one id: {dict(zip(self.symbols, ids, strict=True))}")
        return ids


def decode_samples(x1: Any, alphabet: AnswerAlphabet, num_prompts: int) -> list[str]:
    """Answer texts of samples ``x1`` (an integer ``[B, L]`` tensor or array with values in
    ``[0, V)``, ``B == num_prompts``), for reward functions that stand without a task object.
    ``ValueError`` naming ``x1`` otherwise."""
    values = np.asarray(x1.detach().cpu() if hasattr(x1, "detach") else x1)
    if values.ndim != 2 or values.dtype.kind not in "iu":
        raise ValueError(f"x1 must be an integer [B, L] tensor, got shape {values.shape} and dtype {values.dtype}")
    if values.shape[0] != num_prompts:
        raise ValueError(f"x1 has {values.shape[0]} rows but {num_prompts} prompts were given")
    if values.size and (values.min() < 0 or values.max() >= len(alphabet)):
        raise ValueError(f"x1 values must lie in [0, {len(alphabet)}), found {values.min()}..{values.max()}")
    return alphabet.decode(values)
