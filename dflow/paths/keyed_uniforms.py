"""Keyed uniforms behind the metric path's Monte-Carlo log-probability (``MetricPath._mc_log_prob``):
uniforms that depend only on the transition ``(x_t, x_s, t, s)``, the position, the draw index and a
seed, never on the row of the batch. They are common random numbers for the transition itself: the
old policy, the new one and the reference score a sample with the same draws wherever its row sits
in a shuffled mini-batch."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MERSENNE31 = 2**31 - 1


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' "lowbias32"): nearby inputs give unrelated outputs."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@functools.lru_cache(maxsize=16)
def _powers(length: int) -> Tensor:
    """``1_000_003**i mod (2**31 - 1)`` for ``i < length``, int64 on the CPU."""
    out, value = [], 1
    for _ in range(length):
        out.append(value)
        value = value * 1_000_003 % _MERSENNE31
    return torch.tensor(out, dtype=torch.int64)


def _row_hash(x: Tensor) -> Tensor:
    """int64 ``[B]`` hash of each row of ``x`` ``[B, L]``: a polynomial modulo ``2**31 - 1`` (each term
    is below ``2**46``, so the sum of up to ``2**16`` terms cannot overflow)."""
    return (x.long() * _powers(x.shape[1]).to(x.device)).sum(-1) % _MERSENNE31


def keyed_uniforms(seed: int, x_t: Tensor, x_s: Tensor, t: Tensor, s: Tensor, n: int) -> Tensor:
    """float64 ``[B, L, n]`` uniforms in ``(0, 1)`` that depend only on the transition, the position,
    the draw index and ``seed`` (not on the row of the batch)."""
    B, L = x_t.shape
    tbits = (t.double() * 2**24).round().long() * 4099 + (s.double() * 2**24).round().long()  # [B]
    key = _mix32(_mix32(_row_hash(x_t) + seed) ^ _row_hash(x_s))
    key = _mix32(key ^ _mix32(tbits))  # [B]
    pos = torch.arange(L, device=x_t.device)[:, None] * n + torch.arange(n, device=x_t.device)  # [L, n]
    bits = _mix32(_mix32(key[:, None, None] ^ _mix32(pos + 0x9E3779B9)) + seed)  # [B, L, n]
    return (bits.double() + 0.5) / 2**32
