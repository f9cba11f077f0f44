"""Pretraining losses: sibling ``nn.Module``s with one signature, chosen in YAML by ``class_path``.

``loss(logits [B, L, V], x1 [B, L], x_t [B, L], t [B], path) -> scalar``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from dflow.logprobs import HeadLogits, log_softmax_gather
from dflow.paths import ProbabilityPath


class PretrainLoss(nn.Module, ABC):
    """Base class of the pretraining losses (no parameters; a module so YAML can swap it)."""

    @abstractmethod
    def forward(self, logits: Tensor | HeadLogits, x1: Tensor, x_t: Tensor, t: Tensor, path: ProbabilityPath) -> Tensor:
        """Scalar loss for the posterior ``logits`` ``[B, L, V]`` at ``(x_t [B, L], t [B])`` of data ``x1``."""

    def takes_head_logits(self, path: ProbabilityPath) -> bool:
        """Whether :meth:`forward` may be given :class:`~dflow.logprobs.HeadLogits` (it reads the logits
        through ``log_softmax_gather`` only); then ``PretrainModule`` passes them where the denoiser has
        them, and no logits outlive one chunk of tokens. Default False: always a logits tensor."""
        return False


def noisy_positions(x_t: Tensor, path: ProbabilityPath) -> Tensor:
    """bool ``[B, L]``: positions whose state ``p_0`` can produce, i.e. that may still be noise.

    A state with no mass under ``p_0`` (any data value of a pure mask source) is certainly clean:
    the sampler's kernel carries it over unchanged whatever the posterior says, so the posterior
    there is never used. With a uniform or mixture source every state may be noise.
    """
    p0 = path.source.probs(dtype=torch.float32, device=x_t.device)  # [num_states]
    return p0[x_t.long()] > 0


class CrossEntropyLoss(PretrainLoss):
    """``- log p_{1|t}(x_1^i | x_t)`` averaged over the positions that may still be noise.

    For a mask source those are the masked positions (MDLM / LLaDA's masked-token cross-entropy
    without their ``1/t`` weight): carry-over tokens are excluded because the sampler never uses
    the posterior there (see :func:`noisy_positions`), and predicting a visible token is the
    trivial copy that would dilute the gradient of the real task. For uniform and mixture sources
    every position counts, since any token may be noise (URSA / FUDOKI-style cross-entropy).
    The mean is over all counted tokens of the batch (a batch with none gives 0).
    """

    def takes_head_logits(self, path: ProbabilityPath) -> bool:
        return True

    def forward(self, logits: Tensor | HeadLogits, x1: Tensor, x_t: Tensor, t: Tensor, path: ProbabilityPath) -> Tensor:
        # float32, a chunk of tokens at a time: no float32 [B, L, V] copy of half-precision logits
        ce = -log_softmax_gather(logits, x1[..., None])[..., 0]  # [B, L]
        counted = noisy_positions(x_t, path).to(ce.dtype)  # [B, L]
        return (ce * counted).sum() / counted.sum().clamp_min(1.0)


class GeneralizedKLLoss(PretrainLoss):
    """Mean over all tokens of the path's generalized KL (``path.generalized_kl``, DESIGN.md 3).

    Its expectation over ``t ~ U[0, 1]`` is the negative ELBO per token up to a constant (for a mask
    source, the MDLM bound). The jump coefficient ``d_kappa / (1 - kappa)`` grows without bound as
    ``t -> 1``, so train it with ``PretrainModule(t_max=...)`` a little below 1.
    """

    def takes_head_logits(self, path: ProbabilityPath) -> bool:
        return bool(getattr(path, "accepts_head_logits", False))

    def forward(self, logits: Tensor | HeadLogits, x1: Tensor, x_t: Tensor, t: Tensor, path: ProbabilityPath) -> Tensor:
        return path.generalized_kl(logits, x1, x_t, t).mean()  # scored in float32 chunk by chunk
