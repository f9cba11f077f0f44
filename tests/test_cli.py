"""The ``dflow`` console script: subcommand dispatch, ``dflow sample``, ``python -m dflow.cli``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dflow import cli
from dflow.lightning import PretrainModule, TransformerDenoiser
from dflow.paths import MaskSource, MixturePath
from dflow.tasks import ShapesTask


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny untrained 8x8 shapes base exported with its meta (mask source)."""
    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=10, test_prompts_per_category=5)
    torch.manual_seed(0)
    module = PretrainModule(TransformerDenoiser(hidden_size=16, num_layers=1, num_heads=2), MixturePath(MaskSource(7)))
    module.bind(task)
    return module.export_pretrained(tmp_path_factory.mktemp("base") / "shapes_mask")


def test_sample_writes_a_png_and_prints_accuracy(base, tmp_path, capsys):
    out, report = tmp_path / "grid.png", tmp_path / "acc.json"
    code = cli.main(
        [
            "sample",
            "--checkpoint",
            str(base),
            "--out",
            str(out),
            "--steps",
            "2",
            "--prompts",
            "6",
            "--num",
            "4",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "acc/overall" in printed and "shapes test: 6 samples, steps=2" in printed
    result = json.loads(report.read_text())
    assert 0.0 <= result["acc/overall"] <= 1.0 and result["n"] == 6
    assert result["sampler"]["guidance_scale"] == 2.0  # the base's recorded evaluation setting


def test_sample_rejects_an_unknown_task_name(base, tmp_path):
    with pytest.raises(ValueError, match="unknown task name 'nope'"):
        cli.main(["sample", "--checkpoint", str(base), "--task", "nope", "--out", str(tmp_path / "x.png")])


def test_sample_rejects_a_task_the_base_does_not_fit(base, tmp_path):
    # the base is 8x8; the default shapes task is 12x12
    with pytest.raises(ValueError, match="seq_len mismatch: model seq_len=64"):
        cli.main(["sample", "--checkpoint", str(base), "--task-args", "{}", "--out", str(tmp_path / "x.png")])


def test_registered_subcommands_are_dispatched_before_lightning(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["demo", "--fast"]) == 0 and seen == [["--fast"]]


def test_no_arguments_prints_usage(capsys):
    assert cli.main([]) == 2
    assert "dflow fit --config" in capsys.readouterr().out


def test_module_runs_as_main(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["dflow", "sample", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dflow.cli", run_name="__main__")
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_works():
    done = subprocess.run(
        [sys.executable, "-m", "dflow.cli", "sample", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--checkpoint" in done.stdout


def test_the_working_directory_is_importable_for_class_paths(tmp_path, monkeypatch):
    """A console script sees only installed packages; dflow puts the working directory first on
    sys.path (as `python -m` does), so a recipe can name the user's own module by class_path."""
    (tmp_path / "my_dflow_reward.py").write_text("def score(x1, prompts):\n    return x1.float().mean(-1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert cli.main([]) == 2  # prints the usage
    import importlib

    assert importlib.import_module("my_dflow_reward").score


SCHEDULER_FLAG = "--lr_scheduler=torch.optim.lr_scheduler.ExponentialLR --lr_scheduler.gamma=0.9"


@pytest.mark.parametrize("flag", ["--optimizer=torch.optim.SGD", SCHEDULER_FLAG])
def test_lightning_optimizer_flags_are_refused_with_the_way_to_set_the_optimiser(flag, tmp_path, monkeypatch):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "shapes" / "udm_grpo.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"not supported.*model.init_args.optim.lr.*warmup_steps"):
        cli.run_lightning_cli(["fit", "--config", str(recipe), *flag.split(), "--trainer.max_steps=1"])


def test_a_run_prints_no_boilerplate(tmp_path, monkeypatch, capfd):
    """No cloud-logger advertisement, no per-load progress bar, no warning about dflow's own use of
    LightningCLI's args: what a run prints is about the run."""
    import warnings
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "shapes" / "demo.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dflow", "demo"])  # as `dflow demo` calls LightningCLI
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.run_lightning_cli(
            [
                "fit",
                "--config",
                str(recipe),
                "--trainer.max_steps=1",
                "--trainer.enable_progress_bar=false",
                "--model.init_args.evaluation.every_n_steps=0",
                "--data.init_args.prompts_per_step=2",
                "--model.init_args.rollout.num_steps=2",
            ]
        )
    printed = capfd.readouterr()
    text = printed.out + printed.err
    assert "Trainable params" in text  # the run did print (the model summary)
    for boilerplate in ("litlogger", "Loading weights"):
        assert boilerplate not in text
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]
