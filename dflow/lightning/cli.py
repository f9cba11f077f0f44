"""``dflow fit`` / ``dflow validate``: the LightningCLI that runs recipes.

:class:`DFlowCLI` adds what every run needs (a run that owns its checkpoint folder, ``--ckpt_path
last`` resolved inside it, atomic checkpoints, graceful shutdown, the rich progress bar, refusal of
Lightning options that would do nothing); :func:`cli_settings` is the one place that says how it is
built, for the ``dflow`` command, ``dflow ablate``'s parser and workers, and the benchmarks.
This module sits in the Lightning layer: the ``dflow`` command (:mod:`dflow.cli`), ``dflow demo``
and ``dflow ablate`` import it, and it imports none of them.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI

from dflow.lightning.callbacks import DFlowProgressBar
from dflow.lightning.cli_args import check_moved_rl_settings, nulls_as_mappings
from dflow.lightning.reliability import AtomicCheckpointIO, GracefulShutdown, load_checkpoint_file
from dflow.lightning.runs import RunIdentity, check_last, find_last, run_identity

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
# per worker by construction (dflow/lightning/streams.py); the pytree notice is Lightning's own.
QUIET_WARNINGS = (
    r"Using ModelCheckpoint with manual optimization",
    r"Found \d+ module\(s\) in eval mode",
    r"Your `IterableDataset` has `__len__` defined",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"LightningCLI's args parameter is intended to run from within Python",  # dflow demo passes its own args
)
# Lines Lightning prints on every run that say nothing about it (an advertisement for a cloud logger).
QUIET_INFO = ("try installing [litlogger]",)


class _QuietInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in QUIET_INFO)


def quiet_boilerplate() -> None:
    """Silence :data:`QUIET_WARNINGS`, :data:`QUIET_INFO` and transformers' per-load progress bar
    ("Loading weights") for this process; a recipe's own messages and real warnings still print."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _QuietInfo) for f in logger.filters):
        logger.addFilter(_QuietInfo())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class DFlowCLI(LightningCLI):
    """LightningCLI that adds :class:`~dflow.lightning.callbacks.DFlowProgressBar` unless the recipe
    names its own progress bar or sets ``trainer.enable_progress_bar: false``, and
    :class:`~dflow.lightning.reliability.AtomicCheckpointIO` unless it names a CheckpointIO, and
    :class:`~dflow.lightning.reliability.GracefulShutdown` (SIGTERM / Ctrl-C save ``last.ckpt``). Only ``fit`` and
    ``validate``: the modules define no test or predict step, and each subcommand parser costs
    about a second to build. Building one silences the boilerplate of :func:`quiet_boilerplate` for the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quiet_boilerplate()
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
                    "and learning-rate schedule. Set them in the model: RLModule's optim block "
                    "(model.init_args.optim.lr, weight_decay, warmup_steps, min_lr_ratio, decay_steps); "
                    "PretrainModule's own arguments "
                    "(model.init_args.lr, weight_decay, betas, warmup_steps, min_lr_ratio)"
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
    given = list(sys.argv[1:] if args is None else args)
    check_moved_rl_settings(given)
    rewritten = nulls_as_mappings(given)
    return cli_class(**kwargs, args=None if args is None and rewritten == given else rewritten)


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
