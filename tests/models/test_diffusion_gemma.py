"""DiffusionGemmaDenoiser: a tiny random DiffusionGemma (built in code; vision tower shrunk to a stub) rolls
out through BlockSampler + EntropyBoundKernel with exact, recomputable log-probs (self-conditioning
replayed), matches ``model.generate`` (identical sequences in the greedy limit, the same token
marginals otherwise), runs one RL update, loads from a folder, and names bad input."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSamplerConfig,
    LinearTemperatureScheduleLogitsProcessor,
)

from dflow.models import DiffusionGemmaDenoiser
from dflow.paths import MixturePath, UniformSource
from dflow.rl import AllSteps, ClippedSurrogate, Compute, GroupAdvantage, PolicyUpdate, TrajectoryLikelihood
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import BlockSampler, BlockStep, EntropyBoundKernel, recompute_log_probs

V, C, P, S, B = 16, 4, 3, 3, 6


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(init: float = 1.0) -> DiffusionGemmaConfig:
    """Two text layers (one sliding, one full), two experts, a one-layer vision stub. ``init`` large
    enough that the posteriors are peaked (mean entropy ~0.6 nats of ln 16 = 2.8), so distribution
    checks can see a difference."""
    text = dict(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        global_head_dim=8,
        sliding_window=8,
        max_position_embeddings=32,
        num_experts=2,
        top_k_experts=1,
        moe_intermediate_size=16,
        layer_types=["sliding_attention", "full_attention"],
        initializer_range=init,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = dict(
        model_type="gemma4_vision",
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        patch_size=2,
        position_embedding_size=8,
    )
    return DiffusionGemmaConfig(
        text_config=text,
        vision_config=vision,
        canvas_length=C,
        boi_token_id=V - 3,
        eoi_token_id=V - 2,
        image_token_id=V - 1,
        initializer_range=init,
    )


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> DiffusionGemmaForBlockDiffusion:
    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(tiny_config()).to(dtype).eval()


def prompts(batch: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, V - 3, (batch, P), generator=torch.Generator().manual_seed(seed))


def sampler(**kw) -> BlockSampler:
    kernel = EntropyBoundKernel(**{"entropy_bound": 1.0, **kw})
    return BlockSampler(MixturePath(UniformSource(V)), kernel, block_len=C, steps_per_block=S)


def rollout(policy, smp=None, batch=B, blocks=2, seed=1):
    smp = smp if smp is not None else sampler()
    traj = smp.rollout(
        policy, prompts(batch), batch_size=batch, seq_len=blocks * C, generator=torch.Generator().manual_seed(seed)
    )
    return smp, traj


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rollout_log_probs_are_recomputed_exactly(dtype) -> None:
    policy = DiffusionGemmaDenoiser(tiny_model(dtype=dtype))
    smp, traj = rollout(policy)
    K = 2 * S
    assert traj.states.shape == (K + 1, B, 2 * C) and traj.log_probs.dtype == torch.float32
    assert bool(torch.isfinite(traj.log_probs).all()) and int(traj.x1.max()) < V
    new = recompute_log_probs(smp, policy, traj)  # replays self-conditioning and the cache under the same weights
    assert torch.equal(new, traj.log_probs)
    assert torch.equal(recompute_log_probs(smp, policy, traj, steps=[4, 1]), traj.log_probs[:, [4, 1]])


def test_self_conditioning_is_part_of_the_state() -> None:
    model = tiny_model()
    smp, traj = rollout(DiffusionGemmaDenoiser(model))
    without = DiffusionGemmaDenoiser(model, self_conditioning=False)
    first_steps = [0, S]  # no self-conditioning yet at a block's first step: the same numbers
    assert torch.equal(recompute_log_probs(smp, without, traj, first_steps), traj.log_probs[:, first_steps])
    later = [1, 2, S + 1]
    assert not torch.equal(recompute_log_probs(smp, without, traj, later), traj.log_probs[:, later])


@pytest.mark.parametrize("sc_grad", [True, False])
def test_gradient_through_the_replayed_chain(sc_grad) -> None:
    model = tiny_model()
    policy = DiffusionGemmaDenoiser(model, self_conditioning_grad=sc_grad)
    smp, traj = rollout(policy)
    # step 2 of block 0 depends on the weights directly and through the fed-back logits of steps 0 and 1
    (grad,) = torch.autograd.grad(
        smp.log_probs(policy, traj, [2]).sum(), model.model.decoder.self_conditioning.up_proj.weight
    )
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    if not sc_grad:
        return
    # the chain's share: with the fed-back logits detached the gradient differs
    detached = DiffusionGemmaDenoiser(model, self_conditioning_grad=False)
    (other,) = torch.autograd.grad(
        smp.log_probs(detached, traj, [2]).sum(), model.model.decoder.self_conditioning.up_proj.weight
    )
    assert not torch.allclose(grad, other)


def generate(model, ids, steps, **kw):
    sc = EntropyBoundSamplerConfig(entropy_bound=float(kw.pop("entropy_bound")))
    off = dict(stability_threshold=None, confidence_threshold=None)  # adaptive stopping off: a fixed step count
    return model.generate(ids, max_denoising_steps=steps, sampler_config=sc, **off, **kw).sequences[:, ids.shape[1] :]


def test_greedy_limit_gives_the_sequences_of_generate() -> None:
    # Near-zero temperatures make every draw the argmax and every entropy ~0, so with a huge bound
    # every token is accepted and both samplers are deterministic given the starting canvas. Block 2
    # is generated by a second generate call from prompt + block 1 with the same starting canvas.
    model = tiny_model(seed=3)
    settings = dict(entropy_bound=1e9, t_min=1e-4, t_max=2e-4)
    smp = sampler(**settings, final_step="argmax")
    _, traj = rollout(DiffusionGemmaDenoiser(model), smp, seed=5)
    x0, ids = traj.states[0].long(), prompts()
    torch.manual_seed(0)
    first = generate(model, ids, S, decoder_input_ids=x0[:, :C], max_new_tokens=C, **settings)
    second = generate(model, torch.cat([ids, first], 1), S, decoder_input_ids=x0[:, C:], max_new_tokens=C, **settings)
    assert torch.equal(torch.cat([first, second], 1), traj.x1)


def test_token_marginals_match_generate() -> None:
    # Same model and settings (entropy bound 0.5, temperatures 2.0 -> 0.2, 3 steps per block, the argmax
    # canvas as each block's output), N = 4000 samples from each: the mean over the 8 positions of the
    # two-sample TV between per-position token marginals is below E[TV] <= 0.5 sqrt(2 V / N) plus the
    # McDiarmid margin sqrt(ln(1e6) / N) (one sample moves the mean by <= 1/N): 0.103. Power (measured,
    # N = 20,000): ending blocks on a draw instead of the argmax moves the statistic by 0.17; a constant
    # temperature of 1 only by 0.054, which this check cannot see (test_temperature_schedule_is_generates
    # pins the schedule exactly). The greedy test above pins cache, positions and self-conditioning.
    torch.manual_seed(1)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(init=0.3)).eval()  # flatter posteriors: the final step matters
    N, settings = 4000, dict(entropy_bound=0.5, t_min=0.2, t_max=2.0)
    _, traj = rollout(DiffusionGemmaDenoiser(model), sampler(**settings, final_step="argmax"), batch=N, seed=2)
    torch.manual_seed(2)
    ref = generate(model, prompts(N), S, max_new_tokens=2 * C, **settings)

    def marginals(x: torch.Tensor) -> torch.Tensor:  # [2C, V]
        return torch.stack([torch.bincount(x[:, i], minlength=V).double() / N for i in range(2 * C)])

    tv = (0.5 * (marginals(traj.x1) - marginals(ref)).abs().sum(-1)).mean().item()
    assert tv < 0.5 * math.sqrt(2 * V / N) + math.sqrt(math.log(1e6) / N), tv


def test_temperature_schedule_is_generates() -> None:
    for steps in (1, 3, 48):
        ref = LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=steps)
        kernel = EntropyBoundKernel(t_min=0.4, t_max=0.8)
        logits = torch.randn(2, C, V)
        for j in range(steps):  # generate counts cur_step down from steps to 1
            step = BlockStep(j, steps, torch.zeros(2), torch.ones(2))
            want = ref(None, logits, cur_step=steps - j)
            torch.testing.assert_close(kernel.sampling_logits(logits, step), want, rtol=1e-6, atol=0)


def test_one_rl_update_through_trajectory_likelihood() -> None:
    model = tiny_model()
    policy = DiffusionGemmaDenoiser(model)
    smp, traj = rollout(policy)
    group = 2
    adv = GroupAdvantage()(AdvantageInput(traj.x1.float().mean(-1), group))  # varies within each group
    update = PolicyUpdate(TrajectoryLikelihood(AllSteps()), ClippedSurrogate(0.2), num_inner_epochs=2)
    prepared = update.prepare(policy, None, traj, adv, smp, group, Compute(), torch.Generator().manual_seed(0))
    out = update.loss(policy, prepared, torch.arange(B), smp, Compute())
    assert out.stats["ratio_min"] == 1.0 and out.stats["ratio_max"] == 1.0
    weight = model.model.decoder.self_conditioning.down_proj.weight
    before = weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    out.loss.backward()
    opt.step()
    assert not torch.equal(before, weight)


def test_plain_call_is_the_first_denoising_step_of_one_block() -> None:
    model = tiny_model()
    policy = DiffusionGemmaDenoiser(model)
    ids, canvas = prompts(), torch.randint(0, V, (B, C), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(input_ids=ids, decoder_input_ids=canvas).logits
        got = policy(canvas, torch.zeros(B), ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one canvas of canvas_length=4 tokens"):
        policy(torch.zeros(B, 2 * C, dtype=torch.long), torch.zeros(B), ids)


def test_from_pretrained_and_bad_folders(tmp_path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path / "dg")
    loaded = DiffusionGemmaDenoiser.from_pretrained(tmp_path / "dg")
    assert loaded.model.dtype == torch.bfloat16 and loaded.vocab_size == V and loaded.canvas_length == C
    smp, traj = rollout(loaded)
    assert torch.equal(recompute_log_probs(smp, loaded, traj), traj.log_probs)
    BertForMaskedLM(
        BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"model_type='bert' \(\['BertForMaskedLM'\]\); supported: diffusion_gemma"):
        DiffusionGemmaDenoiser.from_pretrained(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        DiffusionGemmaDenoiser.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="wraps a DiffusionGemmaForBlockDiffusion, got BertForMaskedLM"):
        DiffusionGemmaDenoiser(BertForMaskedLM.from_pretrained(tmp_path / "bert"))  # type: ignore[arg-type]


def test_bad_input_is_named() -> None:
    policy = DiffusionGemmaDenoiser(tiny_model())
    wrong_block = BlockSampler(MixturePath(UniformSource(V)), EntropyBoundKernel(), block_len=2, steps_per_block=S)
    with pytest.raises(ValueError, match="block_len=2 must equal the model's canvas_length=4"):
        wrong_block.rollout(policy, prompts(), batch_size=B, seq_len=C)
    with pytest.raises(ValueError, match=r"needs a prompt cond of token ids \[B=6, P >= 1\], got None"):
        sampler().rollout(policy, None, batch_size=B, seq_len=C)
    with pytest.raises(
        ValueError, match="prompt length 3 \\+ seq_len 32 exceeds the model's max_position_embeddings=32"
    ):
        sampler().rollout(policy, prompts(), batch_size=B, seq_len=8 * C)
    with pytest.raises(ValueError, match=r"prompt ids must be integers in \[0, 16\)"):
        sampler().rollout(policy, prompts() + V, batch_size=B, seq_len=C)
    guided = BlockSampler(
        MixturePath(UniformSource(V)), EntropyBoundKernel(), block_len=C, steps_per_block=S, guidance_scale=2.0
    )
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a plain denoiser"):
        guided.rollout(policy, prompts(), batch_size=B, seq_len=C)
