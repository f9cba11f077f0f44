"""Run two RL steps on `devices` CPU processes with a fixed global batch; save the weights and logs.

Used by test_ddp.py: `python tests/lightning/ddp_worker.py DEVICES OUT.pt [ddp|fsdp]`. Lightning's
strategy re-launches this script once per extra rank (gloo backend on CPU). `fsdp` shards the policy
and the KL reference with FSDP2 (Lightning's ModelParallelStrategy). The run has a KL penalty and a
gradient-norm limit small enough that every step clips, so a norm taken over one rank's shards only,
or a reference that differs between ranks, would change the weights.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dflow.lightning import EvalConfig, OptimConfig, RolloutConfig
from dflow.lightning.builders import TransformerDenoiser
from dflow.lightning.data import PromptDataModule
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.lightning.sharding import is_sharded
from dflow.paths import MixturePath, UniformSource
from dflow.rl import AllSteps, ClippedSurrogate, GroupAdvantage, KLPenalty, TrajectoryLikelihood
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


def build_module() -> RLModule:
    L.seed_everything(0)
    torch.manual_seed(0)
    return RLModule(
        TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2),
        MixturePath(UniformSource(7)),
        TrajectoryLikelihood(AllSteps(), token_mean=True),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        KLPenalty(0.05),  # a frozen reference, sharded like the policy under FSDP2
        rollout=RolloutConfig(num_steps=3, group_size=GROUP, seed_per_prompt=True),
        optim=OptimConfig(lr=1e-2, max_grad_norm=1e-3),  # every step clips (the norms are ~0.08)
        # evaluation under DDP (log_dir is a collective call on every rank)
        evaluation=EvalConfig(num_steps=3, every_n_steps=2, num_prompts=4, num_grid_prompts=2),
        rewards=[RewardSpec(source="ddp_worker:red_pixels")],
    )


def main(devices: int, out: str, strategy: str = "ddp") -> None:
    """Two RL steps; ``<strategy>-resume``: one step, a checkpoint, and a second run resumed from it."""
    strategy, _, resume = strategy.partition("-")
    module = build_module()
    data = PromptDataModule(get_task("shapes"), prompts_per_step=GLOBAL_PROMPTS // devices, seed=0)
    record = RecordGroups()
    ckpt_path = None
    if resume:
        first = trainer_for(devices, strategy, out, 1, [ModelCheckpoint(out + ".ckpt", save_last=True)])
        first.fit(module, datamodule=data)
        ckpt_path = out + ".ckpt/last.ckpt"
        module = build_module()  # a fresh process's module: everything comes from the checkpoint
        data = PromptDataModule(get_task("shapes"), prompts_per_step=GLOBAL_PROMPTS // devices, seed=0)
    trainer = trainer_for(devices, strategy, out, 2, [record])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if strategy == "fsdp" and devices > 1:  # the policy and the frozen reference are both sharded
        assert is_sharded(module.denoiser) and module.reference is not None and is_sharded(module.reference)
    batches = trainer.strategy.all_gather(torch.tensor(record.batches))  # [world, steps, P] or [steps, P]
    reward = trainer.callback_metrics["train/reward"].item()  # reduced over ranks (sync_dist)
    assert [h["rl_step"] for h in module.eval_history] == [0, 2]  # start and end, on every rank (restored on resume)
    state = full_weights(trainer, module)
    torch.save(state, f"{out}.rank{trainer.global_rank}")
    if trainer.is_global_zero:
        norms = trainer.callback_metrics.get("train/grad_norm")
        torch.save({"state": state, "batches": batches.tolist(), "reward": reward, "grad_norm": norms}, out)


def trainer_for(devices: int, strategy: str, out: str, max_steps: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=_strategy(strategy) if devices > 1 else "auto",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=out + ".logs",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def _strategy(name: str):
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)


def full_weights(trainer: L.Trainer, module: RLModule) -> dict[str, torch.Tensor]:
    """The denoiser's full (unsharded) weights on every rank."""
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
        for k, v in module.denoiser.state_dict().items()
    }


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *(sys.argv[3:4]))
