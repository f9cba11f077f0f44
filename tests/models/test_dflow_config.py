"""DFlowConfig: defaults, num_states, validation naming the field, JSON round trip."""

import pytest

from dflow.models import DFlowConfig


def test_defaults_are_a_valid_unmasked_config():
    config = DFlowConfig()
    assert config.mask_id is None
    assert config.num_states == config.vocab_size
    assert config.time_conditioning is False  # FUDOKI / URSA are time-agnostic
    assert config.dropout == 0.0


def test_num_states_counts_the_mask_id():
    config = DFlowConfig(vocab_size=10, mask_id=10)
    assert config.num_states == 11


def test_standard_transformers_names_alias_the_dflow_ones():
    config = DFlowConfig(hidden_size=32, num_layers=3, num_heads=2)
    assert config.num_hidden_layers == 3
    assert config.num_attention_heads == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vocab_size": 10, "mask_id": 9}, "mask_id"),  # the mask id must be exactly V
        ({"vocab_size": 10, "mask_id": 11}, "mask_id"),
        ({"vocab_size": 10, "mask_id": 0}, "mask_id"),
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size"),
        ({"seq_len": 16, "image_shape": (4, 5)}, "image_shape"),
        ({"seq_len": 16, "image_shape": (16,)}, "image_shape"),
        ({"seq_len": 16, "image_shape": (4, 0)}, "image_shape"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"seq_len": 0}, "seq_len"),
        ({"prompt_len": -1}, "prompt_len"),
        ({"prompt_vocab_size": 0}, "prompt_vocab_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": True}, "num_layers"),
        ({"num_heads": 0}, "num_heads"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"time_conditioning": "yes"}, "time_conditioning"),
        ({"initializer_range": 0.0}, "initializer_range"),
        ({"layer_norm_eps": -1e-6}, "layer_norm_eps"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        DFlowConfig(**overrides)


def test_image_shape_must_factor_seq_len():
    config = DFlowConfig(seq_len=12, image_shape=[3, 4])  # a list, as config.json stores it
    assert config.image_shape == (3, 4)


def test_save_and_load_round_trip(tmp_path):
    config = DFlowConfig(vocab_size=8, mask_id=8, seq_len=6, image_shape=(2, 3), prompt_len=3, time_conditioning=True)
    config.save_pretrained(tmp_path)
    loaded = DFlowConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.image_shape == (2, 3)  # a tuple again, not the JSON list
    assert loaded.num_states == 9
