"""Enumeration of every sequence of ``L`` token states: the state space the exact DP runs over.

Sequences are numbered in base ``S`` with the first position most significant (the order of
``itertools.product``), so row ``a`` of :attr:`StateSpace.states` is the sequence whose code is ``a``.
The clean sequences (every token a data value ``< V``) keep that order among themselves, which is
the base-``V`` order: column ``j`` of an exact final-sample distribution is ``all_sequences(V, L)[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# 4**8 states: the DP's largest matrices are [P, N, S**ceil(L/2)] and the network sees N sequences a step
MAX_STATES = 2**16


def all_sequences(num_values: int, length: int, device: torch.device | str | None = None) -> Tensor:
    """Every sequence of ``length`` values in ``[0, num_values)``: long ``[num_values**length, length]``,
    in base-``num_values`` order (row ``a`` encodes ``a``)."""
    codes = torch.arange(num_values**length, device=device)  # [N]
    powers = num_values ** torch.arange(length - 1, -1, -1, device=device)  # [L], most significant first
    return torch.div(codes[:, None], powers, rounding_mode="floor") % num_values  # [N, L]


def encode(x: Tensor, num_values: int) -> Tensor:
    """Row index into :func:`all_sequences` of sequences ``x`` long ``[..., L]`` -> long ``[...]``."""
    length = x.shape[-1]
    powers = num_values ** torch.arange(length - 1, -1, -1, device=x.device)  # [L]
    return (x.long() * powers).sum(-1)


@dataclass
class StateSpace:
    """All ``N = S**L`` sequences of a path's token states, and where the clean ones sit.

    Attributes:
        num_states: ``S``, states per token (``V``, or ``V + 1`` with a mask id).
        vocab_size: ``V``, data values per token.
        seq_len: ``L``.
        states: long ``[N, L]``, every sequence (row ``a`` has code ``a``).
        clean_index: long ``[V**L]``, the rows of ``states`` whose tokens are all data values, in
            base-``V`` order (entry ``j`` is the row of ``all_sequences(V, L)[j]``).
    """

    num_states: int
    vocab_size: int
    seq_len: int
    states: Tensor
    clean_index: Tensor

    @property
    def size(self) -> int:
        """``N = S**L``."""
        return self.states.shape[0]

    @classmethod
    def build(cls, num_states: int, vocab_size: int, seq_len: int, max_states: int = MAX_STATES) -> StateSpace:
        """The space of ``num_states**seq_len`` sequences; ``ValueError`` above ``max_states``."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got seq_len={seq_len!r}")
        size = num_states**seq_len
        if size > max_states:
            raise ValueError(
                f"the exact testbed enumerates every sequence of token states: {num_states}**{seq_len} = {size:,} "
                f"states is above the limit max_states={max_states:,}; use a shorter sequence or fewer symbols "
                "(or raise max_states knowing that the cost grows with the square of the states)"
            )
        states = all_sequences(num_states, seq_len)  # [N, L]
        clean_index = encode(all_sequences(vocab_size, seq_len), num_states)  # [V**L]
        return cls(num_states, vocab_size, seq_len, states, clean_index)
