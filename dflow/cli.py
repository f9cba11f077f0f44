"""The ``dflow`` console script (also ``python -m dflow.cli``).

- ``dflow fit --config recipes/<task>/<recipe>.yaml [--key=value ...]``: LightningCLI (also
  ``validate``); recipes name the model and data modules by ``class_path``, overrides use
  omegaconf interpolation. Defaults: CSV logs under ``runs/``, a rich progress bar, seed 0.
- ``dflow sample --checkpoint DIR --out grid.png``: sample a base model for a task's prompts,
  write a PNG grid and print strict accuracy per category.
- More subcommands register in :data:`SUBCOMMANDS` (dispatched before LightningCLI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI

from dflow.lightning.builders import PretrainedDenoiser, instantiate, read_meta, resolve_path
from dflow.lightning.callbacks import DFlowProgressBar
from dflow.lightning.evaluation import EVAL_BATCH_SIZE, EVAL_SEED, evaluate, evaluation_prompts
from dflow.lightning.reliability import AtomicCheckpointIO, GracefulShutdown, load_checkpoint_file
from dflow.lightning.runs import RunIdentity, check_last, find_last, run_identity
from dflow.paths import LinearScheduler, MaskSource, MixturePath, ProbabilityPath, UniformSource
from dflow.sampling import SamplerConfig
from dflow.tasks import Task, get_task

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "accelerator": "auto",
}


_NUMPY_DATA = {"_reconstruct", "ndarray", "dtype"}


def _ckpt_path(config) -> Any:
    """The ``--ckpt_path`` of the parsed subcommand, or None."""
    subcommand = config.get("subcommand")
    return config[subcommand].get("ckpt_path") if subcommand else None


def _dflow_globals(config) -> list:
    """The classes of package ``dflow`` that the ``--ckpt_path`` file pickles (empty if none given)."""
    import importlib

    ckpt_path = _ckpt_path(config)
    if not ckpt_path or not Path(str(ckpt_path)).is_file():
        return []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt_path))
    except Exception:  # not a readable zip checkpoint: the load below names the problem
        return []
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        # dflow's records, and numpy's array/dtype constructors (RNG states of checkpoints written
        # before they were stored as tensors)
        if module.startswith("dflow.") or (module.startswith("numpy") and attr in _NUMPY_DATA):
            found.append(getattr(importlib.import_module(module), attr))
    if any(getattr(c, "__module__", "").startswith("numpy") for c in found):
        import numpy as np  # the dtype classes are built, not named, so the scan above misses them

        found += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)]
    return found


# Lightning warnings that every dflow run would print and that do not apply to it (checked, not
# guessed): RL optimises manually and checkpoints after the step on purpose; the frozen reference
# and the dropout-free denoiser sit in eval mode on purpose; dflow's batch streams define __len__
# per worker by construction (dflow/lightning/data.py); the pytree notice is Lightning's own.
QUIET_WARNINGS = (
    r"Using ModelCheckpoint with manual optimization",
    r"Found \d+ module\(s\) in eval mode",
    r"Your `IterableDataset` has `__len__` defined",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class DFlowCLI(LightningCLI):
    """LightningCLI that adds :class:`~dflow.lightning.callbacks.DFlowProgressBar` unless the recipe
    names its own progress bar or sets ``trainer.enable_progress_bar: false``, and
    :class:`~dflow.lightning.reliability.AtomicCheckpointIO` unless it names a CheckpointIO, and
    :class:`~dflow.lightning.reliability.GracefulShutdown` (SIGTERM / Ctrl-C save ``last.ckpt``). Only ``fit`` and
    ``validate``: the modules define no test or predict step, and each subcommand parser costs
    about a second to build. Building one silences :data:`QUIET_WARNINGS` for the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def before_instantiate_classes(self) -> None:
        # LightningCLI accepts --optimizer / --lr_scheduler and would replace the module's own
        # configure_optimizers: RLModule steps its optimiser and schedule by hand (once per RL step)
        # and PretrainModule builds AdamW with its warm-up and cosine schedule, so a CLI optimiser is
        # either ignored or breaks them. Refuse it and say where the optimiser is set.
        section = self.config.get(self.subcommand, {}) if self.subcommand else self.config
        for key in ("optimizer", "lr_scheduler"):
            value = section.get(key) if hasattr(section, "get") else None
            if value:
                raise ValueError(
                    f"--{key}={_class_name(value)!r} is not supported: dflow's modules build their own AdamW "
                    "and learning-rate schedule. Set them in the model: model.init_args.lr, weight_decay, "
                    "warmup_steps, min_lr_ratio and decay_steps (RLModule; PretrainModule also takes betas "
                    "and its own warmup_steps / min_lr_ratio)"
                )
        if self.subcommand == "fit":  # `validate` may score a checkpoint with other evaluation settings
            self._own_the_run_folder(section)
        if self.subcommand == "validate" and section.get("trainer", {}).get("limit_val_batches") == 0:
            # RL recipes switch Lightning's validation loop off for fit (they evaluate on their own
            # schedule); `dflow validate` is that evaluation, run once
            section["trainer"]["limit_val_batches"] = 1

    def _own_the_run_folder(self, section: Any) -> None:
        """Record the run's identity (stored in its checkpoints), and resolve ``--ckpt_path last`` to
        the newest checkpoint of this configuration under the logger's ``save_dir/name``, logging into
        that same version folder (so metrics and checkpoints of a resumed run stay together)."""
        if getattr(self, "run_identity", None) is None:
            self.run_identity = run_identity(section.as_dict() if hasattr(section, "as_dict") else dict(section))
        if section.get("ckpt_path") != "last":
            return
        trainer = section.get("trainer", {})
        fixed = _checkpoint_dirpaths(trainer.get("callbacks"))
        for dirpath in fixed:  # a recipe that gives ModelCheckpoint its own folder resumes from there
            last = Path(dirpath) / "last.ckpt"
            if last.is_file():
                check_last(last, self.run_identity)
                print(f"--ckpt_path last: resuming {last}", flush=True)
                section["ckpt_path"] = str(last)
                return
        logger = trainer.get("logger")
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if not init_args or init_args.get("save_dir") is None:
            return  # no versioned log folder: Lightning's own "last" lookup applies
        name = init_args.get("name")
        root = Path(str(init_args.get("save_dir"))) / str(name) if name else Path(str(init_args.get("save_dir")))
        found = find_last(root, self.run_identity)
        if found is None:
            where = " or ".join([str(root), *fixed])
            print(f"--ckpt_path last: no checkpoint in {where}; starting a new run", flush=True)
            section["ckpt_path"] = None
            return
        version, path = found
        print(f"--ckpt_path last: resuming {path}", flush=True)
        section["ckpt_path"] = str(path)
        if "version" in init_args:
            init_args["version"] = version

    def _parse_ckpt_path(self) -> None:
        # LightningCLI torch.loads --ckpt_path for its hyperparameters before any trainer exists, so
        # a truncated or foreign file would surface as a bare unpickling / zip-reader error: if that
        # load fails, let load_checkpoint_file name the file and what is wrong with it. It loads with
        # weights_only=True: allow dflow's own config records (SamplerConfig, RewardSpec in the saved
        # hyperparameters) and nothing else
        # the run's identity is what the user asked for, taken before LightningCLI replaces the model's
        # arguments with the hyperparameters saved in an explicit --ckpt_path: a resume of a checkpoint
        # of another configuration must be refused, not silently continued with its settings
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.run_identity = run_identity(self.config[subcommand].as_dict())
        try:
            with torch.serialization.safe_globals(_dflow_globals(self.config)):
                super()._parse_ckpt_path()
        except Exception:
            ckpt_path = _ckpt_path(self.config)
            if ckpt_path:
                load_checkpoint_file(ckpt_path)  # raises the ValueError when the file is the problem
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        has_bar = any(isinstance(c, ProgressBar) for c in [*given, *callbacks])
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            callbacks = [*callbacks, DFlowProgressBar()]
        # SIGTERM / Ctrl-C: finish the step, save last.ckpt, stop (unless the recipe configures its own)
        if not any(isinstance(c, GracefulShutdown) for c in [*given, *callbacks]):
            callbacks = [*callbacks, GracefulShutdown()]
        identity = getattr(self, "run_identity", None)
        if identity is not None and self.subcommand == "fit":
            # checkpoints record what they train; a resume of another run is refused
            callbacks = [*callbacks, RunIdentity(identity)]
        # atomic saves, and a missing or non-Lightning --ckpt_path named in a ValueError rather than
        # Lightning's KeyError('pytorch-lightning_version'); a recipe that names its own CheckpointIO keeps it
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, callbacks)


def cli_settings() -> tuple[type[DFlowCLI], dict[str, Any]]:
    """The class and keyword arguments ``dflow fit`` builds its LightningCLI with: one place for the
    CLI itself, ``dflow ablate``'s parser and workers, and the benchmarks that build a recipe's run."""
    return DFlowCLI, dict(
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        trainer_defaults=dict(TRAINER_DEFAULTS),
        seed_everything_default=0,
    )


def run_lightning_cli(args: Sequence[str] | None = None) -> DFlowCLI:
    """``dflow fit|validate ...`` through LightningCLI (``None``: read ``sys.argv``); returns the CLI."""
    cli_class, kwargs = cli_settings()
    return cli_class(**kwargs, args=None if args is None else list(args))


# ---------------------------------------------------------------------------- dflow sample
def default_path(directory: Path, meta: dict[str, Any], vocab_size: int) -> ProbabilityPath:
    """The path the base was trained with (from its meta), else mask/uniform from its config."""
    if "path" in meta:
        return instantiate(meta["path"])
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    source = MaskSource(vocab_size) if config.get("mask_id") is not None else UniformSource(vocab_size)
    return MixturePath(source, LinearScheduler())


def load_task(name: str | None, meta: dict[str, Any], task_args: dict[str, Any] | None) -> Task:
    """``get_task(name, **task_args)``; the name and arguments default to the base's meta."""
    recorded = meta.get("task", {}) if isinstance(meta.get("task"), dict) else {}
    name = name or meta.get("task_name")
    if name is None:
        raise ValueError("task=None: pass --task NAME (the checkpoint has no dflow_meta.json naming its task)")
    if task_args is None:
        task_args = recorded.get("init_args", {}) if name == meta.get("task_name") else {}
    return get_task(name, **task_args)


@torch.no_grad()
def evaluate_base(
    checkpoint: str,
    task: Task,
    path: ProbabilityPath,
    sampler: SamplerConfig,
    split: str = "test",
    num_prompts: int | None = None,
    samples_per_prompt: int = 1,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = EVAL_SEED,
    device: str = "cpu",
    samples_per_category: int | None = None,
) -> tuple[dict[str, float], torch.Tensor, list[Any]]:
    """Score a base on ``split`` with the same functions as RL evaluation
    (:func:`~dflow.lightning.evaluation.evaluation_prompts` and :func:`~dflow.lightning.evaluation.evaluate`):
    the same prompts, sampler, batch size and seed give the same numbers as an RL run's step-0
    evaluation. Returns ``({"acc/<category>", "acc/overall", "reward", "n"}, x1, prompts)``."""
    denoiser = PretrainedDenoiser(checkpoint).build(task, path).to(device).eval()
    prompts = evaluation_prompts(task.prompts(split), num_prompts, samples_per_prompt, samples_per_category)
    res = evaluate(denoiser, task, sampler.build(path), prompts, batch_size, seed, device)
    return {**res.metrics, "n": len(prompts)}, res.x1, prompts


def parse_task_args(text: str | None) -> dict[str, Any] | None:
    """``--task-args`` as a dict; ``ValueError`` quoting the flag and its value when it is not a JSON object."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--task-args {text!r} is not valid JSON ({err}); write e.g. '{{\"height\": 8}}'") from err
    if not isinstance(value, dict):
        raise ValueError(f"--task-args {text!r} must be a JSON object of task arguments, got a {type(value).__name__}")
    return value


def sample_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dflow sample",
        description="Sample a pretrained base for a task's prompts, write a PNG grid, print strict accuracy.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model folder (e.g. dflow/assets/shapes_uniform, or what dflow export wrote), a run folder "
        "(runs/<name>/version_<n>) or a checkpoint of it (a pretraining or an RL run)",
    )
    parser.add_argument("--task", default=None, help="task name (default: the one in the base's dflow_meta.json)")
    parser.add_argument("--task-args", default=None, help="JSON keyword arguments of the task, e.g. '{\"height\": 12}'")
    parser.add_argument("--out", default="samples.png", help="PNG grid to write")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the base's eval setting)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the base's eval setting)")
    parser.add_argument("--time-grid", default=None, help="uniform | shifted | cosine")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num", type=int, default=32, help="samples shown in the PNG grid")
    parser.add_argument("--split", default="test", help="prompt split evaluated")
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts evaluated (taken round-robin over categories; default all)"
    )
    parser.add_argument("--samples-per-prompt", type=int, default=1)
    parser.add_argument(
        "--samples-per-category",
        type=int,
        default=None,
        help="instead, exactly this many samples per category (RL recipes: eval_samples_per_category)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help="samples per batch (the noise depends on it; RL recipes: eval_batch_size)",
    )
    parser.add_argument(
        "--seed", type=int, default=EVAL_SEED, help="evaluation noise seed (RL evaluations use %(default)s)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the accuracies to this JSON file")
    opts = parser.parse_args(list(argv))

    given = Path(opts.checkpoint)
    if given.is_file() or (
        given.is_dir() and (given / "config.yaml").is_file() and not (given / "config.json").is_file()
    ):
        # a run folder or a training checkpoint (an RL-tuned policy, a pretraining run): export it first
        from dflow.lightning.export import export_run

        with tempfile.TemporaryDirectory() as tmp:
            return _sample(opts, export_run(given, Path(tmp) / "model"), source=given)
    return _sample(opts, resolve_path(opts.checkpoint))


def _sample(opts: argparse.Namespace, directory: Path, source: Path | None = None) -> int:
    """``dflow sample`` on a model folder (exported from ``source``, a run folder or checkpoint, if given)."""
    meta = read_meta(directory)
    task = load_task(opts.task, meta, parse_task_args(opts.task_args))
    path = default_path(directory, meta, task.vocab_size)
    recorded = meta.get("eval", {})
    sampler = SamplerConfig(
        num_steps=opts.steps if opts.steps is not None else recorded.get("num_steps", 20),
        guidance_scale=opts.guidance if opts.guidance is not None else recorded.get("guidance_scale", 2.0),
        time_grid=opts.time_grid or recorded.get("time_grid", "uniform"),
        temperature=opts.temperature,
    )
    result, x1, prompts = evaluate_base(
        str(directory),
        task,
        path,
        sampler,
        opts.split,
        opts.prompts,
        opts.samples_per_prompt,
        opts.batch_size,
        opts.seed,
        opts.device,
        opts.samples_per_category,
    )
    out = task.render(x1[: opts.num], prompts[: opts.num], opts.out)
    print(
        f"{task.name} {opts.split}: {result['n']} samples, steps={sampler.num_steps}, "
        f"guidance={sampler.guidance_scale}, grid={sampler.time_grid}"
    )
    for key, value in result.items():
        if key.startswith("acc/"):
            print(f"  {key:<24} {value:.3f}")
    print(f"  {'reward (mean)':<24} {result['reward']:.3f}")
    print(f"wrote {out}")
    if opts.json:
        Path(opts.json).write_text(
            json.dumps(
                {"checkpoint": str(source or directory), "sampler": dataclasses.asdict(sampler), **result}, indent=2
            )
        )
    return 0


# ---------------------------------------------------------------------------- subcommands
# Subcommands dispatched before LightningCLI: name -> function(argv after the name) -> exit code.
# >>> The lead engineer registers `dflow demo` and `dflow ablate` here (e.g. SUBCOMMANDS["demo"] = demo_main).
def export_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dflow export",
        description="Write a run's trained denoiser (PretrainModule or RLModule) as a model folder that "
        "dflow sample, a recipe's PretrainedDenoiser and transformers' from_pretrained load.",
    )
    parser.add_argument(
        "source", help="a run folder (runs/<name>/version_<n>: its checkpoints/last.ckpt) or a checkpoint"
    )
    parser.add_argument("out", help="the model folder to write (created; its files are overwritten)")
    opts = parser.parse_args(list(argv))
    from dflow.lightning.export import export_run

    out = export_run(opts.source, opts.out)
    print(f"exported {opts.source} to {out}")
    return 0


def demo_main(argv: Sequence[str]) -> int:
    from dflow.demo import main as demo

    return demo(argv)


def ablate_main(argv: Sequence[str]) -> int:
    from dflow.ablate.cli import main as ablate

    return ablate(list(argv))


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "sample": sample_main,
    "export": export_main,
    "demo": demo_main,
    "ablate": ablate_main,
}
# <<< end of the subcommand registry

USAGE = """usage: dflow {fit,validate,sample,...} ...

  dflow fit --config recipes/<task>/<recipe>.yaml [--section.key=value ...]   train (LightningCLI)
  dflow sample --checkpoint DIR --out grid.png [--steps --guidance --num]    sample a base, print accuracy
"""


def _checkpoint_dirpaths(callbacks: Any) -> list[str]:
    """The ``dirpath`` of every ModelCheckpoint a parsed ``trainer.callbacks`` names explicitly."""
    items = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    out = []
    for item in items:
        path = str(item.get("class_path", "")) if hasattr(item, "get") else ""
        init_args = item.get("init_args") if hasattr(item, "get") else None
        if path.endswith("ModelCheckpoint") and init_args is not None and init_args.get("dirpath"):
            out.append(str(init_args.get("dirpath")))
    return out


def _class_name(value: Any) -> str:
    """The class a --optimizer / --lr_scheduler value names (a class_path mapping or a bare string)."""
    if hasattr(value, "get") and value.get("class_path"):
        return str(value.get("class_path"))
    return str(value)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``dflow`` console script; ``args`` defaults to ``sys.argv[1:]``.

    The working directory goes first on ``sys.path`` (as ``python -m`` would put it), so a recipe's
    ``class_path`` or a reward's ``source`` can name the user's own module next to the recipe
    (``mymodule.MyReward``); a console script otherwise sees only installed packages."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "  " + ", ".join(f"dflow {name}" for name in SUBCOMMANDS) + " (see `dflow <name> --help`)\n")
        if not argv:
            return 2
    run_lightning_cli(None if args is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
