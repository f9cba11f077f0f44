"""Bad input to a path raises ValueError whose message names the argument and the offending value."""

from __future__ import annotations

import pytest
import torch

from dflow.paths import LinearScheduler, MaskSource, MetricPath, MixturePath, UniformSource

V, B, L = 4, 2, 3


def _paths():
    return [
        MixturePath(MaskSource(V), LinearScheduler()),
        MixturePath(UniformSource(V), LinearScheduler(), discretization="euler"),
        MetricPath(distance=1.0 - torch.eye(V)),
    ]


PATH_IDS = ["mask-exact", "uniform-euler", "metric"]
X = torch.zeros(B, L, dtype=torch.long)
T, S = torch.full((B,), 0.2), torch.full((B,), 0.6)
P = torch.full((B, L, V), 1.0 / V)


@pytest.mark.parametrize("path", _paths(), ids=PATH_IDS)
@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((P, X[0], T, S), r"x_t must be an integer tensor \[B, L\], got shape=\(3,\)"),
        ((P, X.float(), T, S), r"x_t must be an integer tensor \[B, L\], got shape=\(2, 3\) dtype=torch.float32"),
        ((P, X + 9, T, S), r"x_t values must be in \[0, [45]\), got range \[9, 9\]"),
        ((P[:, :2], X, T, S), r"posterior must have shape \[B, L, V\]=\(2, 3, 4\), got \(2, 2, 4\)"),
        ((torch.full((B, L, V + 1), 0.2), X, T, S), r"posterior width must equal the source's vocabulary V=4, got 5"),
        ((P, X, T[:1], S), r"t must be a float tensor of shape \[B\]=\(2,\), got \(1,\)"),
        ((P, X, 0.2, S), r"t must be a float tensor of shape \[B\]=\(2,\), got float"),
        ((P, X, T, torch.full((B,), 1.5)), r"s must lie in \[0, 1\], got values \[1.5, 1.5\]"),
        ((P, X, torch.full((B,), -0.1), S), r"t must lie in \[0, 1\], got values \[-0.1"),
        ((P, X, S, T), r"step requires s > t, got t=0.6\d* s=0.2\d* at batch index 0"),
        ((P, X, T, T), r"step requires s > t, got t=0.2\d* s=0.2\d* at batch index 0"),
    ],
)
def test_step_kernel_rejects(path, args, match) -> None:
    with pytest.raises(ValueError, match=match):
        path.step_kernel(*args)


@pytest.mark.parametrize("path", _paths(), ids=PATH_IDS)
def test_sample_xt_rejects(path) -> None:
    with pytest.raises(ValueError, match=r"x1 values must be in \[0, 4\), got range \[0, 4\]"):
        path.sample_xt(torch.tensor([[0, 4]]), torch.tensor([0.5]))  # the mask id is never clean data
    with pytest.raises(ValueError, match=r"t must be a float tensor of shape \[B\]=\(2,\), got \(2, 1\)"):
        path.sample_xt(X, torch.zeros(B, 1))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got values \[0.5, 1.25\]"):
        path.sample_xt(X, torch.tensor([0.5, 1.25]))


@pytest.mark.parametrize("path", _paths(), ids=PATH_IDS)
def test_logits_shapes_are_checked_by_sample_step_and_step_log_prob(path) -> None:
    wide = torch.zeros(B, L, V + 2)  # would silently renormalise over / draw states that do not exist
    with pytest.raises(ValueError, match=r"logits width must equal the source's vocabulary V=4, got 6"):
        path.step_log_prob(wide, X, X, T, S)
    with pytest.raises(ValueError, match=r"logits width must equal the source's vocabulary V=4, got 6"):
        path.sample_step(wide, X, T, S)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, L, V\]=\(2, 3, 4\), got \(2, 4, 4\)"):
        path.step_log_prob(torch.zeros(B, L + 1, V), X, X, T, S)
    with pytest.raises(ValueError, match=r"x_s shape \(2, 2\) must equal x_t shape \(2, 3\)"):
        path.step_log_prob(torch.zeros(B, L, V), X, X[:, :2], T, S)


@pytest.mark.parametrize("path", _paths(), ids=PATH_IDS)
def test_generalized_kl_rejects(path) -> None:
    logits = torch.zeros(B, L, V)
    with pytest.raises(ValueError, match=r"x_t shape \(2, 2\) must equal x1 shape \(2, 3\)"):
        path.generalized_kl(logits, X, X[:, :2], T)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, L, V\]=\(2, 3, 4\), got \(2, 3\)"):
        path.generalized_kl(logits[..., 0], X, X, T)
    with pytest.raises(ValueError, match=r"logits width must equal the source's vocabulary V=4, got 3"):
        path.generalized_kl(logits[..., :3], X, X, T)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got values \[2.0, 2.0\]"):
        path.generalized_kl(logits, X, X, torch.full((B,), 2.0))


@pytest.mark.parametrize("bad", ["Euler", "exactt", None])
def test_unknown_discretization(bad) -> None:
    with pytest.raises(ValueError, match=rf"unknown discretization={bad!r}"):
        MixturePath(UniformSource(V), discretization=bad)


def test_source_must_be_a_source() -> None:
    with pytest.raises(ValueError, match=r"source must be a dflow.paths Source, got 4"):
        MixturePath(V)


def test_metric_path_needs_small_vocab_for_the_full_kernel() -> None:
    path = MetricPath(distance=1.0 - torch.eye(V), exact_max_vocab=2)
    with pytest.raises(ValueError, match=r"needs V <= exact_max_vocab, V=4"):
        path.step_kernel(P, X, T, S)
    with pytest.raises(ValueError, match=r"needs V <= exact_max_vocab, V=4"):
        path.generalized_kl(torch.zeros(B, L, V), X, X, T)
