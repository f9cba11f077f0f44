"""Check a whole grid before anything runs: every run's config parses, every override names a real
field, every module keeps compute accounting, and the runs are comparable.

Configs are parsed with the same LightningCLI parser as ``dflow fit`` (``dflow.lightning.cli.DFlowCLI``, its
trainer defaults and omegaconf mode) but nothing is instantiated: no model, no task, no trainer.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from dflow.ablate.spec import SEED_AXIS, SEED_KEYS, GridSpec, Run, encode_value, nearest
from dflow.lightning.cli import cli_settings

# Settings that decide what a run is measured on. Runs of one grid must agree on them, unless the
# grid varies one of them on purpose (as an axis or an override): then the CSV records the choice.
SHARED_FIELDS = (
    "data.class_path",
    "data.init_args.task",
    "data.init_args.seed",  # the prompt order: same prompts for every run
    "data.init_args.split",
    "model.init_args.evaluation",  # the evaluation sampler
    "model.init_args.evaluation.num_prompts",  # the evaluation prompts ...
    "model.init_args.evaluation.batch_size",  # ... and their noise (one seeded generator over the batches)
)


class ConfigParser:
    """Parses LightningCLI arguments (no subcommand) into a plain config dict, instantiating nothing."""

    def __init__(self) -> None:
        cli_class, kwargs = cli_settings()

        # build the parser, then stop: no parsing, seeding or instantiation (the type: ignore: mypy takes
        # no class held in a variable as a base; cli_settings() is the one place naming dflow's CLI class)
        class _ParseOnly(cli_class):  # type: ignore[misc, valid-type]
            def parse_arguments(self, parser, args) -> None:
                self.config = Namespace(seed_everything=False)

            def instantiate_classes(self) -> None:
                pass

        self.parser = _ParseOnly(**kwargs, run=False, args=[]).parser
        self.parser.exit_on_error = False  # raise argparse.ArgumentError instead of exiting

    def parse(self, args: list[str]) -> dict[str, Any]:
        """The full config (defaults filled in) as nested dicts; ``argparse.ArgumentError`` if invalid."""
        return self.parser.parse_args(args).as_dict()  # None-valued fields included: they are fields too


def flat_keys(config: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a nested dict, intermediate ones included (``a``, ``a.b``, ``a.b.c``)."""
    keys: set[str] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            dotted = f"{prefix}{key}"
            keys.add(dotted)
            keys |= flat_keys(value, dotted + ".")
    return keys


def get_key(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class PlannedRun:
    """A run whose config has been parsed and checked.

    Attributes:
        run: the grid point.
        config: the full parsed config (nested dicts).
        seed: ``seed_everything`` of the run.
        recipe_sha256: hash of the recipe file's text (a finished run is reused only for the same text).
        exec_args: execution-only arguments (trainer settings from the command line; not in the run id).
    """

    run: Run
    config: dict[str, Any]
    seed: int
    recipe_sha256: str
    exec_args: tuple[str, ...]

    def args(self) -> list[str]:
        return self.run.args(self.exec_args)


def execution_args(run: Run, user_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Trainer settings every grid run gets, then the user's (later arguments win).

    The budget ends a run, so ``trainer.max_steps`` is lifted (-1) unless the grid sets it (a cap
    for safety); the grid shows its own progress, so the per-run progress bar is off.
    """
    defaults = ["--trainer.enable_progress_bar=false"]
    if "trainer.max_steps" not in run.overrides:
        defaults.append("--trainer.max_steps=-1")
    return (*defaults, *user_args)


def plan_grid(
    spec: GridSpec, exec_args: list[str] | tuple[str, ...] = (), parser: ConfigParser | None = None
) -> list[PlannedRun]:
    """Parse and check every run of ``spec``; ``ValueError`` before anything runs on the first problem."""
    parser = parser or ConfigParser()
    exec_args = tuple(exec_args)
    planned = []
    for run in spec.runs():
        run_exec_args = execution_args(run, exec_args)
        config = _parse_run(parser, run, run_exec_args)
        _check_module(run, config, spec)
        seed = config.get("seed_everything")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(
                f"run {run.run_id} (method {run.method!r}): seed_everything={seed!r}; grid runs need a fixed int "
                f"seed: set seed_everything in {run.recipe} or add a grid axis `seed: [0, 1, 2]`"
            )
        sha = hashlib.sha256(Path(run.recipe).read_bytes()).hexdigest()
        planned.append(PlannedRun(run, config, seed, sha, run_exec_args))
    _check_shared(planned, spec)
    return planned


def _parse_run(parser: ConfigParser, run: Run, exec_args: tuple[str, ...]) -> dict[str, Any]:
    where = f"run {run.run_id} (method {run.method!r}, recipe {run.recipe})"
    items = [(k, f"--{k}={encode_value(v)}") for k, v in run.overrides.items()]
    items += [(arg[2:].split("=", 1)[0], arg) for arg in exec_args]
    try:
        config = parser.parse(run.args(exec_args))
    except argparse.ArgumentError as error:
        _explain(parser, run, items, where, error)
    valid = flat_keys(config)
    for key, _ in items:  # catches what the parser let through, such as abbreviated option names
        if key not in valid:
            raise ValueError(_unknown_key(where, key, valid))
    return config


def _explain(parser: ConfigParser, run: Run, items: list[tuple[str, str]], where: str, error: Exception):
    """Find the override that breaks the parse, trying one at a time on the recipe; raise ValueError.

    Overrides that switch a class (a ``class_path`` mapping) stay in every probe: a key such as
    ``model.init_args.objective.init_args.beta`` exists only once the objective's class is chosen.
    """
    classes = [
        arg for key, arg in items if isinstance(run.overrides.get(key), dict) and "class_path" in run.overrides[key]
    ]
    recipe = ["--config", str(run.recipe)]
    try:
        known = flat_keys(parser.parse(recipe + classes))
    except argparse.ArgumentError as err:
        raise ValueError(f"{where}: the recipe does not parse with its class overrides: {_short(err)}") from err
    for key, arg in items:
        try:
            config = parser.parse(recipe + classes + [arg])
        except argparse.ArgumentError as err:
            if key in known:
                raise ValueError(f"{where}: override {arg[2:]!r} has an invalid value: {_short(err)}") from err
            raise ValueError(_unknown_key(where, key, known)) from err
        if key not in flat_keys(config):
            raise ValueError(_unknown_key(where, key, known)) from error
    raise ValueError(f"{where}: the overrides do not parse together: {_short(error)}") from error


def _unknown_key(where: str, key: str, valid: set[str]) -> str:
    same_depth = sorted(k for k in valid if k.count(".") == key.count("."))
    hint = nearest(key, same_depth) or f"; valid keys under it: {_siblings(key, valid)}"
    shown = SEED_AXIS if key in SEED_KEYS else key
    return f"{where}: override {shown!r} names no field of the config{hint}"


def _siblings(key: str, valid: set[str]) -> str:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    while parent and parent not in valid:
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
    depth = parent.count(".") + 1 if parent else 0
    children = (
        sorted(k for k in valid if k.startswith(parent + ".") and k.count(".") == depth)
        if parent
        else sorted(k for k in valid if "." not in k)
    )
    return ", ".join(children[:12]) + (" ..." if len(children) > 12 else "")


def _short(err: Exception, limit: int = 1200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _check_module(run: Run, config: dict[str, Any], spec: GridSpec) -> None:
    """The model must be an RLModule: the budget is counted by its ``compute`` accounting."""
    from dflow.lightning.rl_module import RLModule

    class_path = get_key(config, "model.class_path")
    where = f"run {run.run_id} (method {run.method!r}, recipe {run.recipe})"
    try:
        module_name, _, class_name = str(class_path).rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{where}: model class_path={class_path!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, RLModule)):
        raise ValueError(
            f"{where}: model class_path={class_path!r} is not an RLModule, so it has no compute accounting "
            f"and cannot share the grid's budget unit {spec.budget.unit!r}"
        )


def _check_shared(planned: list[PlannedRun], spec: GridSpec) -> None:
    """Runs agree on :data:`SHARED_FIELDS`, except where the grid varies a field on purpose."""
    if not planned:
        return
    first = planned[0]
    for other in planned[1:]:
        varied = set(other.run.overrides) | set(first.run.overrides)
        for field_key in SHARED_FIELDS:
            a = _without(get_key(first.config, field_key), field_key, varied)
            b = _without(get_key(other.config, field_key), field_key, varied)
            if a != b:
                raise ValueError(
                    f"runs {first.run.run_id} (method {first.run.method!r}) and {other.run.run_id} (method "
                    f"{other.run.method!r}) differ in {field_key}: {a!r} vs {b!r}. Runs of one grid must share "
                    f"prompts and evaluation; make the recipes agree, or vary it on purpose as a grid axis"
                )


def _without(value: Any, prefix: str, varied: set[str]) -> Any:
    """``value`` (at dotted ``prefix``) with every sub-field named by an override removed."""
    if any(prefix == k or prefix.startswith(k + ".") for k in varied):
        return "<varied by the grid>"
    if not isinstance(value, dict):
        return value
    return {k: _without(v, f"{prefix}.{k}", varied) for k, v in value.items()}
