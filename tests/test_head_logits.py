"""Head-fused scoring (dflow.logprobs.HeadLogits): the logits are made from the hidden state one chunk
of tokens at a time, in forward and in backward, with the values and gradients of the full logits.

The memory claim is checked structurally: a dispatch mode records every tensor whose last dimension is
``V`` that any operation makes, and none may hold more than one chunk of tokens. The same check, run on
every likelihood estimator that scores through :func:`dflow.logprobs.scoring_logits`, fails when an
estimator goes back to calling the denoiser for its full logits.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dflow.logprobs import (
    HeadLogits,
    can_fuse_head,
    log_softmax_gather,
    scoring_logits,
    set_chunk_elements,
    set_fused_head,
)
from dflow.models import DFlowConfig, DFlowTransformer
from dflow.models.lora import AdaptersOff, LoRAConfig, apply_lora
from dflow.paths import MaskSource, MixturePath, UniformSource
from dflow.rl import (
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    IntermediateActionLikelihood,
    MeanFieldLikelihood,
    SandwichedBounds,
)
from dflow.sampling import Sampler

B, L, D, V = 3, 5, 6, 40  # 15 tokens: chunk sizes 4 and 7 do not divide it


class _VocabSizes(TorchDispatchMode):
    """Element counts of every tensor with last dimension ``V`` that any operation returns, except the
    head's weight seen as ``[hidden, V]`` (a parameter, not logits)."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.vocab, self.weight, self.sizes = vocab, (hidden, vocab), [0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab and t.shape != self.weight:
                self.sizes.append(t.numel())
        return out


def _head_inputs(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    head = torch.nn.Linear(D, V).to(dtype)
    with torch.no_grad():
        head.weight.copy_(3 * torch.randn(V, D, generator=g, dtype=torch.float64))
    index = torch.randint(0, V, (B, L, 2), generator=g)
    index[0, 0] = 1  # the same entry twice: gradients add
    weight = torch.randn(B, L, 2, generator=g, dtype=torch.float64)
    return hidden, head, index, weight


@pytest.mark.parametrize("chunk", [1, 4, 7, 15, 64, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_the_full_logits(dtype, chunk) -> None:
    hidden, head, index, weight = _head_inputs(dtype)
    params = [hidden, head.weight, head.bias]
    fused = log_softmax_gather(HeadLogits(hidden, head, V), index, chunk_size=chunk)
    grads = torch.autograd.grad((fused * weight.to(fused.dtype)).sum(), params)
    full = log_softmax_gather(head(hidden), index)
    want = torch.autograd.grad((full * weight.to(full.dtype)).sum(), params)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert fused.dtype == full.dtype and fused.shape == (B, L, 2)
    torch.testing.assert_close(fused, full, **tol)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, **tol)


def test_bfloat16_head_is_scored_in_float32() -> None:
    hidden, head, index, _ = _head_inputs(torch.bfloat16)
    fused = log_softmax_gather(HeadLogits(hidden, head, V), index, chunk_size=4)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, torch.log_softmax(head(hidden).float(), -1).gather(-1, index))


@pytest.mark.parametrize("chunk", [1, 4])
def test_no_logits_beyond_one_chunk_in_forward_or_backward(chunk) -> None:
    hidden, head, index, weight = _head_inputs(torch.float32)
    with _VocabSizes(V, D) as seen:
        out = log_softmax_gather(HeadLogits(hidden, head, V), index, chunk_size=chunk)
        (out * weight.float()).sum().backward()
    assert max(seen.sizes) <= chunk * V, (max(seen.sizes), chunk * V)
    assert head.weight.grad is not None and hidden.grad is not None
    with _VocabSizes(V, D) as seen:  # the check sees the full logits of the plain path
        (log_softmax_gather(head(hidden), index, chunk_size=chunk) * weight.float()).sum().backward()
    assert max(seen.sizes) == B * L * V


def test_head_weight_gets_its_gradient_when_the_hidden_state_has_none() -> None:
    hidden, head, index, _ = _head_inputs(torch.float32)
    out = log_softmax_gather(HeadLogits(hidden.detach(), head, V), index, chunk_size=4)
    out.sum().backward()
    want = torch.autograd.grad(log_softmax_gather(head(hidden.detach()), index).sum(), head.weight)[0]
    torch.testing.assert_close(head.weight.grad, want)


def test_shape_errors_name_both_shapes() -> None:
    hidden, head, index, _ = _head_inputs(torch.float32)
    with pytest.raises(ValueError, match=r"logits \(3, 5, 40\) and index \(3, 4, 2\)"):
        log_softmax_gather(HeadLogits(hidden, head, V), index[:, :4])


# ---------------------------------------------------------------------------------------------- denoisers
def _model(mask: bool = True, prompt_len: int = 2) -> DFlowTransformer:
    torch.manual_seed(0)
    config = DFlowConfig(
        vocab_size=V,
        mask_id=V if mask else None,
        seq_len=8,
        prompt_len=prompt_len,
        prompt_vocab_size=8,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        time_conditioning=True,
    )
    return DFlowTransformer(config).eval()


def test_dflow_transformer_head_logits_are_its_forward() -> None:
    model = _model()
    x, t, cond = torch.randint(0, V + 1, (B, 8)), torch.rand(B), torch.randint(0, 8, (B, 2))
    lazy = model.head_logits(x, t, cond)
    assert isinstance(lazy, HeadLogits) and lazy.shape == (B, 8, V)
    assert torch.equal(lazy.materialize(), model(x, t, cond))


def test_scoring_logits_falls_back_to_the_logits() -> None:
    model = _model()
    x, t, cond = torch.randint(0, V + 1, (B, 8)), torch.rand(B), torch.randint(0, 8, (B, 2))
    assert isinstance(scoring_logits(model, x, t, cond), HeadLogits)
    plain = scoring_logits(lambda *a: model(*a), x, t, cond)  # a function: no head_logits
    assert torch.is_tensor(plain)
    assert not can_fuse_head(torch.compile(model))  # compiled: scored through the compiled forward
    previous = set_fused_head(False)
    try:
        assert torch.is_tensor(scoring_logits(model, x, t, cond))
    finally:
        set_fused_head(previous)
    with pytest.raises(ValueError, match="enabled must be a bool"):
        set_fused_head("yes")  # type: ignore[arg-type]


def test_lora_reference_scores_with_the_adapters_off_in_the_head_too() -> None:
    base = _model()
    x, t, cond = torch.randint(0, V + 1, (B, 8)), torch.rand(B), torch.randint(0, 8, (B, 2))
    target = torch.randint(0, V, (B, 8, 1))
    with torch.no_grad():
        want = log_softmax_gather(base(x, t, cond), target)
    policy = apply_lora(base, LoRAConfig(rank=4, alpha=8.0, target_modules=["qkv", "head"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the output, in the layers and in the head
        moved = log_softmax_gather(scoring_logits(policy, x, t, cond), target)
        reference = AdaptersOff(policy)
        lazy = scoring_logits(reference, x, t, cond)
        assert isinstance(lazy, HeadLogits)
        got = log_softmax_gather(lazy, target, chunk_size=3)
    assert not torch.allclose(moved, want, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_scoring_logits_apply_the_temperature(temperature) -> None:
    model = _model(mask=False, prompt_len=2)
    sampler = Sampler(MixturePath(UniformSource(V)), num_steps=4, temperature=temperature)
    x, t, cond = torch.randint(0, V, (B, 8)), torch.rand(B), torch.randint(0, 8, (B, 2))
    target = torch.randint(0, V, (B, 8, 1))
    lazy = sampler.scoring_logits(model, x, t, cond)
    assert isinstance(lazy, HeadLogits)
    with torch.no_grad():
        torch.testing.assert_close(
            log_softmax_gather(lazy, target, chunk_size=3),
            log_softmax_gather(sampler.logits(model, x, t, cond), target),
        )
    guided = Sampler(MixturePath(UniformSource(V)), num_steps=4, guidance_scale=2.0)
    assert torch.is_tensor(guided.scoring_logits(model, x, t, cond))  # guidance mixes two passes: plain logits


# ---------------------------------------------------------------------------------------------- estimators
ESTIMATORS = {
    "udm_grpo": lambda: ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
    "udm_grpo_guided": lambda: ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1, use_guidance=True),
    "intermediate_action": lambda: IntermediateActionLikelihood(),
    "mean_field": lambda: MeanFieldLikelihood(p_mask_prompt=0.5, prompt_mask_id=0, per_token=True),
    "elbo": lambda: ELBOLikelihood(num_timesteps=2, grid_steps=4),
    "spg": lambda: SandwichedBounds(num_draws=2, block_length=4),
    "coupled": lambda: CoupledELBOLikelihood(num_pairs=1, full_noise=True),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_score_through_the_head_one_chunk_at_a_time(name) -> None:
    estimator = ESTIMATORS[name]()
    model = _model().double()  # float64, so the fused and plain values agree to a tight tolerance
    sampler = Sampler(MixturePath(MaskSource(V)), num_steps=4, record_draws=True)
    estimator.validate(sampler)
    cond = torch.randint(1, 8, (B, 2))
    traj = sampler.rollout(model, cond, batch_size=B, seq_len=8, generator=torch.Generator().manual_seed(0))
    plan = estimator.plan(traj, sampler, torch.Generator().manual_seed(1))
    chunk = 2  # tokens per chunk of the fused scoring: its work per token is 3 V elements
    previous = set_chunk_elements(chunk * 3 * V)
    try:
        with _VocabSizes(V, 32) as seen:
            fused = estimator.log_probs(model, traj, plan, sampler)
            fused.sum().backward()
        fused_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        set_fused_head(False)
        plain = estimator.log_probs(model, traj, plan, sampler)
        plain.sum().backward()
    finally:
        set_chunk_elements(previous)
        set_fused_head(True)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-10)
    assert fused_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[n], p.grad, rtol=1e-9, atol=1e-10)
    # (use_guidance with the sampler's default scale of 1 is unguided, so it is fused too)
    assert max(seen.sizes) <= chunk * V < B * 8 * V, (name, max(seen.sizes), chunk * V)


# ---------------------------------------------------------------------------------------------- pretraining
@pytest.mark.parametrize("loss_name", ["cross_entropy", "generalized_kl"])
def test_pretraining_losses_score_through_the_head_one_chunk_at_a_time(loss_name) -> None:
    from dflow.lightning import CrossEntropyLoss, GeneralizedKLLoss, PretrainModule, TransformerDenoiser
    from dflow.tasks import ShapesTask

    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=4, test_prompts_per_category=2)
    loss = CrossEntropyLoss() if loss_name == "cross_entropy" else GeneralizedKLLoss()
    torch.manual_seed(0)
    module = PretrainModule(
        TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2), MixturePath(UniformSource(7)), loss=loss
    )
    module.bind(task)
    module.double()
    assert loss.takes_head_logits(module.path)
    batch = task.sample_data(4, torch.Generator().manual_seed(0))
    tokens = batch.x1.numel()
    previous = set_chunk_elements(2 * 3 * 7)  # 2 tokens per chunk
    try:
        with _VocabSizes(7, 16) as seen:
            fused = module.loss_on(batch.x1, batch.cond, torch.Generator().manual_seed(1))
            fused.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        module.zero_grad()
        set_fused_head(False)
        plain = module.loss_on(batch.x1, batch.cond, torch.Generator().manual_seed(1))
        plain.backward()
    finally:
        set_chunk_elements(previous)
        set_fused_head(True)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)
    for n, p in module.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12)
    assert max(seen.sizes) <= 2 * 7 < tokens * 7, (max(seen.sizes), tokens)
