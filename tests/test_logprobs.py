"""Chunked log-probabilities (dflow/logprobs.py): the same values and gradients as the full
``log_softmax(logits).gather`` for every chunking, and no float32 ``[N, V]`` tensor beyond one chunk.

The reference is today's formula in the input's precision promoted to float32 (float64 stays float64).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dflow.logprobs import log_softmax_gather, map_token_chunks, resolve_chunk_size, set_chunk_elements
from dflow.rl.likelihood import token_scores

B, L, V = 3, 5, 11  # N = 15 tokens: chunk sizes 4 and 7 do not divide it
CHUNKS = [1, 4, 7, 15, 64, None]  # one token, odd sizes, exactly N, larger than the input, the default


def _reference(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.log_softmax(logits.to(dtype), dim=-1).gather(-1, index)


def _inputs(dtype: torch.dtype, K: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, L, V, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    index = torch.randint(0, V, (B, L, K), generator=g)
    index[0, 0] = 2  # the same entry twice (K > 1): gradients add
    weight = torch.randn(B, L, K, generator=g, dtype=torch.float64)  # a generic upstream gradient
    return logits, index, weight


def _value_and_grad(fn, logits, index, weight):
    out = fn(logits, index)
    (grad,) = torch.autograd.grad((out * weight.to(out.dtype)).sum(), logits)
    return out, grad


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_log_softmax_gather(dtype, K, chunk) -> None:
    logits, index, weight = _inputs(dtype, K)
    out, grad = _value_and_grad(lambda x, i: log_softmax_gather(x, i, chunk_size=chunk), logits, index, weight)
    ref, ref_grad = _value_and_grad(_reference, logits, index, weight)
    assert out.dtype == dtype and out.shape == (B, L, K)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_bfloat16_logits_are_scored_in_float32(chunk) -> None:
    # Today's formula on bf16 logits would round the log-probs to bf16; the op computes in float32
    # from the (exact) upcast, so it equals the float32 formula on the same values.
    logits, index, weight = _inputs(torch.bfloat16, 2)
    out, grad = _value_and_grad(lambda x, i: log_softmax_gather(x, i, chunk_size=chunk), logits, index, weight)
    ref, ref_grad = _value_and_grad(_reference, logits, index, weight)
    assert out.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad)  # both rounded to bf16 from float32 gradients


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_gradcheck_float64(chunk) -> None:
    logits, index, _ = _inputs(torch.float64, 2, seed=1)
    assert torch.autograd.gradcheck(lambda x: log_softmax_gather(x, index, chunk_size=chunk), (logits,))


def test_non_contiguous_logits_and_compact_index() -> None:
    logits, index, weight = _inputs(torch.float32, 2)
    wide = logits.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)  # same values, strided
    compact = lambda x, i: log_softmax_gather(x, i.to(torch.int16), chunk_size=4)  # noqa: E731
    out, grad = _value_and_grad(compact, wide, index, weight)
    ref, ref_grad = _value_and_grad(_reference, logits, index, weight)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_token_scores_is_the_chunked_op(chunk) -> None:
    logits, index, weight = _inputs(torch.float32, 1)
    target = index[..., 0]
    out, grad = _value_and_grad(lambda x, i: token_scores(x, i, chunk_size=chunk), logits, target, weight[..., 0])
    ref, ref_grad = _value_and_grad(lambda x, i: _reference(x, i[..., None])[..., 0], logits, target, weight[..., 0])
    assert out.shape == (B, L)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_empty_batch() -> None:
    logits = torch.zeros(0, 4, V, requires_grad=True)
    out = log_softmax_gather(logits, torch.zeros(0, 4, 1, dtype=torch.long), chunk_size=3)
    assert out.shape == (0, 4, 1)
    out.sum().backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


class _Float32Sizes(TorchDispatchMode):
    """Records the element count of every float32 ``[..., V]`` tensor any operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = [0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() and t.shape[-1] == V:
                self.sizes.append(t.numel())
        return out


@pytest.mark.parametrize("chunk", [1, 4])
def test_no_float32_tensor_beyond_one_chunk(chunk) -> None:
    # bf16 logits: the gradient is bf16, so any float32 [N, V] in forward or backward would be a leak
    logits, index, weight = _inputs(torch.bfloat16, 2)
    with _Float32Sizes() as seen:
        out = log_softmax_gather(logits, index, chunk_size=chunk)
        (out * weight.float()).sum().backward()
    assert max(seen.sizes) <= chunk * V, (max(seen.sizes), chunk * V)
    with _Float32Sizes() as seen:  # the check itself sees today's full float32 log-softmax
        (_reference(logits, index) * weight.float()).sum().backward()
    assert max(seen.sizes) == B * L * V


def test_backward_keeps_only_logits_index_and_logsumexp() -> None:
    logits, index, _ = _inputs(torch.bfloat16, 2)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        log_softmax_gather(logits, index, chunk_size=4)
    assert sorted((tuple(t.shape), t.dtype) for t in saved) == sorted(
        [((B * L, V), torch.bfloat16), ((B * L, 2), torch.long), ((B * L,), torch.float32)]
    )


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_map_token_chunks_matches_the_unchunked_function(chunk) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, V, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, L), generator=g)

    def fn(a, b):  # per token: a [n, V], b [n] -> [n]
        return (a.softmax(-1) ** 2).sum(-1) * a.gather(-1, b[:, None])[:, 0]

    out = map_token_chunks(fn, x, y, chunk_size=chunk)
    ref = fn(x.reshape(-1, V), y.reshape(-1)).view(B, L)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda z: map_token_chunks(fn, z, y, chunk_size=chunk), (x,))


def test_chunk_size_defaults_and_errors() -> None:
    previous = set_chunk_elements(100)
    try:
        assert resolve_chunk_size(None, V) == 100 // V
        assert resolve_chunk_size(None, 1000) == 1  # never zero tokens
        assert resolve_chunk_size(5, V) == 5
    finally:
        set_chunk_elements(previous)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            resolve_chunk_size(bad, V)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="elements"):
        set_chunk_elements(0)
    with pytest.raises(ValueError, match="leading shape"):
        log_softmax_gather(torch.zeros(B, L, V), torch.zeros(B, L, dtype=torch.long))
