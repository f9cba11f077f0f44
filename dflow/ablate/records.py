r"""Typed records of a ``dflow ablate`` grid: the compute :class:`Budget`, the :class:`Method`\s
compared, one :class:`Run` (method + overrides, with a stable id) and the whole :class:`GridSpec`.

They are built from a grid file by :func:`dflow.ablate.spec.parse_grid` and check their own values.
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

GRID_KEYS = ("name", "extends", "base", "methods", "grid", "overrides", "budget", "target_accuracy", "out")
METHOD_KEYS = ("recipe", "overrides", "budget")
BUDGET_KEYS = ("unit", "value", "eval_every")
# Counters of dflow.rl.update.Compute a budget may be stated in. `backward` alone is not offered:
# it ignores the rollouts, which are most of the work of a step.
BUDGET_UNITS = ("fwd_equiv", "tokens", "forward")
SEED_AXIS = "seed"
# what the `seed` axis sets: Lightning's global seed (weights, dropout) and the RLModule's own
# rollout generator. The data module's seed is left alone: every run of a grid sees the same prompts.
SEED_KEYS = ("seed_everything", "model.init_args.seed")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
            ``None``: only the recipe's ``evaluation.every_n_steps`` schedule, plus the final evaluation.
    """

    unit: str
    value: float
    eval_every: float | None = None

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ValueError(
                f"budget unit={self.unit!r} is not one of {BUDGET_UNITS}{nearest(str(self.unit), BUDGET_UNITS)}"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not self.value > 0:
            raise ValueError(f"budget value must be a number > 0, got value={self.value!r}")
        if self.eval_every is not None and (
            isinstance(self.eval_every, bool)
            or not isinstance(self.eval_every, (int, float))
            or not self.eval_every > 0
        ):
            raise ValueError(f"budget eval_every must be a number > 0 or null, got eval_every={self.eval_every!r}")

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
        runs: list[Run] = []
        seen: dict[str, dict[str, Any]] = {}  # run id -> the axes that made it
        for method in self.methods:
            for values in itertools.product(*(self.axes[k] for k in keys)):
                axes = dict(zip(keys, values, strict=True))
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
            "methods": {m.name: {"recipe": str(m.recipe), "overrides": m.overrides} for m in self.methods},
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
