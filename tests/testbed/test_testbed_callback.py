"""The exact-evaluation callback on a short RLModule run: scored before, during and after training,
with the KL measured from the initial policy and written to the run's logger."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch

from dflow.lightning import EvalConfig, OptimConfig, PromptDataModule, ResumableCSVLogger, RLModule, RolloutConfig
from dflow.rl import AllSteps, ClippedSurrogate, KLPenalty, TrajectoryLikelihood
from dflow.testbed import ExactEvaluationCallback, TestbedBase
from tests.testbed.conftest import make_path


@pytest.mark.parametrize("beta", [0.0, 0.1])  # without / with a frozen reference
def test_callback_scores_the_run_exactly(task, tmp_path, beta) -> None:
    module = RLModule(
        TestbedBase(hidden_size=16, num_layers=1, pretrain_steps=0, initializer_range=0.5),
        make_path("uniform"),
        TrajectoryLikelihood(AllSteps()),
        ClippedSurrogate(0.2, 0.2),
        kl=KLPenalty(beta, "k3"),
        rollout=RolloutConfig(num_steps=3, group_size=4),
        optim=OptimConfig(lr=3e-2),
        evaluation=EvalConfig(num_steps=3, every_n_steps=0),
    )
    callback = ExactEvaluationCallback(every_n_steps=2, splits=["rl", "test"])
    logger = ResumableCSVLogger(save_dir=tmp_path, name="exact")
    trainer = L.Trainer(
        max_steps=4,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    torch.manual_seed(0)
    trainer.fit(module, PromptDataModule(task, prompts_per_step=2))
    rows = callback.history
    assert [r["rl_step"] for r in rows] == [0.0, 2.0, 4.0]
    assert rows[0]["exact/rl/kl"] == pytest.approx(0.0, abs=1e-12)  # the base is the initial policy
    assert rows[-1]["exact/rl/kl"] > 1e-4 and rows[-1]["exact/rl/reward"] != rows[0]["exact/rl/reward"]
    assert rows[-1]["compute/fwd_equiv"] > rows[1]["compute/fwd_equiv"] > 0
    for r in rows:
        assert r["exact/test/optimal_reward"] == 1.0 and 0.0 < r["exact/test/frac_opt"] < 1.0
    with open(f"{logger.log_dir}/metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("exact/rl/reward")]
    assert len(logged) == 3


def test_callback_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1"):
        ExactEvaluationCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="sampler must be 'evaluation' or 'rollout'"):
        ExactEvaluationCallback(sampler="eval")
    with pytest.raises(ValueError, match="split"):
        ExactEvaluationCallback(splits=["train"])
