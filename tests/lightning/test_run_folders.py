"""A run owns its folder: checkpoints are written in the run's log version, `--ckpt_path last` resumes
the newest checkpoint of the *same* configuration (a newer run of another configuration under the
same name is not picked), and a checkpoint of another configuration is refused with the keys that
differ. Before, every recipe wrote into one fixed folder and `last` could resume another run."""

from __future__ import annotations

from pathlib import Path

import pytest

from dflow.cli import run_lightning_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/shapes/udm_grpo.yaml"
TINY = [
    "--model.init_args.denoiser=dflow.lightning.TransformerDenoiser",
    "--model.init_args.denoiser.init_args.hidden_size=16",
    "--model.init_args.denoiser.init_args.num_layers=1",
    "--model.init_args.denoiser.init_args.num_heads=2",
    "--model.init_args.evaluation.every_n_steps=0",
    "--data.init_args.prompts_per_step=1",
    "--model.init_args.rollout.num_steps=2",
    "--data.init_args.task.init_args.height=8",
    "--data.init_args.task.init_args.width=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
pytestmark = pytest.mark.usefixtures("single_thread")


def fit(lr: str, *extra: str):
    return run_lightning_cli(["fit", "--config", str(RECIPE), *TINY, f"--model.init_args.optim.lr={lr}", *extra])


def test_last_resumes_its_own_configuration_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = fit("1e-3", "--trainer.max_steps=10")
    assert Path(a.trainer.log_dir).name == "version_0"
    assert (Path(a.trainer.log_dir) / "checkpoints" / "last.ckpt").is_file()
    b = fit("2e-3", "--trainer.max_steps=10")  # another configuration, same logger name: a newer version
    assert Path(b.trainer.log_dir).name == "version_1"
    resumed = fit("1e-3", "--trainer.max_steps=20", "--ckpt_path=last")
    assert Path(resumed.trainer.log_dir).name == "version_0"  # a's folder, not b's newer one
    assert resumed.trainer.global_step == 20 and resumed.model.rl_steps == 20
    with pytest.raises(ValueError, match=r"other configurations only.*model\.init_args\.optim\.lr: 0\.002 != 0\.003"):
        fit("3e-3", "--trainer.max_steps=20", "--ckpt_path=last")
    other = Path(b.trainer.log_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"another configuration \(model\.init_args\.optim\.lr: 0\.002 != 0\.001\)"):
        fit("1e-3", "--trainer.max_steps=20", f"--ckpt_path={other}")


def test_last_without_any_checkpoint_starts_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = fit("1e-3", "--trainer.max_steps=1", "--ckpt_path=last")
    assert cli.trainer.global_step == 1
    assert "no checkpoint in runs/shapes_udm_grpo; starting a new run" in capsys.readouterr().out


def test_an_rl_tuned_policy_leaves_its_run(tmp_path, monkeypatch):
    """dflow export writes the tuned denoiser as a model folder: its weights are the checkpoint's (not
    the base's), transformers' from_pretrained and PretrainedDenoiser load it, dflow sample reads a run
    folder directly, and another RL recipe can start from it."""
    import json

    import torch

    from dflow import cli as dflow_cli
    from dflow.lightning.builders import PretrainedDenoiser
    from dflow.models import DFlowTransformer
    from dflow.paths import LinearScheduler, MixturePath, UniformSource
    from dflow.tasks import ShapesTask

    monkeypatch.chdir(tmp_path)
    run = fit("1e-2", "--trainer.max_steps=10")
    run_dir = Path(run.trainer.log_dir)
    out = tmp_path / "tuned"
    assert dflow_cli.main(["export", str(run_dir), str(out)]) == 0
    meta = json.loads((out / "dflow_meta.json").read_text())
    assert meta["training"]["rl"] is True and meta["training"]["rl_steps"] == 10
    assert meta["task"]["init_args"]["height"] == 8 and meta["eval"]["num_steps"] == 20
    trained = {k.removeprefix("denoiser."): v for k, v in run.model.state_dict().items() if k.startswith("denoiser.")}
    loaded = DFlowTransformer.from_pretrained(out)  # transformers' own loader
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    task, path = ShapesTask(height=8, width=8), MixturePath(UniformSource(7), LinearScheduler())
    rebuilt = PretrainedDenoiser(str(out)).build(task, path)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in trained.items())
    report = tmp_path / "sample.json"
    args = ["sample", "--checkpoint", str(run_dir), "--out", str(tmp_path / "g.png"), "--steps", "2", "--prompts", "6"]
    assert dflow_cli.main([*args, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["n"] == 6
    # another run starts from the tuned policy: the recipe's PretrainedDenoiser pointed at the folder
    start_from = [a for a in TINY if not a.startswith("--model.init_args.denoiser")]
    again = run_lightning_cli(
        [
            "fit",
            "--config",
            str(RECIPE),
            *start_from,
            "--trainer.max_steps=1",
            f"--model.init_args.denoiser.init_args.path={out}",
        ]
    )
    assert again.trainer.global_step == 1
    first = {k: v for k, v in again.model.reference.state_dict().items()}  # the KL reference = the start
    assert all(torch.equal(first[k], v) for k, v in trained.items())


def test_dflow_validate_evaluates_an_rl_checkpoint(tmp_path, monkeypatch):
    """`dflow validate` on an RL recipe runs the module's evaluation of the checkpoint (it had no
    validation_step and crashed)."""
    monkeypatch.chdir(tmp_path)
    run = fit("1e-2", "--trainer.max_steps=10")
    ckpt = Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt"
    cli = run_lightning_cli(
        [
            "validate",
            "--config",
            str(RECIPE),
            *TINY,
            "--model.init_args.optim.lr=1e-2",
            "--model.init_args.evaluation.samples_per_category=2",
            f"--ckpt_path={ckpt}",
        ]
    )
    logged = cli.trainer.callback_metrics
    assert "eval/acc_overall" in logged and 0.0 <= float(logged["eval/acc_overall"]) <= 1.0
    assert cli.model.rl_steps == 10  # the checkpoint's policy was evaluated


def test_last_takes_the_newest_run_of_the_configuration_and_a_recipe_dirpath(tmp_path, monkeypatch):
    """Two runs of the same configuration: `last` continues the newer one. A recipe whose
    ModelCheckpoint has its own dirpath resumes from there (and refuses another configuration's)."""
    monkeypatch.chdir(tmp_path)
    fit("1e-3", "--trainer.max_steps=10")
    fit("1e-3", "--trainer.max_steps=10", "--seed_everything=0")  # the same run again: version_1
    resumed = fit("1e-3", "--trainer.max_steps=20", "--ckpt_path=last")
    assert Path(resumed.trainer.log_dir).name == "version_1"
    dirpath = tmp_path / "mine"
    callbacks = (
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
        f"init_args: {{dirpath: {dirpath}, save_last: true, every_n_train_steps: 10, save_top_k: 0}}}}]"
    )
    fit("1e-3", "--trainer.max_steps=10", callbacks, "--trainer.logger.init_args.name=fixed")
    again = fit(
        "1e-3", "--trainer.max_steps=20", callbacks, "--trainer.logger.init_args.name=fixed", "--ckpt_path=last"
    )
    assert again.trainer.global_step == 20 and again.model.rl_steps == 20  # resumed, not restarted
    with pytest.raises(ValueError, match=r"mine/last\.ckpt belongs to another configuration.*lr"):
        fit("5e-3", "--trainer.max_steps=20", callbacks, "--trainer.logger.init_args.name=fixed", "--ckpt_path=last")


def test_a_checkpoint_from_before_an_argument_existed_still_resumes():
    """Identities are compared on the keys both have, and evaluation settings are not compared: a dflow
    release that adds an argument, or a resume that evaluates more often, is not another run."""
    from dflow.lightning.runs import differences, same_run

    stored = {"model": {"init_args": {"lr": 0.1, "eval_every_n_steps": 10}}, "seed_everything": 0}
    now = {"model": {"init_args": {"lr": 0.1, "eval_every_n_steps": 20, "watch": None}}, "seed_everything": 0}
    assert same_run(stored, now) and differences(stored, now) == []
    assert not same_run({"model": {"init_args": {"lr": 0.2}}}, now)

    # gradient checkpointing changes memory, not what is trained: a resume may switch it on
    def denoiser(flag: bool) -> dict:
        return {"model": {"init_args": {"denoiser": {"init_args": {"path": "base", "gradient_checkpointing": flag}}}}}

    assert same_run(denoiser(False), denoiser(True))
