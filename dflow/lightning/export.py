"""Model folders: what ``PretrainModule`` and ``RLModule`` export, and ``dflow export RUN OUT``.

A model folder is what ``PretrainedDenoiser(path=...)``, ``dflow sample --checkpoint`` and
``transformers``' ``from_pretrained`` load: the denoiser's ``save_pretrained`` files plus
``dflow_meta.json`` (the task it was trained for, its probability path, its evaluation sampler and
how it was trained).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from dflow.lightning.builders import META_FILE
from dflow.lightning.describe import describe
from dflow.models import DiffusionGemmaDenoiser, HFMaskedLMDenoiser
from dflow.models.lora import base_model, has_adapters, merged_copy
from dflow.paths import ProbabilityPath
from dflow.sampling import SamplerConfig
from dflow.tasks import Task


def task_description(trainer: Any, task: Task) -> dict[str, Any]:
    """The task as configured (``class_path`` + ``init_args`` from the data module's hparams under
    LightningCLI), else :func:`describe` of the task object."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    given = getattr(datamodule, "hparams", {}).get("task") if datamodule is not None else None
    if isinstance(given, dict) and "class_path" in given:
        return json.loads(json.dumps(dict(given), default=str))
    return describe(task)


def model_meta(
    denoiser: nn.Module,
    task_config: dict[str, Any],
    task: Task,
    path: ProbabilityPath,
    evaluation: SamplerConfig,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The ``dflow_meta.json`` record of a model folder (of the network inside an adapted model)."""
    denoiser = base_model(denoiser)
    meta: dict[str, Any] = {
        "format": 1,
        "denoiser": type(denoiser).__name__,
        "task": task_config,
        "task_name": task.name,
        "path": describe(path),
        "eval": sampler_meta(evaluation),
        "training": training,
    }
    if isinstance(denoiser, DiffusionGemmaDenoiser):
        meta["diffusion_gemma"] = {
            "data_token_ids": denoiser.data_token_ids,
            "canvas_length": denoiser.canvas_length,
            "self_conditioning": denoiser.self_conditioning,
        }
    if isinstance(denoiser, HFMaskedLMDenoiser):
        meta["hf_adapter"] = {
            "data_token_ids": list(getattr(task, "data_token_ids", None) or denoiser.data_token_ids.tolist()),
            "model_data_token_ids": denoiser.data_token_ids.tolist(),
            "mask_token_id": int(denoiser.state_to_token[-1]),
            "prompt_len": denoiser.prompt_len,
            "pad_token_id": denoiser.pad_token_id,
            "prompt_token_ids": None if denoiser.prompt_token_ids is None else denoiser.prompt_token_ids.tolist(),
            "shift_logits": denoiser.shift_logits,
        }
    return meta


def sampler_meta(config: SamplerConfig) -> dict[str, Any]:
    """A sampler setting as JSON: its fields, a block setting's kernel as ``{class_path, init_args}``
    (what ``SamplerConfig(**meta["eval"])`` reads back in ``dflow sample``)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(SamplerConfig)}
    if config.block is not None:
        out["block"] = {"block_len": config.block.block_len, "kernel": describe(config.block.kernel)}
    return out


def write_model_folder(denoiser: nn.Module, meta: dict[str, Any], directory: str | Path) -> Path:
    """``save_pretrained`` weights and config plus ``dflow_meta.json`` in ``directory`` (created).

    A denoiser with LoRA adapters is written with the adapters merged into its weights (a copy: the
    denoiser itself is unchanged), as a plain model folder of the base model's class."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if has_adapters(denoiser):
        denoiser = merged_copy(denoiser)
    # nn.Module has no save_pretrained; every denoiser the builders make (DFlowTransformer, HFMaskedLMDenoiser,
    # DiffusionGemmaDenoiser) does
    denoiser.save_pretrained(directory)  # type: ignore[operator]
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def find_run(source: str | Path) -> tuple[Path, Path]:
    """``(checkpoint, config.yaml)`` of a run: ``source`` is a run's version folder (its
    ``checkpoints/last.ckpt`` is taken) or a checkpoint file inside one. ``ValueError`` naming what
    is missing otherwise."""
    source = Path(source)
    if source.is_dir():
        ckpt, run_dir = source / "checkpoints" / "last.ckpt", source
    elif source.is_file():
        ckpt, run_dir = source, source.parent.parent if source.parent.name == "checkpoints" else source.parent
    else:
        raise ValueError(f"{str(source)!r} is neither a run folder (runs/<name>/version_<n>) nor a checkpoint file")
    if not ckpt.is_file():
        raise ValueError(f"run folder {str(run_dir)!r} has no checkpoints/last.ckpt; pass a checkpoint file instead")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ValueError(
            f"{str(config)!r} does not exist: dflow export rebuilds the model from the config.yaml that "
            "`dflow fit` writes into the run folder; export a checkpoint that sits in its run's checkpoints/ folder"
        )
    return ckpt, config


def export_run(source: str | Path, out: str | Path) -> Path:
    """``dflow export``: rebuild a run's module from its ``config.yaml``, load the checkpoint's weights
    and write the trained denoiser as a model folder (``PretrainModule`` or ``RLModule`` runs)."""
    from dflow.lightning.cli import cli_settings

    ckpt_path, config_path = find_run(source)
    config = yaml.safe_load(config_path.read_text())
    kept = {k: config[k] for k in ("seed_everything", "model", "data") if k in config}
    cli_class, kwargs = cli_settings()
    # the Trainer built to parse the run's config would print its device lines ("GPU available: ...")
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        cli = _parse_run(cli_class, kwargs, kept)
    finally:
        quiet.setLevel(level)
    return _export_module(cli, config_path, ckpt_path, out)


def _parse_run(cli_class: Any, kwargs: dict[str, Any], kept: dict[str, Any]) -> Any:
    """The run's model and data modules, built by the same LightningCLI that trained them (no run)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "config.yaml"
        recipe.write_text(yaml.safe_dump(kept))
        cli = cli_class(
            **{**kwargs, "save_config_callback": None},
            run=False,
            args=[
                "--config",
                str(recipe),
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_checkpointing=false",
                f"--trainer.default_root_dir={tmp}",
            ],
        )
    return cli


def _export_module(cli: Any, config_path: Path, ckpt_path: Path, out: str | Path) -> Path:
    from dflow.lightning.reliability import load_checkpoint_file

    module, data = cli.model, cli.datamodule
    attach = getattr(module, "attach_task", None) or getattr(module, "bind", None)
    if attach is None or not hasattr(module, "export_pretrained"):
        raise ValueError(
            f"dflow export needs a PretrainModule or RLModule run, {config_path} builds {type(module).__name__}"
        )
    if hasattr(module, "attach_task"):
        module.attach_task(data.task, getattr(data, "split", "rl"))
    else:
        module.bind(data.task)
    checkpoint = load_checkpoint_file(ckpt_path)
    module.load_state_dict(checkpoint["state_dict"])
    if hasattr(module, "rl_steps"):  # RL steps trained, recorded beside the weights
        module.rl_steps = int(checkpoint.get("dflow_rl", {}).get("rl_steps", 0))
    module.exported_from = {
        "checkpoint": str(ckpt_path),
        "global_step": int(checkpoint.get("global_step", 0)),
        "dflow_run": checkpoint.get("dflow_run", {}).get("sha256"),
    }
    return module.export_pretrained(out)
