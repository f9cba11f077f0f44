"""Grid specs for ``dflow ablate``: methods x override axes -> runs with stable ids.

A grid file (YAML, read with omegaconf so ``${...}`` interpolation works)::

    name: udm_vs_elbo
    methods:                                  # or `base: recipes/...yaml` for a single method
      udm: recipes/shapes/udm_grpo.yaml
      elbo_pepg:                              # a method may be a recipe plus its own overrides
        recipe: recipes/shapes/elbo_epg.yaml
        overrides: {model.init_args.objective: {class_path: dflow.rl.PEPG}}
    grid:                                     # cartesian product of these axes
      seed: [0, 1, 2]                         # `seed` sets seed_everything and the RLModule's seed
      model.init_args.rollout.num_steps: [10, 25]
    overrides: {trainer.max_steps: 5000}      # applied to every run
    budget: {unit: fwd_equiv, value: 200000, eval_every: 20000}
    target_accuracy: 0.9
    out: runs/ablate/udm_vs_elbo

Every run gets the id ``<method>-<10 hex digits>``: a hash of the method name and every override
that says *what* is run (method, grid-wide and axis overrides). The same grid gives the same ids
on every machine, which is what lets an interrupted grid resume.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

GRID_KEYS = ("name", "base", "methods", "grid", "overrides", "budget", "target_accuracy", "out")
METHOD_KEYS = ("recipe", "overrides", "budget")
BUDGET_KEYS = ("unit", "value", "eval_every")
# Counters of dflow.rl.update.Compute a budget may be stated in. `backward` alone is not offered:
# it ignores the rollouts, which are most of the work of a step.
BUDGET_UNITS = ("fwd_equiv", "tokens", "forward")
SEED_AXIS = "seed"
# what the `seed` axis sets: Lightning's global seed (weights, dropout) and the RLModule's own
# rollout generator. The data module's seed is left alone: every run of a grid sees the same prompts.
SEED_KEYS = ("seed_everything", "model.init_args.seed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def nearest(word: str, choices, n: int = 3) -> str:
    """``"did you mean 'a', 'b'?"`` for the closest of ``choices`` (empty string when none is close)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass(frozen=True)
class Budget:
    """The compute every run of a grid gets.

    Attributes:
        unit: a counter of the RLModule's :class:`~dflow.rl.update.Compute`: ``"fwd_equiv"``
            (forward passes + 2 x backward passes, per sample), ``"tokens"`` (positions processed)
            or ``"forward"`` (forward passes per sample).
        value: stop a run at the end of the first step whose cumulative count reaches this.
        eval_every: also evaluate each time the count crosses a multiple of this (same unit), so
            methods with different costs per step are evaluated at the same compute points.
            ``None``: only the recipe's ``eval_every_n_steps`` schedule, plus the final evaluation.
    """

    unit: str
    value: float
    eval_every: float | None = None

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ValueError(
                f"budget unit={self.unit!r} is not one of {BUDGET_UNITS}{nearest(str(self.unit), BUDGET_UNITS)}"
            )
        if (
            isinstance(self.value, bool)
            or not isinstance(self.value, (int, float))
            or not self.value > 0
        ):
            raise ValueError(f"budget value must be a number > 0, got value={self.value!r}")
        if self.eval_every is not None and (
            isinstance(self.eval_every, bool)
            or not isinstance(self.eval_every, (int, float))
            or not self.eval_every > 0
        ):
            raise ValueError(
                f"budget eval_every must be a number > 0 or null, got eval_every={self.eval_every!r}"
            )

    @classmethod
    def from_dict(cls, raw: Any, where: str = "budget") -> Budget:
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping {{unit: ..., value: ...}}, got {raw!r}")
        unknown = [k for k in raw if k not in BUDGET_KEYS]
        if unknown:
            raise ValueError(
                f"{where} has unknown key {unknown[0]!r} (keys: {BUDGET_KEYS}){nearest(unknown[0], BUDGET_KEYS)}"
            )
        if "unit" not in raw or "value" not in raw:
            raise ValueError(f"{where} needs both 'unit' and 'value', got {raw!r}")
        return cls(raw["unit"], raw["value"], raw.get("eval_every"))

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "value": self.value, "eval_every": self.eval_every}


@dataclass(frozen=True)
class Method:
    """One recipe (plus its own overrides) compared in a grid."""

    name: str
    recipe: Path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """One point of the grid.

    Attributes:
        run_id: ``<method>-<hash>``, stable across machines and reruns.
        method: the method's name.
        recipe: the method's recipe file.
        axes: this run's coordinates, ``{axis key: value}`` in grid order (``"seed"`` included).
        overrides: every ``--key=value`` given to the parser after ``--config recipe``, in order:
            method overrides, grid-wide overrides, axes (the seed axis expanded to ``SEED_KEYS``).
    """

    run_id: str
    method: str
    recipe: Path
    axes: dict[str, Any]
    overrides: dict[str, Any]

    def args(self, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
        """LightningCLI arguments (no subcommand): ``--config recipe --k=v ... *extra``."""
        return [
            "--config",
            str(self.recipe),
            *(f"--{k}={encode_value(v)}" for k, v in self.overrides.items()),
            *extra,
        ]


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file; :meth:`runs` expands it."""

    name: str
    methods: tuple[Method, ...]
    axes: dict[str, list[Any]]
    overrides: dict[str, Any]
    budget: Budget
    target_accuracy: float
    out: Path
    source: Path | None = None

    def runs(self) -> list[Run]:
        """The cartesian product methods x axes (first axis varies slowest), each with its id."""
        keys = list(self.axes)
        runs, seen = [], {}
        for method in self.methods:
            for values in itertools.product(*(self.axes[k] for k in keys)):
                axes = dict(zip(keys, values))
                overrides = {**method.overrides, **self.overrides}
                for key, value in axes.items():
                    if key == SEED_AXIS:
                        overrides.update({k: value for k in SEED_KEYS})
                    else:
                        overrides[key] = value
                run_id = make_run_id(method.name, overrides)
                if run_id in seen:
                    raise ValueError(
                        f"grid lists the same run twice: method {method.name!r} with {axes} and {seen[run_id]}"
                    )
                seen[run_id] = axes
                runs.append(Run(run_id, method.name, method.recipe, axes, overrides))
        return runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "methods": {
                m.name: {"recipe": str(m.recipe), "overrides": m.overrides} for m in self.methods
            },
            "grid": self.axes,
            "overrides": self.overrides,
            "budget": self.budget.to_dict(),
            "target_accuracy": self.target_accuracy,
            "out": str(self.out),
        }


def encode_value(value: Any) -> str:
    """An override value as the command line gives it to jsonargparse (which reads it as YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def make_run_id(method: str, overrides: dict[str, Any]) -> str:
    canonical = json.dumps({"method": method, "overrides": overrides}, sort_keys=True, default=str)
    return f"{method}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def find_recipe(recipe: Any, grid_dir: Path | None, where: str) -> Path:
    """A recipe path as written: absolute, relative to the working directory, or to the grid file."""
    if not isinstance(recipe, str) or not recipe:
        raise ValueError(f"{where}: recipe must be a path to a YAML recipe, got {recipe!r}")
    given = Path(recipe).expanduser()
    candidates = (
        [given] if given.is_absolute() else [given, *([grid_dir / given] if grid_dir else [])]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(
        f"{where}: recipe {recipe!r} not found (tried {', '.join(str(c) for c in candidates)})"
    )


def _overrides(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of dotted keys to values, got {raw!r}")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise ValueError(
                f"{where}: override key {key!r} must be a dotted key such as 'model.init_args.lr'"
            )
        if key == SEED_AXIS:
            raise ValueError(
                f"{where}: 'seed' is a grid axis (grid: {{seed: [0, 1]}}); to pin one seed use seed_everything"
            )
        out[key] = value
    return out


def parse_grid(raw: Any, source: Path | None = None, out: str | Path | None = None) -> GridSpec:
    """Check a grid mapping (as loaded from YAML) and build the :class:`GridSpec`.

    Raises ``ValueError`` naming the offending key for unknown keys, a missing budget, an axis that
    is not a non-empty list, an unknown budget unit, or methods whose budgets differ.
    """
    where = str(source) if source else "grid"
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: a grid file is a mapping with keys {GRID_KEYS}, got {type(raw).__name__}"
        )
    for key in raw:
        if key not in GRID_KEYS:
            raise ValueError(
                f"{where}: unknown key {key!r} (keys: {', '.join(GRID_KEYS)}){nearest(str(key), GRID_KEYS)}"
            )
    grid_dir = source.parent if source else None
    base = (
        find_recipe(raw["base"], grid_dir, f"{where}: base")
        if raw.get("base") is not None
        else None
    )
    methods, budgets = _methods(raw.get("methods"), base, grid_dir, where)

    # one budget for the whole grid: the grid's own, else the one every method states identically
    grid_budget = (
        Budget.from_dict(raw["budget"], f"{where}: budget")
        if raw.get("budget") is not None
        else None
    )
    stated = {name: b for name, b in budgets.items() if b is not None}
    if grid_budget is None and not stated:
        raise ValueError(
            f"{where}: no budget: add `budget: {{unit: fwd_equiv, value: N}}` (units: {BUDGET_UNITS})"
        )
    if grid_budget is not None:
        ref_label, ref = "the grid", grid_budget
    else:
        first = next(iter(stated))
        ref_label, ref = f"method {first!r}", stated[first]
    for name, budget in stated.items():
        if budget != ref:
            kind = "budget unit" if budget.unit != ref.unit else "budget"
            raise ValueError(
                f"{where}: runs of one grid must share one {kind}: method {name!r} has {budget.to_dict()} but "
                f"{ref_label} has {ref.to_dict()}; compare methods on one budget"
            )

    axes = raw.get("grid") or {}
    if not isinstance(axes, dict):
        raise ValueError(
            f"{where}: grid must be a mapping of axis key -> list of values, got {axes!r}"
        )
    for key, values in axes.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise ValueError(f"{where}: grid axis {key!r} must be a dotted key (or 'seed')")
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"{where}: grid axis {key!r} must be a non-empty list of values, got {values!r} "
                f"(a single value for every run goes under `overrides:`)"
            )
    if SEED_AXIS in axes and not all(
        isinstance(s, int) and not isinstance(s, bool) for s in axes[SEED_AXIS]
    ):
        raise ValueError(f"{where}: grid axis 'seed' must list ints, got {axes[SEED_AXIS]!r}")

    target = raw.get("target_accuracy", 0.9)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"{where}: target_accuracy must be in (0, 1], got {target!r}")
    name = raw.get("name") or (source.stem if source else "grid")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name={name!r} must be letters, digits, '_', '-' or '.'")
    out_dir = Path(out if out is not None else raw.get("out") or Path("runs") / "ablate" / name)
    return GridSpec(
        name=name,
        methods=tuple(methods),
        axes={k: list(v) for k, v in axes.items()},
        overrides=_overrides(raw.get("overrides"), f"{where}: overrides"),
        budget=ref,
        target_accuracy=float(target),
        out=out_dir,
        source=source,
    )


def _methods(raw: Any, base: Path | None, grid_dir: Path | None, where: str):
    if raw is None:
        if base is None:
            raise ValueError(
                f"{where}: give `base: <recipe.yaml>` or `methods: {{name: <recipe.yaml>, ...}}`"
            )
        return [Method(base.stem, base)], {base.stem: None}
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"{where}: methods must be a non-empty mapping name -> recipe path or {{recipe, overrides}}"
        )
    methods, budgets = [], {}
    for name, entry in raw.items():
        label = f"{where}: methods.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{label}: a method name must be letters, digits, '_', '-' or '.' (it names directories)"
            )
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict):
            raise ValueError(
                f"{label} must be a recipe path or a mapping with keys {METHOD_KEYS}, got {entry!r}"
            )
        for key in entry:
            if key not in METHOD_KEYS:
                raise ValueError(
                    f"{label}: unknown key {key!r} (keys: {METHOD_KEYS}){nearest(str(key), METHOD_KEYS)}"
                )
        if entry.get("recipe") is None and base is None:
            raise ValueError(f"{label} names no recipe and the grid has no `base:` recipe")
        recipe = (
            find_recipe(entry["recipe"], grid_dir, label)
            if entry.get("recipe") is not None
            else base
        )
        methods.append(
            Method(name, recipe, _overrides(entry.get("overrides"), f"{label}.overrides"))
        )
        budgets[name] = (
            Budget.from_dict(entry["budget"], f"{label}.budget")
            if entry.get("budget") is not None
            else None
        )
    return methods, budgets


def load_grid(path: str | Path, out: str | Path | None = None) -> GridSpec:
    """Read and check a grid file (``out`` replaces the file's ``out:``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {str(path)!r} does not exist")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (
        OmegaConfBaseException,
        yaml.YAMLError,
        ValueError,
        TypeError,
    ) as err:  # YAML and interpolation errors
        raise ValueError(f"grid file {str(path)!r} cannot be read: {err}") from err
    return parse_grid(raw, path, out)
