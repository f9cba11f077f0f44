"""The progress bar shows the latest test accuracy of an RL run, names RL steps (not Lightning's
meaningless "Epoch 0/-2"), and the run ends with a one-line summary of the accuracy it moved."""

from __future__ import annotations

import lightning as L

from dflow.lightning import EvalConfig, RolloutConfig
from dflow.lightning.callbacks import DFlowProgressBar
from dflow.lightning.rl_module import RLModule
from dflow.paths import MixturePath
from dflow.paths.sources import UniformSource
from dflow.rl import ClippedSurrogate, ForwardReconstruction


def test_rl_bar_shows_test_accuracy_and_the_run_ends_with_a_summary(
    copy_task, tiny_builder, prompt_batches, tmp_path, capsys
):
    module = RLModule(
        tiny_builder,
        MixturePath(UniformSource(3)),
        ForwardReconstruction(2, 4, 1),
        ClippedSurrogate(0.2),
        rollout=RolloutConfig(num_steps=2, group_size=2),
        evaluation=EvalConfig(num_steps=2, every_n_steps=1, samples_per_prompt=1, num_prompts=3),
    )
    bar = DFlowProgressBar()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[bar],
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=2))
    assert "test acc" in bar.get_metrics(trainer, module)
    assert bar._get_train_description(0) == "RL steps"
    out = capsys.readouterr().out
    assert "strict test accuracy" in out and "after 2 RL steps" in out
