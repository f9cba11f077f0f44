"""Reward functions: the protocol, a task adapter, weighted sums, and loading by dotted path.

A reward maps clean samples and their prompts to one number per sample::

    reward = WeightedRewards([TaskReward(task), TaskReward(task, kind="correct")], [1.0, 0.5])
    record = reward(x1, prompts)      # record.total [B], record.components["shapes_reward"] [B]
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dflow.rewards.checked import CheckedReward, reward_name

if TYPE_CHECKING:
    from dflow.tasks.base import Prompt, Task

REWARD_KINDS = ("reward", "correct")


@runtime_checkable
class Reward(Protocol):
    """``R(x_1, c)``: float ``[B]`` for samples ``x1`` long ``[B, L]`` and their ``B`` prompts."""

    name: str

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor: ...


class TaskReward:
    """A task's verifier as a reward.

    Args:
        task: the task whose verifier is used.
        kind: ``"reward"`` (the task's partial-credit training reward in ``[0, 1]``) or
            ``"correct"`` (its strict correctness as 0.0 / 1.0).
        name: the name used in logs; defaults to ``"<task.name>_<kind>"``.
    """

    def __init__(self, task: Task, kind: str = "reward", name: str | None = None) -> None:
        if kind not in REWARD_KINDS:
            raise ValueError(f"kind must be one of {REWARD_KINDS}, got {kind!r}")
        self.task = task
        self.kind = kind
        self.name = name if name is not None else f"{task.name}_{kind}"

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        if self.kind == "correct":
            return self.task.correct(x1, prompts).float()
        return self.task.reward(x1, prompts)


@dataclass
class RewardRecord:
    """Output of ``WeightedRewards``.

    Attributes:
        total: float ``[B]``, ``sum_k weight_k * component_k``.
        components: reward name -> float ``[B]``, each reward's unweighted value (for logging).
    """

    total: Tensor
    components: dict[str, Tensor]


class WeightedRewards:
    """Weighted sum of several rewards, ``total = sum_k w_k R_k(x1, c)``.

    Each component runs through ``CheckedReward``, so a failing or malformed reward raises a
    ``ValueError`` that names it and the prompt batch.

    Args:
        rewards: reward callables with distinct names (``name`` attribute, else ``__name__``).
        weights: one float per reward; ``None`` weighs every reward 1.
    """

    name = "weighted"

    def __init__(self, rewards: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        rewards = list(rewards)
        if not rewards:
            raise ValueError("rewards must contain at least one reward")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ValueError(f"weights has {len(weights)} entries for {len(rewards)} rewards")
        bad = [w for w in weights if not math.isfinite(w)]
        if bad:
            raise ValueError(f"reward weights must be finite numbers, got weights={weights}")
        if all(w == 0 for w in weights):
            raise ValueError(
                f"every reward weight is 0 (weights={weights}): the total reward is 0 for every sample and RL "
                "learns nothing; give at least one reward a non-zero weight"
            )
        names = [reward_name(r) for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be distinct, got {names}")
        self.rewards = [CheckedReward(r) for r in rewards]
        self.weights = weights
        self.names = names

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> RewardRecord:
        components = {name: reward(x1, prompts) for name, reward in zip(self.names, self.rewards, strict=True)}
        total = torch.zeros(len(prompts), dtype=torch.float32, device=x1.device)
        for w, value in zip(self.weights, components.values(), strict=True):
            total = total + w * value.to(total.device)
        return RewardRecord(total=total, components=components)


def load_reward(dotted_path: str) -> Any:
    """Import ``"package.module:attr"`` or ``"package.module.attr"`` and return the callable.

    The attribute part may be nested (``"pkg.mod:Cls.method"``, or ``"pkg.mod.Cls.method"``: in
    the dotted form the longest importable module prefix is the module). Raises ``ValueError``
    naming the path when the module cannot be imported, the attribute is missing, or the object
    is not callable.
    """
    if not isinstance(dotted_path, str) or not dotted_path.strip():
        raise ValueError(f"reward path must be a non-empty string, got {dotted_path!r}")
    if ":" in dotted_path:
        module_name, _, attr_path = dotted_path.partition(":")
        candidates = [(module_name, attr_path)]
    else:
        parts = dotted_path.split(".")
        candidates = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    if not candidates or not all(candidates[0]):
        raise ValueError(f"reward path {dotted_path!r} must look like 'package.module:attr' or 'package.module.attr'")
    obj: Any = None
    error: Exception | None = None
    for module_name, attr_path in candidates:  # noqa: B007 - both are read after the loop (the pair that imported)
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as err:
            # only "this very module does not exist" lets a shorter prefix be tried
            if err.name is None or not module_name.startswith(err.name):
                error = err
                break
            error = err
        except Exception as err:  # a module that exists but fails to import
            error = err
            break
    if obj is None:
        raise ValueError(f"reward path {dotted_path!r}: cannot import {module_name!r} ({error})") from error
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward path {dotted_path!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward path {dotted_path!r} names a {type(obj).__name__}, not a callable")
    return obj
