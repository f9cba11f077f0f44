"""``ComputeBudget``: end an RL run once it has used a fixed amount of compute, evaluated there.

Equal-compute comparisons need every run to stop at the same cost, whatever one step of its method
costs, and to report its accuracy at that point::

    trainer = L.Trainer(max_steps=-1, callbacks=[ComputeBudget("fwd_equiv", 20_000, eval_every=2_000)])

The count is the RLModule's :class:`~dflow.rl.update.Compute` (``forward``, ``tokens``,
``fwd_equiv`` = forward + 2 x backward passes per sample), summed over all devices. The run stops
at the end of the first step whose cumulative count reaches the budget: with ``c`` per step that is
step ``ceil(budget / c)``, so a run overshoots by less than one step (the result records the count
actually used).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dflow.ablate.spec import Budget

if TYPE_CHECKING:
    from dflow.lightning.rl_module import RLModule

COMPUTE_FIELDS = ("forward", "backward", "tokens", "fwd_equiv")


def global_compute(trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
    """The module's compute counters summed over all processes (a collective: call it on every rank).

    float64 holds counts exactly up to 2**53, far above any token count a run reaches.
    """
    c = module.compute
    local = torch.tensor([float(getattr(c, k)) for k in COMPUTE_FIELDS], dtype=torch.float64, device=module.device)
    total = trainer.strategy.reduce(local, reduce_op="sum")
    return dict(zip(COMPUTE_FIELDS, total.cpu().tolist(), strict=True))


def check_accounting(module: L.LightningModule, unit: str) -> None:
    """``ValueError`` unless ``module`` counts compute in ``unit`` and can evaluate itself."""
    compute = getattr(module, "compute", None)
    missing = [a for a in ("run_evaluation", "eval_history") if not hasattr(module, a)]
    if compute is None or not hasattr(compute, unit) or missing:
        raise ValueError(
            f"{type(module).__name__} has no compute accounting in unit {unit!r} (needs an RLModule: "
            f"`compute.{unit}`, `run_evaluation()`, `eval_history`), so a compute budget cannot apply to it"
        )


def _rl_module(module: L.LightningModule) -> RLModule:
    """``module`` typed as what :func:`check_accounting` found it to be at set-up (the hooks get a LightningModule)."""
    return cast("RLModule", module)


class ComputeBudget(Callback):
    """Stop training once ``module.compute.<unit>`` (summed over devices) reaches ``value``.

    Also makes sure the run is evaluated before its first step (compute 0) and at the compute it
    stopped at (also when it ends for another reason, such as ``max_steps``), and, with
    ``eval_every``, each time the count crosses a multiple of ``eval_every``, so methods whose steps
    cost different amounts are evaluated at the same compute points.

    Args:
        unit: ``"fwd_equiv"``, ``"tokens"`` or ``"forward"``.
        value: the budget, in ``unit``.
        eval_every: evaluation interval in ``unit``, or ``None``.

    Attributes:
        used: the count at the end of the last step (all devices).
        reached: whether the budget stopped the run.
    """

    def __init__(self, unit: str, value: float, eval_every: float | None = None) -> None:
        budget = Budget(unit, value, eval_every)  # validates: ValueError naming the bad field
        self.unit, self.value, self.eval_every = budget.unit, budget.value, budget.eval_every
        self.used = 0.0
        self.reached = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_accounting(pl_module, self.unit)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = _rl_module(pl_module)
        if not module.eval_history:
            module.run_evaluation()  # compute 0: where every accuracy-vs-compute curve starts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before, self.used = self.used, global_compute(trainer, pl_module)[self.unit]
        crossed = self.eval_every is not None and math.floor(self.used / self.eval_every) > math.floor(
            before / self.eval_every
        )
        if crossed and not self.evaluated_now(pl_module):
            pl_module.run_evaluation()
        if self.used >= self.value:
            self.reached = True
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.evaluated_now(pl_module):
            _rl_module(pl_module).run_evaluation()

    def evaluated_now(self, pl_module: L.LightningModule) -> bool:
        """Was the last evaluation made at the module's current compute (nothing trained since)?"""
        history = _rl_module(pl_module).eval_history
        if not history:
            return False
        return history[-1].get(f"compute/{self.unit}") == float(getattr(pl_module.compute, self.unit))

    def state_dict(self) -> dict[str, float | bool]:
        return {"used": self.used, "reached": self.reached}

    def load_state_dict(self, state_dict: dict[str, float | bool]) -> None:
        self.used = float(state_dict.get("used", 0.0))
        self.reached = bool(state_dict.get("reached", False))
