"""DFlowTransformer: Denoiser contract, conditioning, bidirectionality, checkpoints, gradients."""

import importlib

import pytest
import torch
from transformers import AutoConfig, AutoModel

import dflow.models.transformer as transformer_module
from dflow.models import Denoiser, DFlowConfig, DFlowTransformer, count_parameters

V, L, LC, B = 8, 6, 3, 4


def make_model(seed: int = 0, **overrides) -> DFlowTransformer:
    kwargs = dict(
        vocab_size=V,
        mask_id=V,
        seq_len=L,
        prompt_len=LC,
        prompt_vocab_size=10,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return DFlowTransformer(DFlowConfig(**kwargs)).eval()


def random_inputs(model: DFlowTransformer, seed: int = 1):
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, config.num_states, (B, config.seq_len), generator=gen)
    t = torch.rand(B, generator=gen)
    cond = torch.randint(1, config.prompt_vocab_size, (B, config.prompt_len), generator=gen)
    return x_t, t, cond if config.prompt_len > 0 else None


def test_is_a_denoiser_with_v_output_columns_even_with_a_mask_id():
    model = make_model()
    assert isinstance(model, Denoiser)
    x_t, t, cond = random_inputs(model)
    x_t[:, 0] = V  # the mask id is a valid input state ...
    logits = model(x_t, t, cond)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (B, L, V)  # ... but never an output column
    assert torch.isfinite(logits).all()


def test_mask_id_input_is_rejected_without_a_mask_state():
    model = make_model(mask_id=None)
    x_t, t, cond = random_inputs(model)
    assert model(x_t, t, cond).shape == (B, L, V)
    x_t[0, 0] = V
    with pytest.raises(ValueError, match=r"^x_t\b"):
        model(x_t, t, cond)


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "c_shape", "name"),
    [
        ((B, L + 1), (B,), (B, LC), "x_t"),
        ((B * L,), (B,), (B, LC), "x_t"),
        ((B, L), (B, 1), (B, LC), "t"),
        ((B, L), (B + 1,), (B, LC), "t"),
        ((B, L), (B,), (B, LC + 1), "cond"),
        ((B, L), (B,), (B,), "cond"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_argument(x_shape, t_shape, c_shape, name):
    model = make_model()
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        model(
            torch.zeros(x_shape, dtype=torch.long),
            torch.zeros(t_shape),
            torch.zeros(c_shape, dtype=torch.long),
        )


def test_bad_values_and_dtypes_raise_value_error():
    model = make_model()
    x_t, t, cond = random_inputs(model)
    with pytest.raises(ValueError, match=r"^x_t\b"):
        model(x_t.float(), t, cond)
    with pytest.raises(ValueError, match=r"^x_t\b"):
        model(x_t - 1 - x_t.max(), t, cond)
    with pytest.raises(ValueError, match=r"^cond\b"):
        model(x_t, t, cond + 10)


def test_compact_integer_states_give_the_same_logits():
    model = make_model()
    x_t, t, cond = random_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x_t.to(torch.uint8), t, cond), model(x_t, t, cond))


def test_time_agnostic_model_ignores_t():
    model = make_model(time_conditioning=False)
    x_t, _, cond = random_inputs(model)
    with torch.no_grad():
        early = model(x_t, torch.full((B,), 0.1), cond)
        late = model(x_t, torch.full((B,), 0.9), cond)
    assert torch.equal(early, late)


def test_time_conditioned_model_depends_on_t():
    model = make_model(time_conditioning=True)
    x_t, _, cond = random_inputs(model)
    with torch.no_grad():
        early = model(x_t, torch.full((B,), 0.1), cond)
        late = model(x_t, torch.full((B,), 0.9), cond)
    assert (early - late).abs().amax(dim=-1).min() > 1e-6  # every position, every sequence


def test_cond_none_is_the_all_zero_prompt_and_the_prompt_matters():
    model = make_model()
    x_t, t, cond = random_inputs(model)
    with torch.no_grad():
        unconditional = model(x_t, t, None)
        zeros = model(x_t, t, torch.zeros(B, LC, dtype=torch.long))
        conditional = model(x_t, t, cond)
    assert torch.equal(unconditional, zeros)
    assert (conditional - unconditional).abs().amax(dim=(1, 2)).min() > 1e-6


def test_unconditional_model_takes_no_prompt():
    model = make_model(prompt_len=0)
    x_t, t, _ = random_inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x_t, t, None), model(x_t, t, torch.zeros(B, 0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"^cond\b"):
        model(x_t, t, torch.zeros(B, 1, dtype=torch.long))


@pytest.mark.parametrize("image_shape", [None, (2, 3)])
def test_attention_is_bidirectional(image_shape):
    model = make_model(image_shape=image_shape)
    x_t, t, cond = random_inputs(model)
    changed_last = x_t.clone()
    changed_last[:, -1] = (x_t[:, -1] + 1) % V
    changed_first = x_t.clone()
    changed_first[:, 0] = (x_t[:, 0] + 1) % V
    with torch.no_grad():
        base = model(x_t, t, cond)
        assert (model(changed_last, t, cond)[:, 0] - base[:, 0]).abs().amax() > 1e-6
        assert (model(changed_first, t, cond)[:, -1] - base[:, -1]).abs().amax() > 1e-6


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize(("prompt_len", "image_shape"), [(LC, None), (0, (2, 3))])
def test_gradient_reaches_every_parameter(time_conditioning, prompt_len, image_shape):
    model = make_model(time_conditioning=time_conditioning, prompt_len=prompt_len, image_shape=image_shape)
    model.train()
    x_t, t, cond = random_inputs(model)
    target = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(2))
    logits = model(x_t, t, cond)
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), target.reshape(-1)).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_save_and_load_give_bit_identical_logits(tmp_path):
    model = make_model(time_conditioning=True, image_shape=(2, 3))
    x_t, t, cond = random_inputs(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()
    loaded = DFlowTransformer.from_pretrained(tmp_path).eval()
    auto_loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto_loaded).__name__ == "DFlowTransformer"
    assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == model.config.to_diff_dict()
    with torch.no_grad():
        expected = model(x_t, t, cond)
        assert torch.equal(loaded(x_t, t, cond), expected)
        assert torch.equal(auto_loaded(x_t, t, cond), expected)


def test_reimporting_the_module_does_not_fail_registration():
    try:
        importlib.reload(transformer_module)  # runs AutoConfig/AutoModel.register a second time
    finally:  # point the auto classes and the module back at the classes the other tests use
        AutoModel.register(DFlowConfig, DFlowTransformer, exist_ok=True)
        transformer_module.DFlowTransformer = DFlowTransformer


def test_count_parameters():
    model = make_model()
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.head.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.head.weight.numel()
    assert count_parameters(model, trainable_only=False) == total
