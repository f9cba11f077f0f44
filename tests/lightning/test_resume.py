"""Exact resume, atomic checkpoints, corrupt-checkpoint messages, bit-identical weights on bad steps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import warnings

import lightning as L
import pytest
import torch

from dflow.lightning import EvalConfig, OptimConfig, RolloutConfig
from dflow.lightning.builders import TransformerDenoiser
from dflow.lightning.data import PromptDataModule
from dflow.lightning.loggers import ResumableCSVLogger
from dflow.lightning.reliability import AtomicCheckpointIO, load_checkpoint_file
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.lightning.rl_state import set_global_rng_state
from dflow.models.lora import LoRAConfig
from dflow.paths import MixturePath, UniformSource
from dflow.rl import ClippedSurrogate, ForwardReconstruction, GroupAdvantage, KLPenalty
from dflow.tasks import get_task


def red_pixels(x1: torch.Tensor, prompts) -> torch.Tensor:
    """A reward that varies within groups from the first step (the shapes reward of a random model is 0)."""
    return (x1 == 1).float().mean(-1)


def make_module(seed: int = 0, lora: LoRAConfig | None = None) -> RLModule:
    torch.manual_seed(seed)
    return RLModule(
        TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2),
        MixturePath(UniformSource(7)),
        ForwardReconstruction(num_timesteps=2, grid_steps=4, max_start=1),
        ClippedSurrogate(0.2),
        GroupAdvantage(),
        KLPenalty(0.05),
        rollout=RolloutConfig(num_steps=3, group_size=2),
        optim=OptimConfig(lr=1e-2, num_inner_epochs=2, minibatch_size=2),
        evaluation=EvalConfig(num_steps=3, every_n_steps=0),
        rewards=[RewardSpec(source="test_resume:red_pixels")],
        seed=seed,
        lora=lora,
    )


def make_trainer(root, max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,  # RL steps: RLModule makes global_step count rollout batches
        default_root_dir=root,
        logger=ResumableCSVLogger(root, name="log", version=0),
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1)],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=1,
    )


def run(root, max_steps: int, ckpt_path=None, lora: LoRAConfig | None = None) -> RLModule:
    L.seed_everything(0)
    module = make_module(lora=lora)
    data = PromptDataModule(get_task("shapes"), prompts_per_step=2, seed=0)
    make_trainer(root, max_steps).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def metrics_by_step(root) -> dict[int, dict[str, str]]:
    rows: dict[int, dict[str, str]] = {}
    with open(root / "log" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            rows.setdefault(step, {}).update({k: v for k, v in row.items() if v != "" and not k.startswith("time/")})
    return rows


@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=2, alpha=4)], ids=["full", "lora"])
def test_resume_is_exact(tmp_path, lora):
    """With LoRA the checkpoint holds the frozen base and the adapters, the optimiser state holds
    the adapters only, and the reference (adapters off) needs no state of its own."""
    if lora is not None:
        pytest.importorskip("peft")
    straight = run(tmp_path / "a", 4, lora=lora)
    half = run(tmp_path / "b", 2, lora=lora)
    assert any(not torch.equal(p, q) for p, q in zip(half.parameters(), straight.parameters(), strict=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(tmp_path / "b", 4, ckpt_path="last", lora=lora)
    # the loader resumes (through the data module's state); Lightning must not say it cannot
    assert not [w for w in caught if "not resumable" in str(w.message)]
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    a, b = metrics_by_step(tmp_path / "a"), metrics_by_step(tmp_path / "b")
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]  # one row per RL step, none lost by the resume
    for step in a:  # rows 2 and 3 of b come from the resumed process
        assert a[step] == b[step], step
    assert straight.compute.fwd_equiv == resumed.compute.fwd_equiv
    if lora is not None:  # AdamW's moments exist for the adapters only
        ckpt = load_checkpoint_file(tmp_path / "b" / "ckpt" / "last.ckpt")
        adapters = [n for n, p in resumed.named_parameters() if p.requires_grad]
        assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
        assert len(ckpt["optimizer_states"][0]["state"]) == len(adapters)


def test_same_seed_same_run(tmp_path):
    one, two = run(tmp_path / "a", 2), run(tmp_path / "b", 2)
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.equal(p, q)


def test_corrupt_and_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.ckpt")
    bad = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.ckpt.*unreadable"):
        load_checkpoint_file(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="other.ckpt.*not a Lightning checkpoint"):
        load_checkpoint_file(other)


def test_incompatible_checkpoint_is_named(tmp_path):
    run(tmp_path / "a", 1)
    module = make_module()
    module.builder = TransformerDenoiser(hidden_size=8, num_layers=1, num_heads=2)
    data = PromptDataModule(get_task("shapes"), prompts_per_step=2, seed=0)
    with pytest.raises(ValueError, match="last.ckpt.*incompatible.*shape"):
        make_trainer(tmp_path / "a", 2).fit(
            module, datamodule=data, ckpt_path=str(tmp_path / "a" / "ckpt" / "last.ckpt")
        )


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "step": 1}, target)
    script = textwrap.dedent(f"""
        import os, torch
        from dflow.lightning.reliability import AtomicCheckpointIO
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"partial bytes of a checkpoint")
            f.flush()
            os._exit(9)  # killed mid-save
        torch.save = dying_save
        AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.zeros(3)}}, "step": 2}}, {str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9
    ckpt = load_checkpoint_file(target)
    assert ckpt["step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    leftovers = [p for p in os.listdir(tmp_path) if p != "last.ckpt"]
    assert all(".tmp-" in p for p in leftovers)  # only the dead writer's temp file, never a half target


def test_checkpoint_restores_global_rng_states(tmp_path):
    import random

    import numpy as np

    run(tmp_path / "a", 1)
    ckpt = load_checkpoint_file(tmp_path / "a" / "ckpt" / "last.ckpt")
    saved = ckpt["dflow_rl"]["global_rng"]
    set_global_rng_state(saved)
    expected = (torch.rand(3), np.random.rand(3), random.random())  # what the saved states draw next
    module = make_module()
    module.attach_task(get_task("shapes"))
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # a fresh process's states
    module.on_load_checkpoint(ckpt)
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], expected[0]) and (drawn[1] == expected[1]).all() and drawn[2] == expected[2]


def test_rl_checkpoint_loads_with_weights_only(tmp_path):
    """LightningCLI reads an explicit ``--ckpt_path`` with ``torch.load(weights_only=True)`` before
    the trainer exists; numpy arrays in the saved RNG state and dflow's config records in the
    hyperparameters once made every such resume fail. dflow's CLI allows its own classes only."""
    from dflow.lightning.cli import _dflow_globals

    run(tmp_path / "a", 1)
    path = tmp_path / "a" / "ckpt" / "last.ckpt"
    allowed = _dflow_globals({"subcommand": "fit", "fit": {"ckpt_path": str(path)}})
    assert all(c.__module__.startswith(("dflow.", "numpy")) for c in allowed)
    with torch.serialization.safe_globals(allowed):
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert "global_rng" in ckpt["dflow_rl"]
    # RLModule's settings records are registered as safe at import (dflow.lightning.rl_config), so a
    # plain weights_only load works too: ModelParallelStrategy (FSDP2) loads a resume that way
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["optim"].lr == 1e-2
