"""Building blocks of :class:`~dflow.models.transformer.DFlowTransformer`.

Pre-LN bidirectional blocks::

    h = h + Dropout(Attention(Norm_1(h, tau)))
    h = h + Dropout(MLP(Norm_2(h, tau)))

``Norm(h, tau)`` is a plain affine LayerNorm for a time-agnostic model, and an adaptive LayerNorm
``LN(h) * (1 + scale(tau)) + shift(tau)`` for a time-conditioned one, where ``tau`` is the
embedding of ``t`` (sinusoidal features -> MLP), as in DiT. Nothing is zero-initialised, so every
parameter receives gradient from the first backward pass.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Sinusoidal time features: angular frequencies geometric in [1, 1000] radians per unit of t, so the
# slowest is monotone on [0, 1] and the fastest resolves steps of ~1e-3 (finer than any time grid).
_NUM_TIME_FREQS = 64
_MAX_TIME_FREQ = 1000.0


class TimeEmbedding(nn.Module):
    """``t [B] -> tau [B, D]``: sinusoidal features, then a two-layer MLP (SiLU after each)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * _NUM_TIME_FREQS, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.SiLU(),  # the adaptive norms read SiLU(tau), as DiT's modulation does
        )

    def forward(self, t: Tensor) -> Tensor:  # t: [B] -> [B, D]
        # computed here rather than kept as a buffer: no state to save or to materialise on load
        log_freqs = torch.linspace(0.0, math.log(_MAX_TIME_FREQ), _NUM_TIME_FREQS, device=t.device, dtype=torch.float32)
        angles = t.float()[:, None] * log_freqs.exp()[None, :]  # [B, F]
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)  # [B, 2F]
        return self.mlp(features.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm that is affine when ``tau`` is absent and modulated by ``tau`` when present.

    With ``time_conditioning`` the normalisation has no parameters of its own and
    ``out = LN(h) * (1 + scale) + shift`` with ``(shift, scale) = Linear(tau)``.
    """

    def __init__(self, hidden_size: int, eps: float, time_conditioning: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=not time_conditioning)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size) if time_conditioning else None

    def forward(self, h: Tensor, tau: Tensor | None) -> Tensor:  # h: [B, N, D], tau: [B, D] | None
        normed = self.norm(h)  # [B, N, D]
        if self.modulation is None:
            return normed
        if tau is None:
            raise ValueError("tau must be given to a time-conditioned AdaptiveLayerNorm, got None")
        shift, scale = self.modulation(tau)[:, None, :].chunk(2, dim=-1)  # each [B, 1, D]
        return normed * (1.0 + scale) + shift


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention (no mask) via ``scaled_dot_product_attention``."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        # read by DFlowTransformer._init_weights (torch's stubs allow only tensors and modules as attributes)
        self.out.is_residual_projection = True  # type: ignore[assignment]

    def forward(self, h: Tensor) -> Tensor:  # h: [B, N, D] -> [B, N, D]
        q, k, v = rearrange(
            self.qkv(h), "b n (three heads d) -> three b heads n d", three=3, heads=self.num_heads
        )  # each [B, H, N, D / H]
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, N, D / H]
        return self.out(rearrange(attended, "b heads n d -> b n (heads d)"))  # [B, N, D]


class MLP(nn.Module):
    """``Linear -> GELU -> Linear`` with hidden width ``int(mlp_ratio * D)``."""

    def __init__(self, hidden_size: int, mlp_ratio: float) -> None:
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.up = nn.Linear(hidden_size, inner)
        self.down = nn.Linear(inner, hidden_size)
        # read by DFlowTransformer._init_weights (torch's stubs allow only tensors and modules as attributes)
        self.down.is_residual_projection = True  # type: ignore[assignment]

    def forward(self, h: Tensor) -> Tensor:  # h: [B, N, D] -> [B, N, D]
        return self.down(F.gelu(self.up(h)))


class TransformerBlock(nn.Module):
    """One pre-LN block: attention then MLP, each on a (maybe time-modulated) normalised input."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        eps: float,
        time_conditioning: bool,
    ) -> None:
        super().__init__()
        self.attn_norm = AdaptiveLayerNorm(hidden_size, eps, time_conditioning)
        self.attn = SelfAttention(hidden_size, num_heads, dropout)
        self.mlp_norm = AdaptiveLayerNorm(hidden_size, eps, time_conditioning)
        self.mlp = MLP(hidden_size, mlp_ratio)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, tau: Tensor | None) -> Tensor:  # h: [B, N, D] -> [B, N, D]
        h = h + self.residual_dropout(self.attn(self.attn_norm(h, tau)))
        return h + self.residual_dropout(self.mlp(self.mlp_norm(h, tau)))


class PositionalEmbedding(nn.Module):
    """Learned positions of the ``L`` output tokens: 1-D, or factorised rows + columns for images.

    With ``image_shape = (H, W)`` the embedding of position ``h * W + w`` (row-major flattening) is
    ``row[h] + col[w]``: ``(H + W) * D`` parameters instead of ``H * W * D``, and neighbouring
    pixels share a row or column vector.
    """

    position: nn.Embedding | None  # 1-D positions (no image_shape)
    row: nn.Embedding | None  # factorised positions (image_shape given)
    col: nn.Embedding | None

    def __init__(self, seq_len: int, hidden_size: int, image_shape: tuple[int, int] | None) -> None:
        super().__init__()
        if image_shape is None:
            self.position = nn.Embedding(seq_len, hidden_size)
            self.row = self.col = None
        else:
            height, width = image_shape
            self.position = None
            self.row = nn.Embedding(height, hidden_size)
            self.col = nn.Embedding(width, hidden_size)

    def forward(self) -> Tensor:  # -> [L, D]
        if self.position is not None:
            return self.position.weight
        assert self.row is not None and self.col is not None  # built together with image_shape
        grid = self.row.weight[:, None, :] + self.col.weight[None, :, :]  # [H, W, D]
        return rearrange(grid, "h w d -> (h w) d")  # [L, D]
