"""Source distributions ``p_0`` over the states of one token.

States are the ``V`` data values ``0..V-1`` plus, for sources that carry one, the mask id ``V``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_vocab(name: str, vocab_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"{name}: vocab_size must be an int >= 1, got vocab_size={vocab_size!r}")
    return vocab_size


class Source(ABC):
    """``p_0``: a distribution over ``num_states`` token states, applied independently per token."""

    vocab_size: int
    num_states: int
    mask_id: int | None

    @abstractmethod
    def probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """``p_0`` as a vector ``[num_states]``."""

    def sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw long states of the given shape from ``p_0``."""
        if generator is not None and device is None:
            device = generator.device
        p = self.probs(device=device)
        n = math.prod(shape)
        flat = torch.multinomial(p.expand(max(n, 1), -1), 1, replacement=True, generator=generator)
        return flat[:n].reshape(tuple(shape))

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_0(x)`` elementwise (``-inf`` where ``p_0`` has no mass); ValueError for states out of range."""
        if x.dtype.is_floating_point or (x.numel() and (x.min() < 0 or x.max() >= self.num_states)):
            raise ValueError(
                f"{type(self).__name__}.log_prob: x must hold integer states in [0, {self.num_states}), "
                f"got dtype={x.dtype}, range=[{x.min().item() if x.numel() else None}, "
                f"{x.max().item() if x.numel() else None}]"
            )
        return self.probs(dtype=torch.float64, device=x.device).log()[x.long()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class MaskSource(Source):
    """All mass on the mask id ``V`` (masked / absorbing diffusion)."""

    mask_id: int

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = _check_vocab("MaskSource", vocab_size)
        self.num_states = vocab_size + 1
        self.mask_id = vocab_size

    def probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        p = torch.zeros(self.num_states, dtype=dtype, device=device)
        p[self.vocab_size] = 1.0
        return p

    def sample(self, shape, generator=None, device=None) -> Tensor:
        if generator is not None and device is None:
            device = generator.device
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)


class UniformSource(Source):
    """Uniform over the ``V`` data values (uniform discrete diffusion); no mask state."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = _check_vocab("UniformSource", vocab_size)
        self.num_states = vocab_size
        self.mask_id = None

    def probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return torch.full((self.num_states,), 1.0 / self.vocab_size, dtype=dtype, device=device)

    def sample(self, shape, generator=None, device=None) -> Tensor:
        if generator is not None and device is None:
            device = generator.device
        return torch.randint(0, self.vocab_size, tuple(shape), generator=generator, device=device)


class MixtureSource(Source):
    """Mask id with probability ``mask_prob``, else uniform over the ``V`` data values."""

    def __init__(self, vocab_size: int, mask_prob: float = 0.5) -> None:
        self.vocab_size = _check_vocab("MixtureSource", vocab_size)
        if not isinstance(mask_prob, (int, float)) or not (0.0 <= float(mask_prob) <= 1.0):
            raise ValueError(f"MixtureSource: mask_prob must be in [0, 1], got mask_prob={mask_prob!r}")
        self.mask_prob = float(mask_prob)
        self.num_states = vocab_size + 1
        self.mask_id = vocab_size

    def probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        p = torch.full((self.num_states,), (1.0 - self.mask_prob) / self.vocab_size, dtype=dtype, device=device)
        p[self.vocab_size] = self.mask_prob
        return p

    def __repr__(self) -> str:
        return f"MixtureSource(vocab_size={self.vocab_size}, mask_prob={self.mask_prob})"
