"""LoRA adapters (dflow.models.lora): targets, the base behind the adapters, merging, bad input."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import BertConfig

from dflow.models import DFlowConfig, DFlowTransformer, HFMaskedLMDenoiser
from dflow.models.lora import (
    AdaptersOff,
    LoRAConfig,
    apply_lora,
    base_model,
    default_target_modules,
    has_adapters,
    merged_copy,
    resolve_target_modules,
)

pytest.importorskip("peft")

B, L, LC, V = 3, 6, 2, 5


def transformer(seed: int = 0, time_conditioning: bool = True) -> DFlowTransformer:
    torch.manual_seed(seed)
    config = DFlowConfig(
        vocab_size=V,
        mask_id=V,
        seq_len=L,
        prompt_len=LC,
        prompt_vocab_size=7,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        time_conditioning=time_conditioning,
    )
    return DFlowTransformer(config).eval()


def bert(seed: int = 0) -> HFMaskedLMDenoiser:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return HFMaskedLMDenoiser(config, [5, 6, 7, 8, 9], mask_token_id=4, prompt_len=LC).eval()


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, V + 1, (B, L), generator=gen), torch.rand(B, generator=gen), torch.randint(1, 7, (B, LC))


def perturb_adapters(model: torch.nn.Module) -> None:
    """Give every B matrix a value, as training would (B = 0 at the start)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("make", [transformer, bert], ids=["dflow_transformer", "hf_masked_lm"])
def test_adapters_start_at_the_base_and_switch_off_to_it(make):
    x_t, t, cond = inputs()
    with torch.no_grad():
        expected = make()(x_t, t, cond)  # the same seed: the same base weights
        policy = apply_lora(make(), LoRAConfig(rank=4, alpha=8))
        assert has_adapters(policy)
        assert torch.equal(policy(x_t, t, cond), expected)  # B = 0: the adapted network is the base
        perturb_adapters(policy)
        adapted = policy(x_t, t, cond)
        assert not torch.allclose(adapted, expected)
        assert torch.equal(AdaptersOff(policy)(x_t, t, cond), expected)  # adapters off: the base, bit for bit
        assert torch.equal(policy(x_t, t, cond), adapted)  # and back on after the call


@pytest.mark.parametrize("make", [transformer, bert], ids=["dflow_transformer", "hf_masked_lm"])
def test_only_adapters_train_and_merging_reproduces_the_adapted_network(make):
    policy = apply_lora(make(), LoRAConfig(rank=4, alpha=8))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    perturb_adapters(policy)
    x_t, t, cond = inputs()
    with torch.no_grad():
        adapted = policy(x_t, t, cond)
        merged = merged_copy(policy)
        assert type(merged) is type(base_model(policy)) and not has_adapters(merged)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x_t, t, cond), adapted, rtol=1e-5, atol=1e-6)
        assert torch.equal(policy(x_t, t, cond), adapted)  # the adapted network is untouched by the merge


def test_default_targets_are_the_attention_and_mlp_projections():
    names = resolve_target_modules(transformer(), None)
    assert names == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")]
    hf = bert()
    names = resolve_target_modules(hf, None)
    assert default_target_modules(hf) == names  # already full names
    assert names and all(n.startswith("mlm.bert.encoder.layer.") for n in names)
    assert {n.split(".", 5)[-1] for n in names} == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }  # not the MLM head (cls.predictions.*)


def test_a_target_that_matches_nothing_names_the_linear_layers():
    with pytest.raises(
        ValueError, match=r"\['attn'\] match no linear layer.*blocks\.\*\.attn\.qkv, blocks\.\*\.attn\.out"
    ):
        apply_lora(transformer(), LoRAConfig(target_modules=["qkv", "attn"]))  # attn is a module, not a linear
    with pytest.raises(ValueError, match=r"no default for Sequential.*0, 2"):
        resolve_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)), None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), "lora.rank must be an int >= 1"),
        (dict(alpha=0.0), "lora.alpha must be a number > 0"),
        (dict(dropout=1.0), r"lora.dropout must be in \[0, 1\)"),
        (dict(target_modules=[]), "lora.target_modules must be a non-empty list"),
        (dict(load_in_4bit="yes"), "lora.load_in_4bit must be true or false"),
    ],
)
def test_config_fields_are_checked_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_4bit_without_cuda_says_what_to_change():
    with pytest.raises(ValueError, match="lora.load_in_4bit=true needs a CUDA GPU.*load_in_4bit: false"):
        apply_lora(transformer(), LoRAConfig(load_in_4bit=True))


def test_missing_peft_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'dflow\[lora\]'"):
        apply_lora(transformer(), LoRAConfig())
