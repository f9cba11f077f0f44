"""The RL maths does not depend on torch's default dtype.

Lightning's ``precision: bf16-true`` sets the default dtype to bfloat16 for the whole training step,
so every float tensor made without an explicit dtype (a uniform draw, a buffer of log-probs) becomes
bfloat16 there. The sampler's uniforms then compared 8-bit-mantissa numbers with float32 jump
probabilities (rollouts no longer followed the kernel their log-probs score), and the buffer of
recomputed old / reference values was bfloat16 (an error when a float32 value was stored in it).

Here a float32 policy and reference run a rollout, the update's preparation and one mini-batch loss
under each default dtype: every trajectory, unit value and loss must be identical, bit for bit.
Shapes 8x8 (``L = 64``) so that a bfloat16 uniform flips some of the ~1,500 jump decisions.
"""

from __future__ import annotations

import pytest
import torch

from dflow.paths import MaskSource, MetricPath, MixturePath, UniformSource
from dflow.rl import (
    AllSteps,
    ClippedSurrogate,
    Compute,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    PolicyUpdate,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from dflow.tasks import ShapesTask
from tests.conftest import TinyTransformerBuilder

pytestmark = pytest.mark.usefixtures("single_thread")

V, K, B, G = 7, 3, 8, 2

CASES = {
    "trajectory": (lambda: MixturePath(UniformSource(V)), lambda: TrajectoryLikelihood(AllSteps())),
    "reconstruction": (lambda: MixturePath(UniformSource(V)), lambda: ForwardReconstruction(2, 4, 1)),
    "elbo": (lambda: MixturePath(UniformSource(V)), lambda: ELBOLikelihood(2, grid_steps=4)),
    "mean_field_mask": (lambda: MixturePath(MaskSource(V)), lambda: MeanFieldLikelihood(0.5, per_token=True)),
    "intermediate": (lambda: MixturePath(UniformSource(V)), lambda: IntermediateActionLikelihood()),
    "metric": (
        lambda: MetricPath(embedding=torch.eye(V), exact_max_vocab=0, n_mc=4),
        lambda: TrajectoryLikelihood(AllSteps()),
    ),
}


def one_update(task, path, likelihood, policy, reference, default: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        sampler = Sampler(path, num_steps=K, record_draws=likelihood.needs_draws)
        prompts = [p for p in task.prompts("rl")[: B // G] for _ in range(G)]
        gen = torch.Generator().manual_seed(0)
        traj = sampler.rollout(policy, task.encode_prompts(prompts), batch_size=B, seq_len=task.seq_len, generator=gen)
        rewards = torch.rand(B, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
        advantages = GroupAdvantage()(AdvantageInput(rewards, G))
        update = PolicyUpdate(likelihood, ClippedSurrogate(0.2), KLPenalty(0.05), num_inner_epochs=2, minibatch_size=4)
        gen = torch.Generator().manual_seed(2)
        batch = update.prepare(policy, reference, traj, advantages, sampler, G, Compute(), gen)
        out = update.loss(policy, batch, torch.arange(4), sampler, Compute())
        return traj, batch, out
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("case", list(CASES))
def test_rollouts_units_and_losses_are_the_same_under_a_bfloat16_default_dtype(case):
    make_path, make_likelihood = CASES[case]
    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=4, test_prompts_per_category=2)
    path = make_path()
    policy = TinyTransformerBuilder(seed=0).build(task, path).eval()
    reference = TinyTransformerBuilder(seed=1).build(task, path).eval().requires_grad_(False)
    t32, b32, o32 = one_update(task, path, make_likelihood(), policy, reference, torch.float32)
    t16, b16, o16 = one_update(task, path, make_likelihood(), policy, reference, torch.bfloat16)
    assert torch.equal(t32.states, t16.states) and torch.equal(t32.log_probs, t16.log_probs)
    assert t16.log_probs.dtype == torch.float32
    for name in ("old_logp", "ref_logp"):
        a, b = getattr(b32, name), getattr(b16, name)
        assert b.dtype == torch.float32 and torch.equal(a, b), name
    for name in ("times", "states", "steps", "cond"):  # the units' draws (None where an estimator has none)
        a, b = getattr(b32.plan, name, None), getattr(b16.plan, name, None)
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, name
    assert o16.loss.dtype == torch.float32 and torch.equal(o32.loss, o16.loss)
