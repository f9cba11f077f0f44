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

``chunk_size`` is the number of tokens per chunk; ``None`` picks ``max(1, CHUNK_ELEMENTS // work)``
where ``work`` is the float32 elements one token needs (``V`` for a log-softmax). It only moves the
memory / kernel-launch trade-off: each token's value is computed by the same row-wise operations
whatever the chunking, so results do not depend on it. :func:`set_chunk_elements` changes the default.

Example::

    lp = log_softmax_gather(logits, x1[..., None])[..., 0]  # [B, L] float32, log p(x1)
"""

from __future__ import annotations

from collections.abc import Callable

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


def log_softmax_gather(logits: Tensor, index: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """``torch.log_softmax(logits.float(), -1).gather(-1, index)`` without a full float32 ``[..., V]`` tensor.

    Args:
        logits: ``[..., V]`` any floating dtype (bfloat16, float16, float32, float64).
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
    V, K = logits.shape[-1], index.shape[-1]
    chunk = resolve_chunk_size(chunk_size, V)
    flat = logits.reshape(-1, V)  # [N, V]; a view for contiguous logits
    out = _LogSoftmaxGather.apply(flat, index.reshape(-1, K).long(), chunk)  # [N, K]
    return out.view(index.shape)


def map_token_chunks(
    fn: Callable[..., Tensor], *tensors: Tensor, lead: int = 2, chunk_size: int | None = None, work_per_token: int = 1
) -> Tensor:
    """``fn(*tensors)`` evaluated over chunks of tokens, each under activation checkpointing.

    ``fn`` must act on each token on its own: given tensors ``[n, ...]`` (the first ``lead``
    dimensions of every input flattened into one token dimension of size ``n``) it returns ``[n, ...]``.
    With gradients on, each chunk keeps only its inputs (views of the originals) for backward and
    recomputes its intermediates there, so no intermediate exists for more than one chunk at once.
    ``work_per_token`` sizes the default chunk (float32 elements ``fn`` needs per token).

    Returns ``fn``'s output with the first ``lead`` dimensions restored.
    """
    shape = tensors[0].shape[:lead]
    flat = [x.reshape(-1, *x.shape[lead:]) for x in tensors]  # each [N, ...]
    N, chunk = flat[0].shape[0], resolve_chunk_size(chunk_size, work_per_token)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in flat)
    parts = []
    for start in range(0, N, chunk):
        args = [x[start : start + chunk] for x in flat]
        if grad:  # no randomness inside, so no RNG state to save for the recomputation
            parts.append(checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(fn(*args))
    out = torch.cat(parts) if parts else fn(*[x[:0] for x in flat])
    return out.view(*shape, *out.shape[1:])
