"""Recorded log-probs of per-group rollouts are reused only at the batch size they were computed at."""

from __future__ import annotations

import torch

from dflow.models import DFlowConfig, DFlowTransformer
from dflow.paths import MixturePath, UniformSource
from dflow.rl import AllSteps, ClippedSurrogate, Compute, GroupAdvantage, PolicyUpdate, TrajectoryLikelihood
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler, Trajectory


def test_first_ratio_is_exact_for_per_group_rollouts():
    torch.manual_seed(0)
    V, L, G, groups = 5, 6, 2, 3
    net = DFlowTransformer(
        DFlowConfig(vocab_size=V, seq_len=L, time_conditioning=True, hidden_size=16, num_layers=1, num_heads=2)
    ).eval()

    def model(x_t, t, cond=None):
        # matmul kernels are chosen by shape, so a row's logits may change in the last bits with the
        # batch size; make that dependence explicit (and deterministic) for the test
        return net(x_t, t, cond) + 1e-3 * x_t.shape[0]

    sampler = Sampler(MixturePath(UniformSource(V)), num_steps=3, temperature=0.7)
    parts = [
        sampler.rollout(model, batch_size=G, seq_len=L, generator=torch.Generator().manual_seed(i))
        for i in range(groups)
    ]
    traj = Trajectory.concat(parts)
    assert traj.rollout_batch_size == G and traj.batch_size == G * groups
    adv = GroupAdvantage()(AdvantageInput(torch.arange(G * groups, dtype=torch.float32), G))
    update = PolicyUpdate(TrajectoryLikelihood(AllSteps()), ClippedSurrogate(0.2), num_inner_epochs=2)
    ready = update.prepare(model, None, traj, adv, sampler, G, Compute())
    out = update.loss(model, ready, torch.arange(traj.batch_size), sampler, Compute())
    # the loss scores the whole batch (6 rows) while the record came from batches of 2: the old values
    # must have been recomputed at 6 rows, so the first ratio is exactly 1
    assert out.stats["ratio_min"] == out.stats["ratio_max"] == 1.0
