"""Every shipped pretraining recipe parses with the CLI and runs one training step (tiny overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dflow.cli import main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/pretrain_*.yaml"))
TINY_BERT = (
    '{"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, '
    '"intermediate_size": 32}'
)


def tiny_overrides(recipe: dict) -> list[str]:
    denoiser = recipe["model"]["init_args"]["denoiser"]["class_path"]
    if denoiser.endswith("TransformerDenoiser"):
        prefix = "--model.init_args.denoiser.init_args."
        return [f"{prefix}hidden_size=16", f"{prefix}num_layers=1", f"{prefix}num_heads=2"]
    if denoiser.endswith("HFMaskedLM"):
        return [f"--model.init_args.denoiser.init_args.config={TINY_BERT}"]
    return []  # PretrainedDenoiser: the shipped base is already small


def test_there_are_pretraining_recipes():
    names = {f"{p.parent.name}/{p.name}" for p in RECIPES}
    assert {
        "shapes/pretrain_uniform.yaml",
        "shapes/pretrain_mask.yaml",
        "glyphs/pretrain_uniform.yaml",
        "text/pretrain_mask.yaml",
        "sudoku/pretrain_mask.yaml",
        "sudoku/pretrain_uniform.yaml",
        "countdown/pretrain_mask.yaml",
        "countdown/pretrain_uniform.yaml",
        "countdown/pretrain_n4_uniform.yaml",
        "countdown/pretrain_n4_mask.yaml",
        "arithmetic/pretrain_mask.yaml",
        "arithmetic/pretrain_uniform.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_runs_one_step(recipe, tmp_path, monkeypatch):
    text = recipe.read_text()
    assert text.startswith("#") and "dflow fit --config" in text, "recipes open with a header and the command"
    config = yaml.safe_load(text)
    monkeypatch.chdir(tmp_path)  # the recipe's relative runs/ folder lands here
    main(
        [
            "fit",
            "--config",
            str(recipe),
            "--trainer.max_steps=1",
            "--trainer.val_check_interval=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.batch_size=4",
            "--data.init_args.val_prompts=2",
            "--model.init_args.eval_sampler.num_steps=2",
            *tiny_overrides(config),
        ]
    )
    logger = config["trainer"]["logger"]["init_args"]
    run = tmp_path / logger["save_dir"] / logger["name"]
    assert list(run.glob("version_*/samples/step_000001.png")), "validation wrote a sample grid"
    export = next(
        c["init_args"]["dirpath"]
        for c in config["trainer"]["callbacks"]
        if c["class_path"].endswith("ExportPretrained")
    )
    meta = json.loads((tmp_path / export / "dflow_meta.json").read_text())
    assert meta["task"]["class_path"] == config["data"]["init_args"]["task"]["class_path"]
    assert meta["training"]["global_step"] == 1
