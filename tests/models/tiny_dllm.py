"""A tiny custom-code masked dLLM folder, written by tests the way LLaDA and Dream ship theirs.

The folder holds ``configuration_tinydllm.py`` and ``modeling_tinydllm.py`` (a two-layer
bidirectional Llama-like transformer: RMSNorm, SwiGLU MLP, learned positions instead of RoPE), a
``config.json`` whose ``auto_map`` points at them and which carries ``mask_token_id`` (as LLaDA's
does), random weights, and optionally a word-level tokenizer that holds the text task's tokens under
other ids and declares no mask token (LLaDA's tokenizer declares none either).

The model classes:

- ``TinyDLLMModelLM``: the LM (``model(input_ids).logits``, like ``LLaDAModelLM``). It raises on an
  attention mask, so a test shows that the adapter calls it without one.
- ``TinyDLLMBackbone``: hidden states only (no LM head), for the "returns no logits" refusal.
- with ``causal=True`` in the config every block attends to the past only: a custom-code causal LM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIGURATION = """
from transformers import PretrainedConfig


class TinyDLLMConfig(PretrainedConfig):
    model_type = "tinydllm"

    def __init__(self, vocab_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64, causal=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.causal = causal
        super().__init__(**kwargs)
"""

MODELING = """
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from .configuration_tinydllm import TinyDLLMConfig


class TinyDLLMBlock(GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        self.heads, self.causal = config.num_attention_heads, config.causal
        self.attn_norm, self.mlp_norm = nn.RMSNorm(width), nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.gate_up = nn.Linear(width, 2 * inner, bias=False)
        self.down = nn.Linear(inner, width, bias=False)

    def forward(self, h):
        b, n, d = h.shape
        qkv = self.qkv(self.attn_norm(h)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, n, d / heads]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        h = h + self.proj(att.transpose(1, 2).reshape(b, n, d))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


class TinyDLLMPreTrainedModel(PreTrainedModel):
    config_class = TinyDLLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.5)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class TinyDLLMBackbone(TinyDLLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(TinyDLLMBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **kwargs):
        h = self.embed(input_ids) + self.position(torch.arange(input_ids.shape[1], device=input_ids.device))
        for layer in self.layers:
            h = layer(h)
        return BaseModelOutput(last_hidden_state=self.norm(h))


class TinyDLLMModelLM(TinyDLLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = TinyDLLMBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("TinyDLLMModelLM attends to every position and takes no attention_mask")
        return CausalLMOutput(logits=self.lm_head(self.model(input_ids).last_hidden_state))
"""

# the text task's tokens under ids of this model's own (a LLaDA-like order: specials first)
TOKENS = ("<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>", "hello", "4", "3", "2", "1", "|", "_")
MASK_TOKEN, MASK_ID, VOCAB_SIZE = "<|mdm_mask|>", 12, 16


def write_tiny_dllm(
    folder: Path,
    *,
    auto_class: str = "AutoModel",
    class_name: str = "TinyDLLMModelLM",
    mask_token_id: int | None = MASK_ID,
    causal: bool = False,
    max_position_embeddings: int = 64,
    tokenizer: bool = True,
    tokenizer_mask: bool = False,
    seed: int = 0,
) -> Path:
    """Write the folder (see the module doc) and return it; the weights are drawn with ``seed``."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tinydllm.py").write_text(CONFIGURATION)
    (folder / "modeling_tinydllm.py").write_text(MODELING)
    auto_map = {"AutoConfig": "configuration_tinydllm.TinyDLLMConfig", auto_class: f"modeling_tinydllm.{class_name}"}
    config = {
        "model_type": "tinydllm",
        "architectures": [class_name],
        "auto_map": auto_map,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": max_position_embeddings,
        "causal": causal,
    }
    if mask_token_id is not None:
        config["mask_token_id"] = mask_token_id
    (folder / "config.json").write_text(json.dumps(config))
    loaded = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        model = getattr(transformers, auto_class).from_config(loaded, trust_remote_code=True)
    model.save_pretrained(folder)
    if tokenizer:
        write_tokenizer(folder, declare_mask=tokenizer_mask)
    return folder


def write_tokenizer(folder: Path, declare_mask: bool = False) -> None:
    """A word-level tokenizer over :data:`TOKENS` plus the mask token (id :data:`MASK_ID`); it declares
    the mask token only with ``declare_mask``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TOKENS)}
    vocab[MASK_TOKEN] = MASK_ID
    vocab.update({f"<unused{i}>": i for i in range(len(TOKENS), VOCAB_SIZE) if i != MASK_ID})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    roles = dict(bos_token=TOKENS[0], cls_token=TOKENS[0], eos_token=TOKENS[1], sep_token=TOKENS[1])
    mask = {"mask_token": MASK_TOKEN} if declare_mask else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", **roles, **mask)
    tok.save_pretrained(folder)
