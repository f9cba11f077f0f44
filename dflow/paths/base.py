"""The probability-path abstraction every path implements, and its shared input checks.

A path defines the forward (noising) process ``q(x_t | x_1)``, the per-step transition kernel
``P(x_s | x_t)`` that the MDP sampler draws from, and (where it exists) the generalized-KL loss.
The sampler and the RL code talk to a path only through this interface, so a new path is one
subclass; see docs/adding_a_path.md for a walk-through with :class:`MetricPath`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from dflow.logprobs import HeadLogits
from dflow.paths.sources import Source


@dataclass
class StepSample:
    """One sampled transition ``x_t -> x_s`` of the denoising MDP.

    Attributes:
        x_s: long ``[B, L]`` the next state.
        log_prob: float ``[B, L]`` per-token ``log P(x_s^i | x_t)`` under the kernel actually sampled.
        draw: long ``[B, L]`` the posterior draw ``xhat_1 ~ p_{1|t}`` taken at this step.
    """

    x_s: Tensor
    log_prob: Tensor
    draw: Tensor


class ProbabilityPath(ABC):
    """Base class. ``source`` gives ``p_0``; subclasses implement the four methods below."""

    source: Source
    # generalized_kl may be given dflow.logprobs.HeadLogits instead of a logits tensor (it scores
    # them through log_softmax_gather only); a path that reads the logits otherwise leaves it False
    accepts_head_logits: bool = False

    @property
    def vocab_size(self) -> int:
        """``V``, the number of data values (the width of the denoiser's logits)."""
        return self.source.vocab_size

    @property
    def num_states(self) -> int:
        """States a token can be in: ``V``, or ``V + 1`` with a mask id."""
        return self.source.num_states

    def is_clean(self, x_t: Tensor) -> Tensor:
        """bool ``[B, L]``: positions whose state has no mass under ``p_0``, so they are certainly clean
        (every non-mask token of a pure mask source). Kernels carry them over unchanged; likelihood
        estimators leave them out of re-noised scores."""
        return (self.source.probs(dtype=torch.float64, device=x_t.device) == 0)[x_t]

    @abstractmethod
    def sample_xt(self, x1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Forward process: ``x1`` long ``[B, L]``, ``t`` float ``[B]`` -> ``x_t`` long ``[B, L]``."""

    @abstractmethod
    def step_kernel(self, posterior: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``P(x_s = y | x_t)``: posterior ``[B, L, V]`` probabilities -> ``[B, L, num_states]``."""

    @abstractmethod
    def sample_step(
        self, logits: Tensor, x_t: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None = None
    ) -> StepSample:
        """Draw ``x_s`` from the kernel with posterior ``softmax(logits)`` and score what was drawn.

        ``logits`` are the final sampling logits ``[B, L, V]`` (guidance and temperature already applied).
        Hot path of the sampler: implementations should avoid materialising the full kernel.
        """

    @abstractmethod
    def step_log_prob(self, logits: Tensor, x_t: Tensor, x_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Per-token ``log P(x_s | x_t)`` ``[B, L]`` with gradient through ``logits`` ``[B, L, V]``.

        Must compute exactly what :meth:`sample_step` recorded, so on-policy ratios are exactly 1.
        """

    @abstractmethod
    def generalized_kl(
        self,
        logits: Tensor | HeadLogits,
        x1: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        weighted: bool = True,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Per-token generalized-KL loss ``[B, L]`` (negative-ELBO integrand) for logits ``[B, L, V]``.

        ``weighted=False`` drops the path's time-dependent jump coefficient (the factor every rate
        of the path carries at time ``t``: ``d_kappa_t / (1 - kappa_t)`` for a mixture path,
        ``d_beta_t`` for a metric path), leaving the per-token term that ELBO "uniform weighting"
        schemes use. A path without such a factor returns the weighted value and says so.

        Half-precision logits are scored in float32, ``chunk_size`` tokens at a time (None: a default
        from the vocabulary, :mod:`dflow.logprobs`), so no float32 ``[B, L, V]`` tensor exists beyond
        one chunk (DESIGN.md section 8). The chunking changes memory, never the values.
        ``logits`` is :class:`~dflow.logprobs.HeadLogits` only for a path that sets
        ``accepts_head_logits``.
        """

    # ------------------------------------------------------------------ shared input checks
    def _check_states(self, name: str, x: Tensor, num_states: int | None = None) -> None:
        n = self.num_states if num_states is None else num_states
        if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [B, L], got shape={tuple(x.shape)} dtype={x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n):
            raise ValueError(f"{name} values must be in [0, {n}), got range [{int(x.min())}, {int(x.max())}]")

    @staticmethod
    def _check_time(name: str, t: Tensor, batch: int) -> None:
        if not torch.is_tensor(t) or t.shape != (batch,):
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor of shape [B]=({batch},), got {shape}")
        if t.numel() and (bool((t < 0).any()) or bool((t > 1).any()) or bool(t.isnan().any())):
            raise ValueError(f"{name} must lie in [0, 1], got values {t.tolist()[:8]}")

    def _check_step(self, x_t: Tensor, t: Tensor, s: Tensor) -> None:
        self._check_states("x_t", x_t)
        self._check_time("t", t, x_t.shape[0])
        self._check_time("s", s, x_t.shape[0])
        if bool((s <= t).any()):
            bad = (s <= t).nonzero()[0, 0]
            raise ValueError(f"step requires s > t, got t={t[bad].item()} s={s[bad].item()} at batch index {int(bad)}")

    def _check_transition(self, logits: Tensor, x_t: Tensor, x_s: Tensor) -> None:
        # shapes only, so the hot path pays no device synchronisation
        if x_s.shape != x_t.shape:
            raise ValueError(f"x_s shape {tuple(x_s.shape)} must equal x_t shape {tuple(x_t.shape)}")
        self._check_posterior("logits", logits, x_t)

    def _check_posterior(self, name: str, p: Tensor | HeadLogits, x_t: Tensor) -> None:
        if p.dim() != 3 or p.shape[:2] != x_t.shape:
            raise ValueError(f"{name} must have shape [B, L, V]={(*x_t.shape, self.vocab_size)}, got {tuple(p.shape)}")
        if p.shape[-1] != self.vocab_size:
            raise ValueError(f"{name} width must equal the source's vocabulary V={self.vocab_size}, got {p.shape[-1]}")
