"""Typed records that group :class:`~dflow.lightning.RLModule`'s settings into the blocks a recipe
shows (as litgpt and torchtune configs do): how rollouts are drawn, how the policy is optimised,
how it is evaluated, and what a faulty step does. Each validates its fields on construction and
names the field in its message (``evaluation.samples_per_prompt must be >= 1, ...``).

In a recipe::

    model:
      class_path: dflow.lightning.RLModule
      init_args:
        ...
        rollout: {num_steps: 10, group_size: 8}
        optim: {lr: 2.0e-4, max_grad_norm: 1.0}
        evaluation: {num_steps: 20, every_n_steps: 20, samples_per_category: 64}
        faults: {on_bad_reward: skip}

and on the command line ``--model.init_args.optim.lr=1e-4``. ``rollout`` and ``evaluation`` take an
optional ``block`` setting (:class:`~dflow.sampling.BlockConfig`: ``block_len`` and a ``class_path``
kernel), each its own, which makes that sampler a :class:`~dflow.sampling.BlockSampler` with
``num_steps`` steps per block (docs/block_sampling.md, "From a recipe").
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypeVar

import torch

from dflow.lightning.schedules import check_schedule
from dflow.sampling import BlockConfig, ConfidenceUnmaskKernel, EntropyBoundKernel, PathKernel, SamplerConfig


@dataclass
class RolloutConfig(SamplerConfig):
    """The rollout sampler (the :class:`~dflow.sampling.SamplerConfig` fields) and the groups it draws.

    Attributes:
        group_size: ``G`` rollouts per prompt (a group never splits across devices or mini-batches).
        seed_per_prompt: roll out each prompt's group with its own generator seeded by
            ``(seed, step, prompt index)``, so results do not depend on how prompts are split over
            devices (slower on CPU: batches of ``G``); used to check DDP against one process.
    """

    group_size: int = 8
    seed_per_prompt: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _int_at_least("rollout.group_size", self.group_size, 1)


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule, clipping and the inner loop.

    Attributes:
        lr / weight_decay: AdamW's.
        warmup_steps / min_lr_ratio / decay_steps: optional schedule over RL steps: linear warm-up to
            ``lr``, then a half cosine down to ``min_lr_ratio * lr`` at ``decay_steps`` (default
            ``trainer.max_steps``). The defaults (0, 1.0) keep ``lr`` constant; logged as ``train/lr``.
        max_grad_norm: clip the gradient norm before every optimiser step (None: no clipping; the
            norm is still checked for non-finite values).
        num_inner_epochs / minibatch_size: passes over the batch and samples per optimiser step
            (None = the whole batch: strictly on-policy, one step per rollout batch).
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    decay_steps: int | None = None
    max_grad_norm: float | None = 1.0
    num_inner_epochs: int = 1
    minibatch_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got lr={self.lr!r}")
        check_schedule(self.warmup_steps, self.min_lr_ratio, self.decay_steps)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(
                f"optim.max_grad_norm must be > 0 or null (no clipping), got max_grad_norm={self.max_grad_norm!r}"
            )
        _int_at_least("optim.num_inner_epochs", self.num_inner_epochs, 1)
        if self.minibatch_size is not None:
            _int_at_least("optim.minibatch_size", self.minibatch_size, 1)


@dataclass
class EvalConfig(SamplerConfig):
    """The evaluation sampler (the :class:`~dflow.sampling.SamplerConfig` fields, 25 steps by default)
    and what it is run on. Shared by every recipe of a task, so their numbers are comparable.

    Attributes:
        every_n_steps: evaluate before training, every this many RL steps and at the end (0: never).
        num_prompts: the first this many test prompts (None: all).
        samples_per_prompt: samples per test prompt (GenEval draws 4; the small categories of the
            shapes test split have 1-6 prompts, so 1 sample is a coin flip).
        samples_per_category: instead, exactly this many samples in every category (its test
            prompts cycled): equal precision per category for the category mean.
        batch_size: samples per batch (the noise depends on it, as in ``dflow sample``).
        num_grid_prompts: prompts in the sample grid written at each evaluation.
    """

    num_steps: int = 25
    every_n_steps: int = 10
    num_prompts: int | None = None
    samples_per_prompt: int = 4
    samples_per_category: int | None = None
    batch_size: int = 64
    num_grid_prompts: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        _int_at_least("evaluation.every_n_steps", self.every_n_steps, 0)
        if self.num_prompts is not None:
            _int_at_least("evaluation.num_prompts", self.num_prompts, 1)
        _int_at_least("evaluation.samples_per_prompt", self.samples_per_prompt, 1)
        if self.samples_per_category is not None:
            _int_at_least("evaluation.samples_per_category", self.samples_per_category, 1, "or null")
        _int_at_least("evaluation.batch_size", self.batch_size, 1)
        _int_at_least("evaluation.num_grid_prompts", self.num_grid_prompts, 0)

    def sampler(self) -> SamplerConfig:
        """The sampler settings alone (what a model folder records and ``dflow sample`` reads)."""
        return SamplerConfig(**{f.name: getattr(self, f.name) for f in fields(SamplerConfig)})


@dataclass
class FaultPolicy:
    """What a step whose reward or gradient is not finite does.

    Attributes:
        on_bad_reward: ``"skip"`` the step (and count it) or ``"stop"`` the run when a reward raises or
            returns NaN / inf / a wrong shape.
        max_consecutive: stop after this many skipped steps in a row.
    """

    on_bad_reward: Literal["skip", "stop"] = "stop"
    max_consecutive: int = 5

    def __post_init__(self) -> None:
        if self.on_bad_reward not in ("skip", "stop"):
            raise ValueError(f"faults.on_bad_reward must be 'skip' or 'stop', got on_bad_reward={self.on_bad_reward!r}")
        _int_at_least("faults.max_consecutive", self.max_consecutive, 1)


R = TypeVar("R")


def as_record(cls: type[R], value: Any, name: str) -> R:
    """``value`` as a new ``cls`` record: None gives the defaults, a record is copied, a mapping (a
    config or a checkpoint's hyperparameters) gives its fields; an unknown key is refused with the
    list of valid ones."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return replace(value)  # type: ignore[type-var]  # a copy: a default instance in a signature is shared
    if isinstance(value, SamplerConfig) and issubclass(cls, SamplerConfig):
        value = {f.name: getattr(value, f.name) for f in fields(SamplerConfig)}  # a plain sampler config
    if not hasattr(value, "keys"):
        raise TypeError(f"{name} must be a {cls.__name__} or a mapping of its fields, got {value!r}")
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(value.keys()) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; {cls.__name__} has {valid}")
    return cls(**dict(value))


def _int_at_least(name: str, value: Any, low: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        field = name.rpartition(".")[2]
        raise ValueError(f"{name} must be an int >= {low}{' ' + extra if extra else ''}, got {field}={value!r}")


# RLModule's settings blocks: its argument name -> record
RECORDS: dict[str, type] = {
    "rollout": RolloutConfig,
    "optim": OptimConfig,
    "evaluation": EvalConfig,
    "faults": FaultPolicy,
}

# RLModule's flat arguments before the records (session 7) -> where each one lives now
MOVED = {
    "group_size": "rollout.group_size",
    "seed_rollouts_per_prompt": "rollout.seed_per_prompt",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "warmup_steps": "optim.warmup_steps",
    "min_lr_ratio": "optim.min_lr_ratio",
    "decay_steps": "optim.decay_steps",
    "max_grad_norm": "optim.max_grad_norm",
    "num_inner_epochs": "optim.num_inner_epochs",
    "minibatch_size": "optim.minibatch_size",
    "eval_every_n_steps": "evaluation.every_n_steps",
    "num_eval_prompts": "evaluation.num_prompts",
    "eval_samples_per_prompt": "evaluation.samples_per_prompt",
    "eval_samples_per_category": "evaluation.samples_per_category",
    "eval_batch_size": "evaluation.batch_size",
    "num_grid_prompts": "evaluation.num_grid_prompts",
    "on_bad_reward": "faults.on_bad_reward",
    "max_consecutive_faults": "faults.max_consecutive",
}


def check_removed_arguments(given: dict[str, Any]) -> None:
    """Refuse arguments RLModule does not take, saying where a moved one lives now."""
    if not given:
        return
    lines = [f"{k} -> {MOVED[k]}" if k in MOVED else f"{k} (no such argument)" for k in sorted(given)]
    raise TypeError(
        "RLModule: unexpected argument(s): " + "; ".join(lines) + ". Its settings are grouped in records: "
        "rollout (RolloutConfig), optim (OptimConfig), evaluation (EvalConfig), faults (FaultPolicy); "
        "in YAML `optim: {lr: 1.0e-4}`, on the command line --model.init_args.optim.lr=1e-4"
    )


def allow_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read ``RLModule``'s hyperparameters: its records (and the
    :class:`~dflow.lightning.rewards.RewardSpec` list) are plain data. Lightning loads a checkpoint that
    way under ``ModelParallelStrategy``; without this, resuming an FSDP2 run fails with "Unsupported
    global: dflow.lightning.rl_config.RolloutConfig"."""
    from dflow.lightning.rewards import RewardSpec

    records: list[Any] = [SamplerConfig, RolloutConfig, OptimConfig, EvalConfig, FaultPolicy, RewardSpec, BlockConfig]
    kernels: list[Any] = [PathKernel, ConfidenceUnmaskKernel, EntropyBoundKernel]  # a block setting's (plain data)
    torch.serialization.add_safe_globals(records + kernels)


allow_in_checkpoints()
