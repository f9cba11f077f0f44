"""ComputeBudget stops at the budget, with hand-computed step counts, and evaluates where it stops."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dflow.ablate.budget import ComputeBudget
from dflow.ablate.record import RunRecorder
from dflow.rl.update import Compute


class CountingModule(L.LightningModule):
    """Stands in for an RLModule: every step costs 3 forward + 1 backward passes per sample over
    2 samples of 5 tokens, so per step forward=6, backward=2, fwd_equiv=6+2*2=10, tokens=(6+2)*5=40.
    """

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.compute = Compute()
        self.eval_history: list[dict] = []
        self.rl_steps = 0

    def training_step(self, batch, batch_idx):
        self.compute.add(forward=6, backward=2, tokens_per_pass=5)
        self.optimizers().step()  # counts as a step for global_step / max_steps, like an RLModule's
        self.rl_steps += 1
        self.log("train/reward", 0.1 * self.rl_steps, on_step=True)
        self.log("train/kl", 0.01 * self.rl_steps, on_step=True)

    def run_evaluation(self):
        metrics = {
            "eval/acc_overall": min(1.0, 0.25 * self.rl_steps),
            "compute/fwd_equiv": float(self.compute.fwd_equiv),
            "compute/tokens": float(self.compute.tokens),
            "compute/forward": float(self.compute.forward),
        }
        self.eval_history.append({"step": self.global_step, "rl_step": self.rl_steps, **metrics})
        return metrics

    def train_dataloader(self):
        return DataLoader(torch.zeros(1000, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(module, *callbacks, max_steps=-1):
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize(
    ("unit", "per_step", "budget"),
    [
        ("fwd_equiv", 10, 35),  # ceil(35 / 10) = 4 steps, 40 used
        ("fwd_equiv", 10, 40),  # exactly 4 steps: the step that reaches the budget is the last
        ("fwd_equiv", 10, 3),  # less than one step: one step
        ("tokens", 40, 100),  # ceil(100 / 40) = 3 steps, 120 tokens
        ("forward", 6, 25),  # ceil(25 / 6) = 5 steps, 30 forward passes
    ],
)
def test_stops_after_ceil_budget_over_step_cost(unit, per_step, budget):
    module = CountingModule()
    callback = ComputeBudget(unit, budget)
    _fit(module, callback)
    steps = math.ceil(budget / per_step)
    assert module.rl_steps == steps
    assert callback.used == getattr(module.compute, unit) == steps * per_step
    assert callback.reached
    # evaluated before the first step and exactly where it stopped
    assert [e["rl_step"] for e in module.eval_history] == [0, steps]
    assert module.eval_history[-1][f"compute/{unit}"] == steps * per_step


def test_eval_every_evaluates_at_compute_crossings_and_recorder_keeps_global_compute(tmp_path):
    module = CountingModule()
    budget = ComputeBudget("fwd_equiv", 55, eval_every=25)  # steps cost 10: crossings of 25 and 50 at steps 3 and 5
    seen = []
    recorder = RunRecorder(tmp_path / "progress.json", "fwd_equiv", 55, on_step=seen.append)
    _fit(module, budget, recorder)
    assert module.rl_steps == 6  # ceil(55 / 10)
    assert [e["rl_step"] for e in module.eval_history] == [0, 3, 5, 6]
    assert [r["compute/fwd_equiv"] for r in recorder.eval_history] == [0.0, 30.0, 50.0, 60.0]
    assert [r["step"] for r in recorder.train_history] == [1, 2, 3, 4, 5, 6]
    assert [r["compute/tokens"] for r in recorder.train_history] == [40.0 * k for k in range(1, 7)]
    assert recorder.train_history[-1]["train/kl"] == pytest.approx(0.06)
    assert recorder.eval_history[-1]["eval/acc_overall"] == 1.0
    assert seen == [10.0 * k for k in range(1, 7)]
    assert (tmp_path / "progress.json").is_file()


def test_final_evaluation_when_max_steps_ends_the_run_first():
    module = CountingModule()
    callback = ComputeBudget("fwd_equiv", 1000)
    _fit(module, callback, max_steps=2)
    assert not callback.reached and callback.used == 20
    assert [e["rl_step"] for e in module.eval_history] == [0, 2]


def test_no_second_evaluation_when_the_module_already_evaluated_at_the_end():
    class EvalsItself(CountingModule):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            self.run_evaluation()  # like an RLModule with evaluation.every_n_steps: 1

    module = EvalsItself()
    _fit(module, ComputeBudget("fwd_equiv", 20))
    assert [e["rl_step"] for e in module.eval_history] == [0, 1, 2]


def test_bad_unit_and_a_module_without_accounting_fail_before_training():
    with pytest.raises(ValueError, match="budget unit='flops'"):
        ComputeBudget("flops", 10)
    with pytest.raises(ValueError, match="budget value must be a number > 0"):
        ComputeBudget("tokens", -1)

    class NoAccounting(CountingModule):
        def __init__(self):
            super().__init__()
            del self.compute

    module = NoAccounting()
    with pytest.raises(ValueError, match="NoAccounting has no compute accounting in unit 'tokens'"):
        _fit(module, ComputeBudget("tokens", 10))
    assert module.rl_steps == 0
