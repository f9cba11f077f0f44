"""A small bidirectional transformer denoiser, saved and loaded as a ``transformers`` model.

The token sequence the blocks see is ``[prompt (Lc tokens) | x_t (L tokens)]``:

- prompt token ``c_j`` -> ``prompt_embed[c_j] + prompt_position[j]`` (id 0 = pad / null has a
  learned embedding like any other id; ``cond=None`` is the all-zero prompt);
- state ``x_t^i`` -> ``token_embed[x_t^i] + position[i]`` (``num_states`` rows, so the mask id ``V``
  has its own embedding when the config has one);
- every token attends to every token (no mask, no padding mask: pads are the null token);
- with ``time_conditioning`` every LayerNorm is modulated by an embedding of ``t``;
- the final norm and a linear head run on the ``L`` output positions only -> logits ``[B, L, V]``.

Gradient checkpointing (``supports_gradient_checkpointing``): after
``model.gradient_checkpointing_enable()`` (or :func:`~dflow.models.enable_gradient_checkpointing`)
each block, with its local mixing, keeps only its input ``h`` and ``tau`` for the backward pass and
recomputes the rest there. It runs whenever autograd records (``torch.is_grad_enabled()``), in
train *and* eval mode: dflow's RL losses run the policy in eval mode (no dropout, so the on-policy
ratio is exactly 1) and are exactly where the memory goes. Under ``torch.no_grad()`` (rollouts,
old / reference values, evaluation) the blocks run as usual. Nothing of it is saved with the model.

Example::

    config = DFlowConfig(vocab_size=16, mask_id=16, seq_len=64, prompt_len=8, prompt_vocab_size=40)
    model = DFlowTransformer(config)
    logits = model(x_t, t, cond)          # [B, 64, 16]; x_t may contain the mask id 16
    model.save_pretrained("ckpt/base")    # config.json + model.safetensors
    model = DFlowTransformer.from_pretrained("ckpt/base")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModel, PreTrainedModel

from dflow.logprobs import HeadLogits
from dflow.models.checkpointing import CHECKPOINT_KWARGS
from dflow.models.config import DFlowConfig
from dflow.models.layers import (
    AdaptiveLayerNorm,
    PositionalEmbedding,
    TimeEmbedding,
    TransformerBlock,
)

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # transformers 4.x: loading does not re-run init on loaded weights
    from torch.nn import init as _init  # type: ignore[no-redef]


class DFlowTransformer(PreTrainedModel):
    """Denoiser ``(x_t [B, L], t [B], cond [B, Lc] | None) -> logits [B, L, V]``; see module doc."""

    config_class = DFlowConfig
    config: DFlowConfig
    base_model_prefix = "dflow"
    main_input_name = "x_t"
    # transformers' gradient_checkpointing_enable / disable set self.gradient_checkpointing and
    # self._gradient_checkpointing_func (a non-reentrant torch.utils.checkpoint.checkpoint)
    supports_gradient_checkpointing = True
    # None in an unconditional model (prompt_len = 0)
    prompt_embed: nn.Embedding | None
    prompt_position_embed: nn.Embedding | None
    _gradient_checkpointing_func: Callable[..., Tensor]

    def __init__(self, config: DFlowConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.token_embed = nn.Embedding(config.num_states, hidden)
        self.position_embed = PositionalEmbedding(config.seq_len, hidden, config.image_shape)
        # no prompt tables for an unconditional model: unused parameters would never get gradient
        if config.prompt_len > 0:
            self.prompt_embed = nn.Embedding(config.prompt_vocab_size, hidden)
            self.prompt_position_embed = nn.Embedding(config.prompt_len, hidden)
        else:
            self.prompt_embed = self.prompt_position_embed = None
        self.time_embed = TimeEmbedding(hidden) if config.time_conditioning else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden,
                config.num_heads,
                config.mlp_ratio,
                config.dropout,
                config.layer_norm_eps,
                config.time_conditioning,
            )
            for _ in range(config.num_layers)
        )
        k = getattr(config, "conv_kernel", 0)
        self.local_mix = (
            nn.ModuleList(nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden) for _ in range(config.num_layers))
            if k
            else None
        )
        self.final_norm = AdaptiveLayerNorm(hidden, config.layer_norm_eps, config.time_conditioning)
        self.head = nn.Linear(hidden, config.vocab_size)
        # a runtime switch, never part of the config or the weights; the function is replaced by
        # gradient_checkpointing_enable (with its kwargs) and is here for a flag set by hand
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, **CHECKPOINT_KWARGS)
        self.post_init()

    def _mix_locally(self, h: Tensor, conv: nn.Module) -> Tensor:
        """Add a depthwise convolution of the pixel tokens (the prompt prefix is left as it is)."""
        lc = self.config.prompt_len
        assert self.config.image_shape is not None  # DFlowConfig refuses conv_kernel without image_shape
        height, width = self.config.image_shape
        image = rearrange(h[:, lc:], "b (y x) d -> b d y x", y=height, x=width)  # [B, D, H, W]
        mixed = rearrange(conv(image), "b d y x -> b (y x) d")  # [B, L, D]
        return torch.cat([h[:, :lc], h[:, lc:] + mixed], dim=1)  # [B, Lc + L, D]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit LayerNorm gains.

        The output projections of the residual branches get std ``/ sqrt(2 * num_layers)`` (GPT-2)
        so the residual stream's variance does not grow with depth. Nothing is zero-initialised:
        a zero head or zero branch would block the gradient to everything before it.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_layers)
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            _init.ones_(module.weight)
            _init.zeros_(module.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Logits of ``p_{1|t}(. | x_t, cond)`` over the ``V`` data values.

        Args:
            x_t: long ``[B, L]``, states in ``[0, num_states)``.
            t: float ``[B]``; ignored unless ``config.time_conditioning``.
            cond: long ``[B, Lc]`` prompt ids in ``[0, prompt_vocab_size)``, or ``None`` (= all
                zeros, the unconditional prompt).

        Returns:
            ``[B, L, V]`` logits (no column for the mask id).
        """
        return self.head(self.hidden_states(x_t, t, cond))  # [B, L, V]

    def head_logits(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> HeadLogits:
        """:meth:`forward`'s logits as the last hidden state and the head, so that scoring
        (:func:`dflow.logprobs.log_softmax_gather`) makes them one chunk of tokens at a time."""
        return HeadLogits(self.hidden_states(x_t, t, cond), self.head, self.config.vocab_size)

    def hidden_states(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The last hidden state ``[B, L, D]`` (after the final norm) that the head maps to logits."""
        config = self.config
        cond = self._check_inputs(x_t, t, cond)
        # any integer dtype is accepted (the sampler stores states compactly); embeddings want long
        h = self.token_embed(x_t.long()) + self.position_embed()  # [B, L, D]
        if cond is not None:
            assert self.prompt_embed is not None and self.prompt_position_embed is not None  # cond means Lc > 0
            prefix = self.prompt_embed(cond.long())  # [B, Lc, D]
            prefix = prefix + self.prompt_position_embed.weight  # [B, Lc, D]
            h = torch.cat([prefix, h], dim=1)  # [B, Lc + L, D]
        tau = self.time_embed(t) if self.time_embed is not None else None  # [B, D] | None
        # no graph is recorded without grad, so there is nothing to save memory on
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for i in range(len(self.blocks)):
            if checkpointing:
                # tau and the prompt prefix (inside h) go in as inputs, so the recompute sees them
                h = self._gradient_checkpointing_func(self._layer, i, h, tau)  # [B, Lc + L, D]
            else:
                h = self._layer(i, h, tau)  # [B, Lc + L, D]
        return self.final_norm(h[:, config.prompt_len :], tau)  # [B, L, D]

    def _layer(self, i: int, h: Tensor, tau: Tensor | None) -> Tensor:
        """Block ``i``, after its local mixing when the config has one: ``[B, Lc + L, D]`` -> same.

        The unit that gradient checkpointing recomputes (the module call, so the block's hooks run
        again in the recompute, as with ``torch.utils.checkpoint.checkpoint(module, ...)``).
        """
        if self.local_mix is not None:
            h = self._mix_locally(h, self.local_mix[i])
        return self.blocks[i](h, tau)

    def _check_inputs(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor | None:
        """Validate shapes and ranges; return ``cond`` filled in (or ``None`` when ``Lc == 0``)."""
        config = self.config
        if not isinstance(x_t, Tensor) or x_t.dim() != 2 or x_t.shape[1] != config.seq_len:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must have shape [B, {config.seq_len}], got {shape}")
        if x_t.dtype.is_floating_point or x_t.dtype == torch.bool or x_t.is_complex():
            raise ValueError(f"x_t must be an integer tensor, got dtype {x_t.dtype}")
        batch = x_t.shape[0]
        if x_t.numel() > 0:
            low, high = torch.aminmax(x_t)
            if low.item() < 0 or high.item() >= config.num_states:
                raise ValueError(
                    f"x_t values must be in [0, {config.num_states}) (mask_id={config.mask_id}), "
                    f"got min {low.item()} and max {high.item()}"
                )
        if not isinstance(t, Tensor) or tuple(t.shape) != (batch,):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must have shape [{batch}] (one time per sequence), got {shape}")
        if config.prompt_len == 0:
            empty = isinstance(cond, Tensor) and tuple(cond.shape) == (batch, 0)
            if cond is not None and not empty:
                shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
                raise ValueError(
                    f"cond must be None or of shape [{batch}, 0] for a model with prompt_len=0, got {shape}"
                )
            return None
        if cond is None:
            return x_t.new_zeros(batch, config.prompt_len)
        if not isinstance(cond, Tensor) or tuple(cond.shape) != (batch, config.prompt_len):
            shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"cond must have shape [{batch}, {config.prompt_len}], got {shape}")
        if cond.dtype.is_floating_point or cond.dtype == torch.bool or cond.is_complex():
            raise ValueError(f"cond must be an integer tensor, got dtype {cond.dtype}")
        if cond.numel() > 0:
            low, high = torch.aminmax(cond)
            if low.item() < 0 or high.item() >= config.prompt_vocab_size:
                raise ValueError(
                    f"cond values must be in [0, {config.prompt_vocab_size}), "
                    f"got min {low.item()} and max {high.item()}"
                )
        return cond


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# exist_ok: importing twice (or reloading this module) re-registers instead of raising
AutoConfig.register(DFlowConfig.model_type, DFlowConfig, exist_ok=True)
AutoModel.register(DFlowConfig, DFlowTransformer, exist_ok=True)
