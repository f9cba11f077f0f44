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

A grid may start from another with ``extends: other.yaml`` (a path relative to the grid file, else
as written): it inherits that grid's methods, axes, overrides, budget and target; every key it sets
replaces the inherited one, except ``overrides``, which are merged key by key (its own win). ``name``
and ``out`` are never inherited, so a probe never writes into the grid it extends.

Every run gets the id ``<method>-<10 hex digits>``: a hash of the method name and every override
that says *what* is run (method, grid-wide and axis overrides). The same grid gives the same ids
on every machine, which is what lets an interrupted grid resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dflow.ablate.records import (  # noqa: F401  (re-exported: the records are part of the spec API)
    BUDGET_KEYS,
    BUDGET_UNITS,
    GRID_KEYS,
    METHOD_KEYS,
    NAME_PATTERN,
    SEED_AXIS,
    SEED_KEYS,
    Budget,
    GridSpec,
    Method,
    Run,
    encode_value,
    make_run_id,
    nearest,
)


def find_recipe(recipe: Any, grid_dir: Path | None, where: str) -> Path:
    """A recipe path as written: absolute, relative to the working directory, or to the grid file."""
    if not isinstance(recipe, str) or not recipe:
        raise ValueError(f"{where}: recipe must be a path to a YAML recipe, got {recipe!r}")
    given = Path(recipe).expanduser()
    candidates = [given] if given.is_absolute() else [given, *([grid_dir / given] if grid_dir else [])]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"{where}: recipe {recipe!r} not found (tried {', '.join(str(c) for c in candidates)})")


def _overrides(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of dotted keys to values, got {raw!r}")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise ValueError(f"{where}: override key {key!r} must be a dotted key such as 'model.init_args.optim.lr'")
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
        raise ValueError(f"{where}: a grid file is a mapping with keys {GRID_KEYS}, got {type(raw).__name__}")
    for key in raw:
        if key not in GRID_KEYS:
            raise ValueError(
                f"{where}: unknown key {key!r} (keys: {', '.join(GRID_KEYS)}){nearest(str(key), GRID_KEYS)}"
            )
    if raw.get("extends") is not None:
        raise ValueError(f"{where}: extends is followed when a grid file is read: use load_grid(path)")
    grid_dir = source.parent if source else None
    base = find_recipe(raw["base"], grid_dir, f"{where}: base") if raw.get("base") is not None else None
    methods, budgets = _methods(raw.get("methods"), base, grid_dir, where)

    # one budget for the whole grid: the grid's own, else the one every method states identically
    grid_budget = Budget.from_dict(raw["budget"], f"{where}: budget") if raw.get("budget") is not None else None
    stated = {name: b for name, b in budgets.items() if b is not None}
    if grid_budget is None and not stated:
        raise ValueError(f"{where}: no budget: add `budget: {{unit: fwd_equiv, value: N}}` (units: {BUDGET_UNITS})")
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
        raise ValueError(f"{where}: grid must be a mapping of axis key -> list of values, got {axes!r}")
    for key, values in axes.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise ValueError(f"{where}: grid axis {key!r} must be a dotted key (or 'seed')")
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"{where}: grid axis {key!r} must be a non-empty list of values, got {values!r} "
                f"(a single value for every run goes under `overrides:`)"
            )
    if SEED_AXIS in axes and not all(isinstance(s, int) and not isinstance(s, bool) for s in axes[SEED_AXIS]):
        raise ValueError(f"{where}: grid axis 'seed' must list ints, got {axes[SEED_AXIS]!r}")

    target = raw.get("target_accuracy", 0.9)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"{where}: target_accuracy must be in (0, 1], got {target!r}")
    name = raw.get("name") or (source.stem if source else "grid")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
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
            raise ValueError(f"{where}: give `base: <recipe.yaml>` or `methods: {{name: <recipe.yaml>, ...}}`")
        return [Method(base.stem, base)], {base.stem: None}
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: methods must be a non-empty mapping name -> recipe path or {{recipe, overrides}}")
    methods, budgets = [], {}
    for name, entry in raw.items():
        label = f"{where}: methods.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"{label}: a method name must be letters, digits, '_', '-' or '.' (it names directories)")
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{label} must be a recipe path or a mapping with keys {METHOD_KEYS}, got {entry!r}")
        for key in entry:
            if key not in METHOD_KEYS:
                raise ValueError(f"{label}: unknown key {key!r} (keys: {METHOD_KEYS}){nearest(str(key), METHOD_KEYS)}")
        if entry.get("recipe") is not None:
            recipe = find_recipe(entry["recipe"], grid_dir, label)
        elif base is not None:
            recipe = base
        else:
            raise ValueError(f"{label} names no recipe and the grid has no `base:` recipe")
        methods.append(Method(name, recipe, _overrides(entry.get("overrides"), f"{label}.overrides")))
        budgets[name] = (
            Budget.from_dict(entry["budget"], f"{label}.budget") if entry.get("budget") is not None else None
        )
    return methods, budgets


def load_grid(path: str | Path, out: str | Path | None = None) -> GridSpec:
    """Read and check a grid file (``out`` replaces the file's ``out:``), following ``extends:``."""
    path = Path(path)
    return parse_grid(_load_raw(path, chain=()), path, out)


def _read_mapping(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (
        OmegaConfBaseException,
        yaml.YAMLError,
        ValueError,
        TypeError,
    ) as err:  # YAML and interpolation errors
        raise ValueError(f"grid file {str(path)!r} cannot be read: {err}") from err


def _load_raw(path: Path, chain: tuple[Path, ...]) -> Any:
    """The grid's mapping with its ``extends:`` parents merged in (see the module docstring)."""
    if not path.is_file():
        raise ValueError(f"grid file {str(path)!r} does not exist")
    raw = _read_mapping(path)
    if not isinstance(raw, dict) or raw.get("extends") is None:
        return raw
    parent_ref = raw.pop("extends")
    if not isinstance(parent_ref, str) or not parent_ref:
        raise ValueError(f"{path}: extends must be the path of another grid file, got {parent_ref!r}")
    given = Path(parent_ref).expanduser()
    candidates = [given] if given.is_absolute() else [path.parent / given, given]
    parent_path = next((c for c in candidates if c.is_file()), None)
    if parent_path is None:
        tried = ", ".join(str(c) for c in candidates)
        raise ValueError(f"{path}: extends {parent_ref!r} does not exist (tried {tried}); name the grid to start from")
    here = (*chain, path.resolve())
    if parent_path.resolve() in here:
        loop = " -> ".join(str(p) for p in (*here, parent_path.resolve()))
        raise ValueError(f"{path}: extends makes a loop ({loop}); a grid cannot extend itself")
    parent = _load_raw(parent_path, here)
    if not isinstance(parent, dict):
        raise ValueError(f"{parent_path} (extended by {path}): a grid file is a mapping, got {type(parent).__name__}")
    merged = {k: v for k, v in parent.items() if k not in ("name", "out")}
    _anchor_recipes(merged, parent_path.parent)  # the parent's relative recipe paths mean its own folder
    for key, value in raw.items():
        if key == "overrides" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _anchor_recipes(raw: dict[str, Any], grid_dir: Path) -> None:
    """Rewrite an inherited grid's recipe paths so they resolve from the extending grid too."""

    def anchored(recipe: Any) -> Any:
        try:  # the parent's own lookup: as written, then its folder
            return str(find_recipe(recipe, grid_dir, "extends"))
        except ValueError:
            return recipe  # parse_grid names it, with the extending grid's context

    if raw.get("base") is not None:
        raw["base"] = anchored(raw["base"])
    methods = raw.get("methods")
    if not isinstance(methods, dict):
        return
    for name, entry in methods.items():
        if isinstance(entry, str):
            methods[name] = anchored(entry)
        elif isinstance(entry, dict) and "recipe" in entry:
            methods[name] = {**entry, "recipe": anchored(entry["recipe"])}
