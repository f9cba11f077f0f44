"""Reward configuration for recipes: which rewards, with which weights."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from dflow.rewards.base import TaskReward, WeightedRewards, load_reward
from dflow.tasks.base import Task


@dataclass
class RewardSpec:
    """One reward term of a recipe.

    Attributes:
        source: ``"task"`` (the task's partial-credit reward), ``"task:correct"`` (its strict 0/1
            correctness) or a dotted path ``"package.module:callable"`` to any ``(x1, prompts) -> [B]``.
        weight: its weight in the total reward.
        name: log name (defaults to the reward's own name).
        arguments: constructor arguments when ``source`` names a class (``"mymod:LengthReward"``
            with ``arguments: {target: 12}`` builds ``LengthReward(target=12)``, and the instance is
            the reward). A class named without ``arguments`` is built with none. (Not ``init_args``:
            the recipe parser reads that key as a class's own arguments.)
    """

    source: str = "task"
    weight: float = 1.0
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    def build(self, task: Task):
        if self.arguments and self.source.startswith("task"):
            raise ValueError(
                f"RewardSpec: arguments={dict(self.arguments)} given for source={self.source!r}; the task's reward "
                "takes none (configure the task instead), so drop arguments"
            )
        if self.source == "task":
            return TaskReward(task, "reward", self.name)
        if self.source == "task:correct":
            return TaskReward(task, "correct", self.name)
        if self.source.startswith("task:"):  # else load_reward would try to import a module "task"
            raise ValueError(
                f"RewardSpec: unknown source={self.source!r}; use 'task', 'task:correct' or 'package.module:callable'"
            )
        fn = load_reward(self.source)
        if inspect.isclass(fn):
            try:
                fn = fn(**dict(self.arguments or {}))
            except Exception as err:
                raise ValueError(
                    f"RewardSpec: building {self.source!r} with arguments={dict(self.arguments or {})} failed "
                    f"({type(err).__name__}: {err}); give the arguments its constructor takes"
                ) from err
            if not callable(fn):
                raise ValueError(f"RewardSpec: {self.source!r} built a {type(fn).__name__}, not a callable reward")
        elif self.arguments:
            raise ValueError(
                f"RewardSpec: arguments={dict(self.arguments)} given for {self.source!r}, which is a function, not a "
                "class; drop arguments, or name a class whose instances are the reward"
            )
        if self.name is not None:
            fn = _Named(fn, self.name)
        return fn


class _Named:
    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, x1, prompts):
        return self.fn(x1, prompts)


def build_rewards(specs: list[RewardSpec] | None, task: Task) -> WeightedRewards:
    specs = specs or [RewardSpec()]
    return WeightedRewards([s.build(task) for s in specs], [s.weight for s in specs])
