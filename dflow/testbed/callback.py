"""A Lightning callback that scores an RL run exactly on the testbed, for recipes and studies.

In a recipe (any RL method on a :class:`~dflow.testbed.TestbedTask`)::

    trainer:
      callbacks:
        - class_path: dflow.testbed.ExactEvaluationCallback
          init_args: {every_n_steps: 10, splits: [rl, test]}

Every ``every_n_steps`` RL steps (and before the first, and after the last) it computes the policy's
exact final-sample distribution on each split's prompts and logs ``exact/<split>/reward``,
``exact/<split>/frac_opt``, ``exact/<split>/p_opt``, ``exact/<split>/kl`` (to the base) and
``exact/<split>/entropy``, with the run's compute so far (``compute/fwd_equiv``). The rows are also kept
in :attr:`ExactEvaluationCallback.history` for scripts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L

from dflow.tasks.base import check_split
from dflow.testbed.evaluate import ExactEvaluator
from dflow.testbed.states import MAX_STATES

_NEEDS = ("task", "denoiser", "eval_sampler", "rollout_sampler", "rewards")


class ExactEvaluationCallback(L.Callback):
    """Exact expected reward, KL to the base and probability of the optimum of an ``RLModule``'s policy.

    The base of the KL is the module's frozen reference when it has one (the initial policy), else the
    policy as it is when training starts (so a resumed run without a reference measures the KL from
    where it resumed).

    Args:
        every_n_steps: evaluate after every this many RL steps.
        splits: prompt splits to score (``"rl"``: what RL trains on; ``"test"``: held out).
        sampler: ``"evaluation"`` (the module's evaluation sampler, comparable across methods) or
            ``"rollout"`` (the distribution RL actually samples from).
        max_states: the state-space limit of the exact DP.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        splits: Sequence[str] = ("rl", "test"),
        sampler: Literal["evaluation", "rollout"] = "evaluation",
        max_states: int = MAX_STATES,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"ExactEvaluationCallback: every_n_steps must be an int >= 1, got {every_n_steps!r}")
        if sampler not in ("evaluation", "rollout"):
            raise ValueError(f"ExactEvaluationCallback: sampler must be 'evaluation' or 'rollout', got {sampler!r}")
        self.every_n_steps = every_n_steps
        self.splits = [check_split(s) for s in splits]
        self.sampler = sampler
        self.max_states = max_states
        self.evaluators: dict[str, ExactEvaluator] = {}
        self.history: list[dict[str, float]] = []
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        missing = [name for name in _NEEDS if getattr(pl_module, name, None) is None]
        if missing:
            raise ValueError(
                f"ExactEvaluationCallback needs an RLModule with a task and a denoiser; {type(pl_module).__name__} "
                f"has no {missing}"
            )
        module: Any = pl_module
        sampler = module.eval_sampler if self.sampler == "evaluation" else module.rollout_sampler
        reference = getattr(module, "reference", None)
        base = reference if reference is not None else module.denoiser
        was_training = module.denoiser.training
        module.denoiser.eval()
        self.evaluators = {
            split: ExactEvaluator(
                module.task, sampler, module.task.prompts(split), module.rewards, base, self.max_states
            )
            for split in self.splits
        }
        module.denoiser.train(was_training)
        self._evaluate(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if _rl_steps(pl_module) % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: L.Trainer, module: Any) -> None:
        step = _rl_steps(module)
        if step == self._last_step or not self.evaluators:
            return
        self._last_step = step
        tic = time.perf_counter()
        was_training = module.denoiser.training
        module.denoiser.eval()
        row: dict[str, float] = {"rl_step": float(step)}
        for split, evaluator in self.evaluators.items():
            for name, value in evaluator(module.denoiser).summary().items():
                row[f"exact/{split}/{name}"] = value
        module.denoiser.train(was_training)
        compute = getattr(module, "compute", None)
        if compute is not None:
            row["compute/fwd_equiv"] = float(compute.fwd_equiv)
        row["time/exact_eval"] = time.perf_counter() - tic
        self.history.append(row)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(row, step=trainer.global_step)


def _rl_steps(module: Any) -> int:
    """RL steps trained so far (``RLModule.rl_steps``; the trainer's global step otherwise)."""
    steps = getattr(module, "rl_steps", None)
    return int(steps) if steps is not None else int(module.global_step)
