"""HFMaskedLMDenoiser on tiny random masked LMs saved to a temp dir (never the hub)."""

import pytest
import torch
from transformers import BertConfig, DistilBertConfig, RobertaConfig

from dflow.models import Denoiser, HFMaskedLMDenoiser

# tokenizer ids: 4 is the mask token, 5..8 are the four data values
DATA_IDS, MASK_ID, LC, B, L = [5, 6, 7, 8], 4, 2, 3, 5
V = len(DATA_IDS)


def tiny_bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    HFMaskedLMDenoiser(tiny_bert_config(), DATA_IDS, MASK_ID).save_pretrained(path)
    return path


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, V + 1, (B, L), generator=gen)  # states 0..V, V = mask
    x_t[:, 0] = V
    cond = torch.randint(1, 16, (B, LC), generator=gen)
    return x_t, torch.rand(B, generator=gen), cond


def reference_logits(mlm, x_t, cond):
    """What the adapter should compute, written out by hand."""
    table = torch.tensor(DATA_IDS + [MASK_ID])
    input_ids = torch.cat([cond, table[x_t]], dim=1)
    logits = mlm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    return logits[:, cond.shape[1] :, DATA_IDS]


def test_loads_by_path_and_maps_states_onto_tokenizer_ids(bert_dir):
    denoiser = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID, prompt_len=LC).eval()
    assert isinstance(denoiser, Denoiser)
    assert (denoiser.vocab_size, denoiser.num_states) == (V, V + 1)
    x_t, t, cond = inputs()
    with torch.no_grad():
        logits = denoiser(x_t, t, cond)
        expected = reference_logits(denoiser.mlm, x_t, cond)
    assert logits.shape == (B, L, V)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_mask_state_is_fed_as_the_mask_token(bert_dir):
    denoiser = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID).eval()
    x_t = torch.full((1, L), V)  # all masked
    with torch.no_grad():
        logits = denoiser(x_t, torch.zeros(1))
        ids = torch.full((1, L), MASK_ID)
        direct = denoiser.mlm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(logits, direct[..., DATA_IDS])


def test_ignores_t_and_cond_none_is_the_all_zero_prompt(bert_dir):
    denoiser = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID, prompt_len=LC).eval()
    x_t, t, cond = inputs()
    with torch.no_grad():
        assert torch.equal(denoiser(x_t, t, cond), denoiser(x_t, 1.0 - t, cond))
        zeros = torch.zeros(B, LC, dtype=torch.long)
        assert torch.equal(denoiser(x_t, t, None), denoiser(x_t, t, zeros))
        assert not torch.equal(denoiser(x_t, t, None), denoiser(x_t, t, cond))


def test_pad_token_id_replaces_prompt_zeros(bert_dir):
    remapped = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID, prompt_len=LC, pad_token_id=1).eval()
    plain = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID, prompt_len=LC).eval()
    x_t, t, _ = inputs()
    with torch.no_grad():
        ones = torch.ones(B, LC, dtype=torch.long)
        assert torch.equal(remapped(x_t, t, None), plain(x_t, t, ones))


def test_state_dict_is_the_wrapped_models(bert_dir):
    denoiser = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID)
    assert set(denoiser.state_dict()) == {f"mlm.{k}" for k in denoiser.mlm.state_dict()}


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    denoiser = HFMaskedLMDenoiser(tiny_bert_config(), DATA_IDS, MASK_ID, prompt_len=LC)
    x_t, t, cond = inputs()
    denoiser(x_t, t, cond).logsumexp(-1).sum().backward()
    params = denoiser.named_parameters()
    dead = [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize(
    "config",
    [
        DistilBertConfig(vocab_size=16, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=16),
        RobertaConfig(
            vocab_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
        ),
        {
            "model_type": "bert",
            "vocab_size": 16,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    ],
    ids=["distilbert", "roberta", "bert-dict"],
)
def test_other_architectures_from_a_config(config):
    torch.manual_seed(0)
    denoiser = HFMaskedLMDenoiser(config, DATA_IDS, MASK_ID, prompt_len=LC).eval()
    x_t, t, cond = inputs()
    with torch.no_grad():
        expected = reference_logits(denoiser.mlm, x_t, cond)
        torch.testing.assert_close(denoiser(x_t, t, cond), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"data_token_ids": [5, 6, 6, 8]}, "data_token_ids"),  # duplicate
        ({"data_token_ids": [5, 6, 7, 16]}, "data_token_ids"),  # outside the vocab of 16
        ({"data_token_ids": []}, "data_token_ids"),
        ({"mask_token_id": 6}, "mask_token_id"),  # a data id
        ({"mask_token_id": 16}, "mask_token_id"),
        ({"mask_token_id": -1}, "mask_token_id"),
        ({"prompt_len": -1}, "prompt_len"),
        ({"pad_token_id": 16}, "pad_token_id"),
    ],
)
def test_bad_ids_raise_value_error_naming_the_field(kwargs, field):
    arguments = {"data_token_ids": DATA_IDS, "mask_token_id": MASK_ID, **kwargs}
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        HFMaskedLMDenoiser(tiny_bert_config(), **arguments)


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        HFMaskedLMDenoiser(missing, DATA_IDS, MASK_ID)


def test_dict_without_model_type_is_rejected():
    with pytest.raises(ValueError, match="model_type"):
        HFMaskedLMDenoiser({"vocab_size": 16}, DATA_IDS, MASK_ID)


def test_bad_inputs_raise_value_error_naming_the_argument(bert_dir):
    denoiser = HFMaskedLMDenoiser(bert_dir, DATA_IDS, MASK_ID, prompt_len=LC)
    x_t, t, cond = inputs()
    with pytest.raises(ValueError, match=r"^x_t\b"):
        denoiser(x_t + V + 1, t, cond)  # beyond the mask state
    with pytest.raises(ValueError, match=r"^x_t\b"):
        denoiser(x_t.float(), t, cond)
    with pytest.raises(ValueError, match=r"^x_t\b"):
        denoiser(torch.zeros(B, 15, dtype=torch.long), t, cond)  # 2 + 15 > 16 positions
    with pytest.raises(ValueError, match=r"^t\b"):
        denoiser(x_t, t[:1], cond)
    with pytest.raises(ValueError, match=r"^cond\b"):
        denoiser(x_t, t, cond[:, :1])
    with pytest.raises(ValueError, match=r"^cond\b"):
        denoiser(x_t, t, cond + 16)
