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
    "--model.init_args.eval_every_n_steps=0",
    "--data.init_args.prompts_per_step=1",
    "--model.init_args.rollout.num_steps=2",
    "--data.init_args.task.init_args.height=8",
    "--data.init_args.task.init_args.width=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
pytestmark = pytest.mark.usefixtures("single_thread")


def fit(lr: str, *extra: str):
    return run_lightning_cli(["fit", "--config", str(RECIPE), *TINY, f"--model.init_args.lr={lr}", *extra])


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
    with pytest.raises(ValueError, match=r"other configurations only.*model\.init_args\.lr: 0\.002 != 0\.003"):
        fit("3e-3", "--trainer.max_steps=20", "--ckpt_path=last")
    other = Path(b.trainer.log_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"another configuration \(model\.init_args\.lr: 0\.002 != 0\.001\)"):
        fit("1e-3", "--trainer.max_steps=20", f"--ckpt_path={other}")


def test_last_without_any_checkpoint_starts_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = fit("1e-3", "--trainer.max_steps=1", "--ckpt_path=last")
    assert cli.trainer.global_step == 1
    assert "no checkpoint in runs/shapes_udm_grpo; starting a new run" in capsys.readouterr().out
