"""Run two RL steps on `devices` CPU processes with a fixed global batch; save the weights and logs.

Used by test_ddp.py: `python tests/lightning/ddp_worker.py DEVICES OUT.pt`. Lightning's "ddp" strategy
re-launches this script once per extra rank (gloo backend on CPU).
"""

from __future__ import annotations

import sys

import lightning as L
import torch

from dflow.lightning import EvalConfig, OptimConfig, RolloutConfig
from dflow.lightning.builders import TransformerDenoiser
from dflow.lightning.data import PromptDataModule
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.paths import MixturePath, UniformSource
from dflow.rl import AllSteps, ClippedSurrogate, GroupAdvantage, TrajectoryLikelihood
from dflow.tasks import get_task

GLOBAL_PROMPTS = 4  # prompts per RL step over all ranks
GROUP = 2


def red_pixels(x1: torch.Tensor, prompts) -> torch.Tensor:
    return (x1 == 1).float().mean(-1)


class RecordGroups(L.Callback):
    """Remember which prompts each rank rolled out (a group must never split across ranks)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch.tolist())


def main(devices: int, out: str) -> None:
    L.seed_everything(0)
    torch.manual_seed(0)
    module = RLModule(
        TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2),
        MixturePath(UniformSource(7)),
        TrajectoryLikelihood(AllSteps(), token_mean=True),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        rollout=RolloutConfig(num_steps=3, group_size=GROUP, seed_per_prompt=True),
        optim=OptimConfig(lr=1e-2),
        # evaluation under DDP (log_dir is a collective call on every rank)
        evaluation=EvalConfig(num_steps=3, every_n_steps=2, num_prompts=4, num_grid_prompts=2),
        rewards=[RewardSpec(source="ddp_worker:red_pixels")],
    )
    data = PromptDataModule(get_task("shapes"), prompts_per_step=GLOBAL_PROMPTS // devices, seed=0)
    record = RecordGroups()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=out + ".logs",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=data)
    batches = trainer.strategy.all_gather(torch.tensor(record.batches))  # [world, steps, P] or [steps, P]
    reward = trainer.callback_metrics["train/reward"].item()  # reduced over ranks (sync_dist)
    assert [h["rl_step"] for h in module.eval_history] == [0, 2]  # start and end, on every rank
    torch.save({k: v.clone() for k, v in module.denoiser.state_dict().items()}, f"{out}.rank{trainer.global_rank}")
    if trainer.is_global_zero:
        state = {k: v.clone() for k, v in module.denoiser.state_dict().items()}
        torch.save({"state": state, "batches": batches.tolist(), "reward": reward}, out)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
