"""Gradient checkpointing: the same gradients as without it, recomputation that really happens, and
nothing of it in saved models. DFlowTransformer and HF masked LMs (tiny random configs, no hub)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AlbertConfig, BertConfig, DistilBertConfig, RobertaConfig

from dflow.models import (
    DFlowConfig,
    DFlowTransformer,
    HFMaskedLMDenoiser,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_gradient_checkpointing,
)

V, L, LC, B = 6, 6, 3, 4


def make_model(dropout: float = 0.0, **overrides) -> DFlowTransformer:
    """A float64 model (so equal gradients can be asked for to ~1e-12)."""
    kwargs = dict(
        vocab_size=V,
        mask_id=V,
        seq_len=L,
        prompt_len=LC,
        prompt_vocab_size=10,
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        dropout=dropout,
        time_conditioning=True,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return DFlowTransformer(DFlowConfig(**kwargs)).double()


def inputs(config: DFlowConfig, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, config.num_states, (B, config.seq_len), generator=gen)  # [B, L], mask id included
    t = torch.rand(B, generator=gen, dtype=torch.float64)  # [B]
    cond = torch.randint(1, config.prompt_vocab_size, (B, config.prompt_len), generator=gen)  # [B, Lc]
    target = torch.randint(0, config.vocab_size, (B, config.seq_len), generator=gen)  # [B, L]
    return x_t, t, cond if config.prompt_len else None, target


def loss_and_grads(model, x_t, t, cond, target, seed: int = 7):
    """Cross-entropy of one forward pass and its gradient w.r.t. every parameter (dropout drawn after ``seed``)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(x_t, t, cond)  # [B, L, V]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def count_block_calls(model: DFlowTransformer) -> list[int]:
    """A counter of forward calls of the blocks' attention (recomputation calls it again)."""
    calls = [0]
    for block in model.blocks:
        block.attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ---------------------------------------------------------------------------------------------- DFlowTransformer
CONFIGS = {
    "prompt+time": {},
    "time-agnostic": {"time_conditioning": False},
    "image+conv": {"prompt_len": 0, "seq_len": 6, "image_shape": (2, 3), "conv_kernel": 3},
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_checkpointing_gives_the_same_gradient_for_every_parameter(config, dropout, mode):
    model = make_model(dropout, **CONFIGS[config])
    getattr(model, mode)()
    x_t, t, cond, target = inputs(model.config)
    loss, plain = loss_and_grads(model, x_t, t, cond, target)
    enable_gradient_checkpointing(model)
    assert model.gradient_checkpointing
    loss_ckpt, checkpointed = loss_and_grads(model, x_t, t, cond, target)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-14)
    assert_same_grads(checkpointed, plain)
    # every parameter has a gradient: the time embedding reaches the checkpointed blocks
    assert all(g.abs().sum() > 0 for g in checkpointed.values())
    if dropout and mode == "train":
        # not vacuous: dropout acts, and another seed's mask gives another gradient
        _, other_seed = loss_and_grads(model, x_t, t, cond, target, seed=8)
        assert not torch.equal(other_seed["head.weight"], checkpointed["head.weight"])


def test_gradient_wrt_time_conditioning_passes_through_the_checkpoint():
    """d loss / d tau (the time embedding's output) reaches every block through the checkpoint."""
    model = make_model().train()
    x_t, t, cond, target = inputs(model.config)
    taus = []
    model.time_embed.register_forward_hook(lambda _m, _i, out: taus.append(out) or out.retain_grad())
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(model)
        loss_and_grads(model, x_t, t, cond, target)
        grads.append(taus[-1].grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_blocks_are_recomputed_while_autograd_records_in_either_mode(mode):
    """Eval mode counts: RLModule computes its losses with the policy in eval mode (no dropout)."""
    model = make_model()
    getattr(model, mode)()
    calls = count_block_calls(model)
    x_t, t, cond, target = inputs(model.config)
    loss_and_grads(model, x_t, t, cond, target)
    assert calls[0] == 3  # one call per block
    enable_gradient_checkpointing(model)
    calls[0] = 0
    loss_and_grads(model, x_t, t, cond, target)
    assert calls[0] == 6  # forward + recompute in backward


def test_no_grad_forward_is_unchanged_and_not_checkpointed():
    model = make_model(dropout=0.3).eval()
    x_t, t, cond, _ = inputs(model.config)
    with torch.no_grad():
        before = model(x_t, t, cond)
    enable_gradient_checkpointing(model)
    calls = count_block_calls(model)
    with torch.no_grad():
        after = model(x_t, t, cond)
    assert torch.equal(after, before) and calls[0] == 3


def test_transformers_enable_and_disable_switch_it():
    model = make_model()
    assert model.supports_gradient_checkpointing and not is_gradient_checkpointing(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames the method
        model.gradient_checkpointing_enable()
        assert model.gradient_checkpointing and is_gradient_checkpointing(model)
        model.gradient_checkpointing_disable()
    assert not model.gradient_checkpointing
    enable_gradient_checkpointing(model)
    disable_gradient_checkpointing(model)
    assert not is_gradient_checkpointing(model)


def test_saving_and_loading_do_not_record_checkpointing(tmp_path):
    model = make_model(dropout=0.1).eval()
    keys = set(model.state_dict())
    enable_gradient_checkpointing(model)
    assert set(model.state_dict()) == keys  # no state of its own
    model.save_pretrained(tmp_path)
    assert "gradient_checkpointing" not in json.loads((tmp_path / "config.json").read_text())
    loaded = DFlowTransformer.from_pretrained(tmp_path).double().eval()
    assert not loaded.gradient_checkpointing
    x_t, t, cond, _ = inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(x_t, t, cond), model(x_t, t, cond))


# ---------------------------------------------------------------------------------------------- HF masked LMs
DATA_IDS, MASK_ID = [5, 6, 7, 8], 4  # tokenizer ids: 4 is the mask token, 5..8 the data values
HF_CONFIGS = {
    # dropout left at each config's default (0.1), so train mode draws masks that the recompute must repeat
    "bert": lambda: BertConfig(
        vocab_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=20,
        pad_token_id=1,
    ),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=16, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=16
    ),
}


def make_hf(name: str, **kwargs) -> HFMaskedLMDenoiser:
    torch.manual_seed(0)
    return HFMaskedLMDenoiser(HF_CONFIGS[name](), DATA_IDS, MASK_ID, prompt_len=2, **kwargs).double()


def hf_inputs():
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randint(0, len(DATA_IDS) + 1, (3, 5), generator=gen)  # [B, L]
    cond = torch.randint(1, 16, (3, 2), generator=gen)  # [B, Lc]
    target = torch.randint(0, len(DATA_IDS), (3, 5), generator=gen)
    return x_t, torch.rand(3, generator=gen), cond, target


def count_hf_layer_calls(denoiser: HFMaskedLMDenoiser) -> list[int]:
    """Calls of each layer's first submodule (the layer wrapper itself runs once; its insides twice)."""
    calls = [0]
    names = ("BertLayer", "RobertaLayer", "TransformerBlock")  # DistilBERT's layer is its TransformerBlock
    layers = [m for m in denoiser.mlm.modules() if type(m).__name__ in names]
    assert len(layers) == 2
    for layer in layers:
        first = next(layer.children())
        first.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_hf_checkpointing_gives_the_same_gradients_and_recomputes(name, mode):
    denoiser = make_hf(name)
    getattr(denoiser, mode)()
    calls = count_hf_layer_calls(denoiser)
    x_t, t, cond, target = hf_inputs()
    loss, plain = loss_and_grads(denoiser, x_t, t, cond, target)
    assert calls[0] == 2
    denoiser.gradient_checkpointing_enable()
    assert denoiser.is_gradient_checkpointing
    calls[0] = 0
    loss_ckpt, checkpointed = loss_and_grads(denoiser, x_t, t, cond, target)
    # recomputed in eval mode too: the adapter lets the checkpointed layers see train mode for the call
    assert calls[0] == 4
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-14)
    assert_same_grads(checkpointed, plain)
    # the modes are as they were (only the layers' own flag was switched, and only during the call)
    assert all(m.training == (mode == "train") for m in denoiser.modules())
    if mode == "train":
        _, other_seed = loss_and_grads(denoiser, x_t, t, cond, target, seed=8)
        assert not all(torch.equal(other_seed[n], checkpointed[n]) for n in checkpointed)  # dropout acts


def test_hf_eval_mode_logits_are_the_eval_logits_and_no_grad_is_not_checkpointed():
    denoiser = make_hf("bert").eval()
    x_t, t, cond, _ = hf_inputs()
    with torch.no_grad():
        before = denoiser(x_t, t, cond)
    denoiser.gradient_checkpointing_enable()
    calls = count_hf_layer_calls(denoiser)
    with torch.no_grad():
        assert torch.equal(denoiser(x_t, t, cond), before)
    assert calls[0] == 2
    assert torch.equal(denoiser(x_t, t, cond).detach(), before)  # with grad: no dropout crept in


def test_hf_constructor_flag_and_disable():
    denoiser = make_hf("roberta", gradient_checkpointing=True)
    assert denoiser.is_gradient_checkpointing
    denoiser.gradient_checkpointing_disable()
    assert not denoiser.is_gradient_checkpointing
    assert not make_hf("roberta").is_gradient_checkpointing
    with pytest.raises(ValueError, match="gradient_checkpointing must be a bool"):
        make_hf("bert", gradient_checkpointing="yes")


def test_hf_model_without_support_names_its_class():
    albert = AlbertConfig(
        vocab_size=16,
        embedding_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    denoiser = HFMaskedLMDenoiser(albert, DATA_IDS, MASK_ID)  # fine without the flag
    assert not denoiser.is_gradient_checkpointing
    with pytest.raises(ValueError, match=r"AlbertForMaskedLM does not support gradient checkpointing"):
        HFMaskedLMDenoiser(albert, DATA_IDS, MASK_ID, gradient_checkpointing=True)
    with pytest.raises(ValueError, match=r"AlbertForMaskedLM"):
        denoiser.gradient_checkpointing_enable()


def test_hf_saved_folder_does_not_record_checkpointing(tmp_path):
    denoiser = make_hf("bert", gradient_checkpointing=True)
    denoiser.save_pretrained(tmp_path)
    assert "gradient_checkpointing" not in json.loads((tmp_path / "config.json").read_text())
    loaded = HFMaskedLMDenoiser(tmp_path, DATA_IDS, MASK_ID, prompt_len=2)
    assert not loaded.is_gradient_checkpointing
