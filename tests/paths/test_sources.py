"""Sources ``p_0``: state counts, mask ids, probabilities, Monte-Carlo frequencies, log-probs, validation."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.paths import MaskSource, MixtureSource, UniformSource

F64 = torch.float64
V = 5


def _sources():
    return [MaskSource(V), UniformSource(V), MixtureSource(V, 0.3), MixtureSource(V, 0.0), MixtureSource(V, 1.0)]


def test_states_and_mask_ids() -> None:
    assert (MaskSource(V).num_states, MaskSource(V).mask_id) == (V + 1, V)
    assert (UniformSource(V).num_states, UniformSource(V).mask_id) == (V, None)
    assert (MixtureSource(V, 0.3).num_states, MixtureSource(V, 0.3).mask_id) == (V + 1, V)
    for src in _sources():
        assert src.vocab_size == V


def test_probs_values() -> None:
    torch.testing.assert_close(MaskSource(V).probs(F64), torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=F64))
    torch.testing.assert_close(UniformSource(V).probs(F64), torch.full((V,), 0.2, dtype=F64))
    # mixture: 0.3 on the mask, (1 - 0.3) / 5 = 0.14 on each data value
    torch.testing.assert_close(
        MixtureSource(V, 0.3).probs(F64), torch.tensor([0.14] * 5 + [0.3], dtype=F64), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("src", _sources(), ids=repr)
def test_probs_sum_to_one(src) -> None:
    p = src.probs(F64)
    assert p.shape == (src.num_states,)
    assert bool((p >= 0).all())
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("src", _sources(), ids=repr)
def test_sample_frequencies_match_probs(src) -> None:
    n = 60_000
    g = torch.Generator().manual_seed(0)
    x = src.sample((300, 200), generator=g)
    assert x.shape == (300, 200) and x.dtype == torch.long
    freq = torch.bincount(x.flatten(), minlength=src.num_states).to(F64) / n
    p = src.probs(F64)
    # binomial standard error per state; 5 sigma (<= 0.0102 for p = 1/2) fails by chance w.p. < 1e-5 per state
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-12
    assert bool(((freq - p).abs() <= tol).all()), (freq, p)


def test_sample_is_reproducible_with_a_generator() -> None:
    src = MixtureSource(V, 0.4)
    a = src.sample((4, 7), generator=torch.Generator().manual_seed(3))
    b = src.sample((4, 7), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("src", _sources(), ids=repr)
def test_log_prob(src) -> None:
    x = torch.arange(src.num_states).repeat(2, 1)  # [2, S] every state twice
    expected = src.probs(F64).log().repeat(2, 1)
    torch.testing.assert_close(src.log_prob(x), expected)


def test_log_prob_hand_values() -> None:
    lp = MixtureSource(4, 0.2).log_prob(torch.tensor([0, 4]))
    assert lp.tolist() == pytest.approx([math.log(0.2), math.log(0.2)], abs=1e-15)  # (1 - 0.2) / 4 = 0.2
    assert MaskSource(4).log_prob(torch.tensor([0])).item() == -math.inf


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None])
def test_mixture_rejects_bad_mask_prob(bad) -> None:
    with pytest.raises(ValueError, match=r"mask_prob must be in \[0, 1\], got mask_prob="):
        MixtureSource(V, bad)


@pytest.mark.parametrize("cls", [MaskSource, UniformSource, MixtureSource])
@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_rejects_bad_vocab_size(cls, bad) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}: vocab_size must be an int >= 1, got vocab_size={bad!r}"):
        cls(bad)


@pytest.mark.parametrize("bad", [torch.tensor([0, 6]), torch.tensor([-1]), torch.tensor([0.5])])
def test_log_prob_rejects_bad_states(bad) -> None:
    with pytest.raises(ValueError, match=r"MaskSource.log_prob: x must hold integer states in \[0, 6\)"):
        MaskSource(V).log_prob(bad)
