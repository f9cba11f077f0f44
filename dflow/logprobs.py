"""Log-probabilities and per-token losses computed a chunk of tokens at a time (DESIGN.md section 8).

A denoiser's logits ``[B, L, V]`` may be half precision, and ``V`` may be large (262k for
DiffusionGemma). ``torch.log_softmax(logits.float(), -1).gather(...)`` materialises a float32
``[B, L, V]`` tensor that autograd keeps for the backward pass, and the backward pass makes two more;
at that vocabulary these, not the network, are the peak. Here the float32 work exists for one chunk
of tokens (rows of the flattened ``[B * L, V]``) at a time:

- :func:`log_softmax_gather` equals ``torch.log_softmax(logits.float(), -1).gather(-1, index)``. Its
  autograd function keeps only the input logits and the per-token logsumexp, and the backward pass
  recomputes the softmax chunk by chunk: ``d logits = g_k * onehot(index_k) - (sum_k g_k) softmax``.
- :func:`map_token_chunks` applies any per-token function to chunks of tokens under activation
  checkpointing, for losses whose backward is not worth writing by hand (the metric path's
  generalized KL).
- :class:`HeadLogits` goes one step further: the logits of a denoiser that can give its last hidden
  state ``[B, L, D]`` and its output head separately (:func:`scoring_logits`). ``log_softmax_gather``
  then makes each chunk's logits from the hidden state under activation checkpointing, so neither
  the logits nor their gradient ever exist for more than one chunk of tokens; what an RL update
  keeps per scored unit until its backward is the hidden state (``D`` values per token, not ``V``).
  Denoisers opt in with a ``head_logits(x_t, t, cond) -> HeadLogits`` method
  (:class:`~dflow.models.DFlowTransformer` has one); the others are scored from their logits.

``chunk_size`` is the number of tokens per chunk; ``None`` picks ``max(1, CHUNK_ELEMENTS // work)``
where ``work`` is the float32 elements one token needs (``V`` for a log-softmax). It only moves the
memory / kernel-launch trade-off: each token's value is computed by the same row-wise operations
whatever the chunking, so results do not depend on it. :func:`set_chunk_elements` changes the default.

Example::

    lp = log_softmax_gather(logits, x1[..., None])[..., 0]  # [B, L] float32, log p(x1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.utils.checkpoint import checkpoint

# 2**24 float32 elements = 64 MiB per chunk: at V = 262,144 that is 64 tokens, enough that the
# per-chunk kernel launches are a small share of the work on a GPU, and small beside any model that
# has such a vocabulary. Tests pass tiny chunk sizes explicitly.
CHUNK_ELEMENTS = 2**24


def set_chunk_elements(elements: int) -> int:
    """Set the default float32 elements per chunk (process-wide); returns the previous value."""
    global CHUNK_ELEMENTS
    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 1:
        raise ValueError(f"set_chunk_elements: elements must be an int >= 1, got {elements!r}")
    previous, CHUNK_ELEMENTS = CHUNK_ELEMENTS, elements
    return previous


def resolve_chunk_size(chunk_size: int | None, work_per_token: int) -> int:
    """Tokens per chunk: ``chunk_size`` as given (checked), else from :data:`CHUNK_ELEMENTS`."""
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(1, work_per_token))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (tokens per chunk) or None, got chunk_size={chunk_size!r}")
    return chunk_size


# scoring_logits() hands out HeadLogits when True (set_fused_head); benchmarks switch it off to
# measure the logits path against it
FUSED_HEAD = True


def set_fused_head(enabled: bool) -> bool:
    """Let :func:`scoring_logits` fuse the output head into the scoring (process-wide; default on);
    returns the previous setting. Values are the same either way up to float rounding."""
    global FUSED_HEAD
    if not isinstance(enabled, bool):
        raise ValueError(f"set_fused_head: enabled must be a bool, got {enabled!r}")
    previous, FUSED_HEAD = FUSED_HEAD, enabled
    return previous


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half / bfloat16 / float32 inputs, float64 for float64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


class _LogSoftmaxGather(torch.autograd.Function):
    """``log_softmax(logits)[index]`` over rows ``[N, V]``, chunked; saves logits and logsumexp only."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, index: Tensor, chunk: int) -> Tensor:
        N, K = index.shape
        dtype = compute_dtype(logits.dtype)
        out = torch.empty(N, K, dtype=dtype, device=logits.device)  # [N, K]
        lse = torch.empty(N, dtype=dtype, device=logits.device)  # [N]
        for start in range(0, N, chunk):
            rows = slice(start, start + chunk)
            x = logits[rows].to(dtype)  # [n, V] float32: a copy for half-precision logits only
            lse[rows] = torch.logsumexp(x, dim=-1)
            out[rows] = x.gather(-1, index[rows]) - lse[rows, None]
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, index, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)  # [N, V] in the logits' dtype: the one full tensor backward needs
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            g = grad_out[rows].to(lse.dtype)  # [n, K]
            # d/dx log softmax(x)_k = onehot_k - softmax(x): sum over the K gathered entries. When the
            # logits are already in the compute dtype, work in the gradient's own rows (no temporary).
            x = logits[rows]  # [n, V]
            if x.dtype == lse.dtype:
                part = torch.sub(x, lse[rows, None], out=grad[rows])
            else:  # one float32 copy of the chunk, worked on in place
                part = x.to(lse.dtype).sub_(lse[rows, None])
            part.exp_().mul_(-g.sum(-1, keepdim=True)).scatter_add_(-1, index[rows], g)  # [n, V]
            if part.dtype != grad.dtype:
                grad[rows] = part
        return grad, None, None


@dataclass(frozen=True)
class HeadLogits:
    """Logits ``[..., V]`` held as the hidden state ``[..., D]`` they are computed from, and the head.

    Attributes:
        hidden: ``[..., D]`` the denoiser's last hidden state (with gradient when it was computed with one).
        head: maps rows ``[n, D]`` to logits ``[n, V]``, row by row (the output layer, plus whatever the
            denoiser applies after it: a temperature, a soft cap). Called once per chunk of tokens.
        vocab_size: ``V``.

    Reads like a logits tensor where the scoring code checks one (``shape``, ``dim()``);
    :meth:`materialize` gives the full tensor for code that needs every logit.
    """

    hidden: Tensor
    head: Callable[[Tensor], Tensor]
    vocab_size: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.vocab_size))

    def dim(self) -> int:
        return self.hidden.dim()

    def with_head(self, wrap: Callable[[Tensor], Tensor]) -> HeadLogits:
        """The same hidden state with ``wrap`` applied to the head's output (e.g. a temperature)."""
        head = self.head
        return HeadLogits(self.hidden, lambda h: wrap(head(h)), self.vocab_size)

    def materialize(self) -> Tensor:
        """The full logits ``[..., V]`` (as the denoiser's forward would return them)."""
        return self.head(self.hidden)


def can_fuse_head(policy: Any) -> bool:
    """Whether :func:`scoring_logits` gives ``policy``'s :class:`HeadLogits`: it has a ``head_logits``
    method and is neither sharded nor compiled. FSDP2 gathers a sharded root's own weights (the
    embeddings, the head) in its forward hook, which a call of another method skips; a
    ``torch.compile`` wrapper would run the method uncompiled."""
    if not FUSED_HEAD or not callable(getattr(policy, "head_logits", None)) or hasattr(policy, "_orig_mod"):
        return False
    if isinstance(policy, torch.nn.Module):
        return not any(type(p).__name__ == "DTensor" for p in policy.parameters())
    return True


def scoring_logits(policy: Any, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor | HeadLogits:
    """What a likelihood estimator scores: ``policy.head_logits(x_t, t, cond)`` where the policy has
    it (and :func:`set_fused_head` is on, and the policy is neither sharded nor compiled), else the
    logits ``policy(x_t, t, cond)``. Both go to :func:`log_softmax_gather` unchanged."""
    if can_fuse_head(policy):
        return policy.head_logits(x_t, t, cond)
    return policy(x_t, t, cond)


def materialize(logits: Tensor | HeadLogits) -> Tensor:
    """The logits tensor, from a tensor (itself) or :class:`HeadLogits`."""
    return logits.materialize() if isinstance(logits, HeadLogits) else logits


def _head_log_softmax_gather(logits: HeadLogits, index: Tensor, chunk_size: int | None) -> Tensor:
    """:func:`log_softmax_gather` for :class:`HeadLogits`: each chunk's logits made from its rows of
    the hidden state and scored under activation checkpointing (recomputed in backward)."""
    head = logits.head

    def rows(h: Tensor, idx: Tensor) -> Tensor:  # [n, D], [n, K] -> [n, K]
        x = head(h)  # [n, V]
        return torch.log_softmax(x.to(compute_dtype(x.dtype)), dim=-1).gather(-1, idx)

    return map_token_chunks(  # [..., K]
        rows,
        logits.hidden,
        index.long(),
        lead=index.dim() - 1,
        chunk_size=chunk_size,
        work_per_token=3 * logits.vocab_size,  # the logits, their float32 copy and the log-softmax
        always_checkpoint=True,  # the head's weight has a gradient even where the hidden state has none
    )


def log_softmax_gather(logits: Tensor | HeadLogits, index: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """``torch.log_softmax(logits.float(), -1).gather(-1, index)`` without a full float32 ``[..., V]`` tensor.

    Args:
        logits: ``[..., V]`` any floating dtype (bfloat16, float16, float32, float64), or
            :class:`HeadLogits` (then no chunk's logits outlive it, in forward or backward).
        index: long ``[..., K]`` with the same leading shape: the entries to read (``K = 1`` for one
            target per token), each in ``[0, V)``.
        chunk_size: tokens per chunk (see the module docstring); None picks one from ``V``.

    Returns:
        ``[..., K]`` log-probabilities in float32 (float64 for float64 logits), differentiable in
        ``logits`` (first order).
    """
    if logits.dim() < 1 or index.dim() != logits.dim() or index.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"log_softmax_gather: index must be [..., K] with the leading shape of logits [..., V], "
            f"got logits {tuple(logits.shape)} and index {tuple(index.shape)}"
        )
    if isinstance(logits, HeadLogits):
        return _head_log_softmax_gather(logits, index, chunk_size)
    V, K = logits.shape[-1], index.shape[-1]
    chunk = resolve_chunk_size(chunk_size, V)
    flat = logits.reshape(-1, V)  # [N, V]; a view for contiguous logits
    out = _LogSoftmaxGather.apply(flat, index.reshape(-1, K).long(), chunk)  # [N, K]
    return out.view(index.shape)


def map_token_chunks(
    fn: Callable[..., Tensor],
    *tensors: Tensor,
    lead: int = 2,
    chunk_size: int | None = None,
    work_per_token: int = 1,
    always_checkpoint: bool = False,
) -> Tensor:
    """``fn(*tensors)`` evaluated over chunks of tokens, each under activation checkpointing.

    ``fn`` must act on each token on its own: given tensors ``[n, ...]`` (the first ``lead``
    dimensions of every input flattened into one token dimension of size ``n``) it returns ``[n, ...]``.
    With gradients on, each chunk keeps only its inputs (views of the originals) for backward and
    recomputes its intermediates there, so no intermediate exists for more than one chunk at once.
    ``work_per_token`` sizes the default chunk (float32 elements ``fn`` needs per token).
    ``always_checkpoint``: checkpoint whenever gradients are on, also when no input needs one (``fn``
    uses parameters of its own).

    Returns ``fn``'s output with the first ``lead`` dimensions restored.
    """
    shape = tensors[0].shape[:lead]
    flat = [x.reshape(-1, *x.shape[lead:]) for x in tensors]  # each [N, ...]
    N, chunk = flat[0].shape[0], resolve_chunk_size(chunk_size, work_per_token)
    grad = torch.is_grad_enabled() and (always_checkpoint or any(x.requires_grad for x in flat))
    parts = []
    for start in range(0, N, chunk):
        args = [x[start : start + chunk] for x in flat]
        if grad:  # no randomness inside, so no RNG state to save for the recomputation
            parts.append(checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(fn(*args))
    out = torch.cat(parts) if parts else fn(*[x[:0] for x in flat])
    return out.view(*shape, *out.shape[1:])
