"""DiffusionGemma (``transformers``' ``DiffusionGemmaForBlockDiffusion``) as a dflow block policy.

DiffusionGemma is uniform-source block diffusion: a causal encoder writes the prompt and every
finished block into a KV cache; a bidirectional decoder refines a canvas of ``canvas_length`` tokens
against that cache, and takes the previous step's (temperature-scaled) logits back as
self-conditioning. :class:`DiffusionGemmaDenoiser` exposes that to
:class:`~dflow.sampling.BlockSampler` through :meth:`DiffusionGemmaDenoiser.block_session`:

- the prompt is encoded once per rollout; each finished block is appended to the cache by one
  encoder call when the next block begins, as ``generate`` does;
- each step is one decoder pass on the canvas (the current block of the state), returning float32
  logits ``[B, C, V]`` (the model casts its head's output to float32, so bf16 weights are scored in
  float32);
- self-conditioning: the sampler feeds back the logits it sampled from (after temperature and the
  kernel's schedule), stored in the embedding dtype as ``generate`` stores them.

Self-conditioning in the MDP: the policy at step ``j`` of a block depends on the block's history
through the fed-back logits, so the state is the history of the block, and the fed-back logits are
recomputed in sequence under the weights being scored (``BlockSession.stateful``): rescoring step
``j`` replays steps ``0..j`` of its block on the recorded states. At the rollout's weights this
reproduces the rollout's numbers bit for bit (on-policy ratio exactly 1); under other weights it is
the exact log-probability of the recorded step given the recorded history. The gradient flows
through the replayed chain (``self_conditioning_grad=True``, the exact gradient of that log-prob);
``False`` detaches the fed-back logits (cheaper, biased).

Example::

    policy = DiffusionGemmaDenoiser.from_pretrained("ckpt/diffusiongemma")
    sampler = BlockSampler(MixturePath(UniformSource(policy.vocab_size)), EntropyBoundKernel(),
                           block_len=policy.canvas_length, steps_per_block=16)
    traj = sampler.rollout(policy, prompt_ids, batch_size=B, seq_len=2 * policy.canvas_length)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig

if TYPE_CHECKING:  # the modelling code loads on first use: importing dflow.models stays cheap
    from transformers import DiffusionGemmaForBlockDiffusion


class DiffusionGemmaDenoiser(nn.Module):
    """A ``DiffusionGemmaForBlockDiffusion`` as a block policy (and, for one block, a plain denoiser).

    Args:
        model: the loaded model (any dtype; bf16 for the released sizes).
        self_conditioning: feed the previous step's sampling logits back (as ``generate`` does).
        self_conditioning_grad: let the gradient flow through the fed-back logits when rescoring.

        data_token_ids: the model id of each data value (a task with its own tokenizer, e.g. ``text``:
            ``task.data_token_ids``). The policy is then the model's posterior restricted to those ids
            (its logits at them, ``V = len(data_token_ids)``), and the self-conditioning fed back is that
            restricted posterior (zero probability on every other id). None: the data values
            ``0..V-1`` are the model's ids (``V = text_config.vocab_size``).

    ``cond`` is the prompt as the model's token ids ``[B, P]`` (``P >= 1``, no padding).
    """

    def __init__(
        self,
        model: DiffusionGemmaForBlockDiffusion,
        self_conditioning: bool = True,
        self_conditioning_grad: bool = True,
        data_token_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        from transformers import DiffusionGemmaForBlockDiffusion

        if not isinstance(model, DiffusionGemmaForBlockDiffusion):
            raise ValueError(
                f"DiffusionGemmaDenoiser wraps a DiffusionGemmaForBlockDiffusion, got {type(model).__name__}"
            )
        self.model = model
        self.self_conditioning, self.self_conditioning_grad = bool(self_conditioning), bool(self_conditioning_grad)
        self.data_token_ids: list[int] | None = None
        if data_token_ids is not None:
            ids = [int(i) for i in data_token_ids]
            size = self.model_vocab_size
            if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= size:
                raise ValueError(
                    f"DiffusionGemmaDenoiser: data_token_ids must be distinct ids in [0, {size}) (the model's "
                    f"vocab_size), got {ids}"
                )
            self.data_token_ids = ids
        # data value -> model id (not saved with the weights: a model folder records it in dflow_meta.json)
        self.data_ids: Tensor
        ids_tensor = torch.tensor(self.data_token_ids if self.data_token_ids is not None else [], dtype=torch.long)
        self.register_buffer("data_ids", ids_tensor, persistent=False)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, **kwargs: Any
    ) -> DiffusionGemmaDenoiser:
        """Load a saved model from a local folder (never the hub); ``kwargs`` go to the constructor."""
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"DiffusionGemmaDenoiser: {os.fspath(folder)!r} is not a model folder")
        config = PretrainedConfig.get_config_dict(folder, local_files_only=True)[0]
        found = config.get("model_type")
        if found != "diffusion_gemma":
            archs = config.get("architectures")
            raise ValueError(
                f"DiffusionGemmaDenoiser: {os.fspath(folder)!r} holds model_type={found!r} ({archs}); "
                "supported: diffusion_gemma (DiffusionGemmaForBlockDiffusion)"
            )
        from transformers import DiffusionGemmaForBlockDiffusion

        model = DiffusionGemmaForBlockDiffusion.from_pretrained(folder, local_files_only=True, dtype=dtype)
        return cls(model.eval(), **kwargs)

    @property
    def model_vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    @property
    def vocab_size(self) -> int:
        """``V``: the data values the policy scores (``len(data_token_ids)``, else the model's vocabulary)."""
        return len(self.data_token_ids) if self.data_token_ids is not None else self.model_vocab_size

    def to_model_ids(self, x: Tensor) -> Tensor:
        """Data values ``[B, n]`` -> the model's token ids (long)."""
        x = x.long()
        return self.data_ids[x] if self.data_token_ids is not None else x

    def to_data_logits(self, logits: Tensor) -> Tensor:
        """The model's logits ``[B, C, V_model]`` -> those of the data values ``[B, C, V]``."""
        return logits.index_select(-1, self.data_ids) if self.data_token_ids is not None else logits

    def to_model_logits(self, logits: Tensor) -> Tensor:
        """Data-value logits ``[B, C, V]`` -> ``[B, C, V_model]`` with ``-inf`` (probability 0) elsewhere."""
        if self.data_token_ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.model_vocab_size), float("-inf"))
        return full.index_copy(-1, self.data_ids, logits)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> None:
        """The wrapped model's ``save_pretrained`` (``data_token_ids`` go into the folder's dflow_meta.json)."""
        self.model.save_pretrained(directory, **kwargs)

    @property
    def canvas_length(self) -> int:
        return int(getattr(self.model.config, "canvas_length"))  # noqa: B009 (typed int | None by transformers)

    def block_session(
        self, cond: Tensor | None, batch_size: int, seq_len: int, block_len: int
    ) -> DiffusionGemmaSession:
        """The per-rollout state :class:`~dflow.sampling.BlockSampler` steps through."""
        return DiffusionGemmaSession(self, cond, batch_size, seq_len, block_len)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """One block: logits ``[B, C, V]`` of the canvas ``x_t [B, C]`` after the prompt, no self-conditioning
        (the model's first denoising step). ``t`` is ignored (the model has no time input)."""
        if x_t.dim() != 2 or x_t.shape[1] != self.canvas_length:
            raise ValueError(
                f"DiffusionGemmaDenoiser called as a plain denoiser takes one canvas of canvas_length="
                f"{self.canvas_length} tokens, got x_t of shape {tuple(x_t.shape)}; longer sequences are sampled "
                "and scored block by block through BlockSampler"
            )
        session = self.block_session(cond, x_t.shape[0], x_t.shape[1], x_t.shape[1])
        session.begin_block(x_t, 0)
        return session.logits(x_t, t)


class DiffusionGemmaSession:
    """KV cache of the prompt and finished blocks, and the self-conditioning logits of the current block."""

    def __init__(
        self, owner: DiffusionGemmaDenoiser, cond: Tensor | None, batch_size: int, seq_len: int, block_len: int
    ):
        model = owner.model
        C = owner.canvas_length
        if block_len != C:
            raise ValueError(f"DiffusionGemma: block_len={block_len} must equal the model's canvas_length={C}")
        if not torch.is_tensor(cond) or cond.dim() != 2 or cond.shape[0] != batch_size or cond.shape[1] < 1:
            got = tuple(cond.shape) if torch.is_tensor(cond) else cond
            raise ValueError(f"DiffusionGemma needs a prompt cond of token ids [B={batch_size}, P >= 1], got {got}")
        if cond.dtype.is_floating_point or int(cond.min()) < 0 or int(cond.max()) >= owner.model_vocab_size:
            raise ValueError(
                f"DiffusionGemma: prompt ids must be integers in [0, {owner.model_vocab_size}), "
                f"got dtype={cond.dtype}, range [{cond.min().item()}, {cond.max().item()}]"
            )
        limit = model.config.get_text_config().max_position_embeddings
        if cond.shape[1] + seq_len > limit:
            raise ValueError(
                f"DiffusionGemma: prompt length {cond.shape[1]} + seq_len {seq_len} exceeds the model's "
                f"max_position_embeddings={limit}"
            )
        self.owner, self.model, self.cond, self.canvas_length = owner, model, cond.long(), C
        self.stateful = owner.self_conditioning
        self.cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        self.prompt_len, self.cached_blocks, self.block = cond.shape[1], -1, 0  # -1: prompt not yet encoded
        self.self_cond: Tensor | None = None

    def _positions(self, start: int, length: int) -> Tensor:
        return torch.arange(start, start + length, device=self.cond.device)[None]  # [1, length]

    def _encode(self, ids: Tensor, start: int) -> None:
        self.model.model.encoder(input_ids=ids, cache=self.cache, position_ids=self._positions(start, ids.shape[1]))

    def begin_block(self, x: Tensor, block: int) -> None:
        C, P = self.canvas_length, self.prompt_len
        if self.cached_blocks < 0:
            self._encode(self.cond, 0)  # the prompt, once per session
            self.cached_blocks = 0
        if block < self.cached_blocks:
            raise ValueError(f"DiffusionGemma session: blocks go left to right; block {block} is already cached")
        while self.cached_blocks < block:  # one encoder call per finished block, as generate appends them
            b = self.cached_blocks
            self._encode(self.owner.to_model_ids(x[:, b * C : (b + 1) * C]), P + b * C)
            self.cached_blocks += 1
        self.block, self.self_cond = block, None

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        C, start = self.canvas_length, self.block * self.canvas_length
        canvas = self.owner.to_model_ids(x[:, start : start + C])  # [B, C] model ids
        out = self.model(
            decoder_input_ids=canvas,
            cache=self.cache,
            self_conditioning_logits=self.self_cond,
            decoder_position_ids=self._positions(self.prompt_len + start, C),
        )
        return self.owner.to_data_logits(out.logits)  # [B, C, V] float32

    def feedback(self, logits: Tensor) -> None:
        if not self.owner.self_conditioning:
            return
        sc = logits if self.owner.self_conditioning_grad else logits.detach()
        sc = self.owner.to_model_logits(sc)  # [B, C, V_model]
        self.self_cond = sc.to(self.model.model.decoder.embed_tokens.weight.dtype)
