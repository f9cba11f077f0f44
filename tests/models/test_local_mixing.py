"""DFlowConfig.conv_kernel: a depthwise convolution over the pixel tokens before each block."""

from __future__ import annotations

import pytest
import torch

from dflow.models import DFlowConfig, DFlowTransformer


def make(**kw) -> DFlowTransformer:
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=5,
        seq_len=16,
        prompt_len=2,
        prompt_vocab_size=4,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        image_shape=(4, 4),
    )
    return DFlowTransformer(DFlowConfig(**{**cfg, **kw})).eval()


def test_conv_is_off_by_default_and_adds_one_depthwise_conv_per_block():
    assert make().local_mix is None
    model = make(conv_kernel=3)
    assert len(model.local_mix) == 2
    assert all(c.groups == 16 and c.kernel_size == (3, 3) for c in model.local_mix)


def test_conv_mixes_pixel_tokens_only_and_round_trips(tmp_path):
    model = make(conv_kernel=3)
    x = torch.randint(0, 5, (3, 16))
    t, cond = torch.rand(3), torch.randint(0, 4, (3, 2))
    out = model(x, t, cond)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the convolution sees the pixels as a 4x4 image: zeroing it changes the output
    with torch.no_grad():
        for conv in model.local_mix:
            conv.weight.zero_(), conv.bias.zero_()
        assert not torch.allclose(model(x, t, cond), out)
    model.save_pretrained(tmp_path)
    again = DFlowTransformer.from_pretrained(tmp_path).eval()
    assert again.config.conv_kernel == 3 and torch.equal(again(x, t, cond), model(x, t, cond))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(conv_kernel=2), "conv_kernel must be 0 or an odd int"),
        (dict(conv_kernel=-1), "conv_kernel must be 0 or an odd int"),
        (dict(conv_kernel=3, image_shape=None), "conv_kernel=3 needs image_shape"),
    ],
)
def test_bad_conv_kernel_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)
