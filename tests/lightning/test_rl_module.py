"""RLModule end to end on a toy copy task (``tests/conftest.py``) and one real task.

- smoke: every method preset x {mask, uniform} source trains two RL steps, changes every trainable
  parameter and logs finite metrics;
- faults: bad rewards stop with a message naming the reward and the prompt, or skip the step with
  the weights bit-identical; non-finite losses / gradients skip the step with weights and optimiser
  state bit-identical; every fault is counted in the logs;
- configuration errors are clear ValueErrors;
- evaluation runs at the start and the end, writes PNG grids and logs accuracy and reward.
"""

from __future__ import annotations

import copy
import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch import nn

from dflow.lightning import EvalConfig, FaultPolicy, OptimConfig, RolloutConfig
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.paths import MixturePath
from dflow.paths.sources import MaskSource, UniformSource
from dflow.rewards import WeightedRewards
from dflow.rl import (
    EPG,
    PAR,
    PEPG,
    REINFORCE,
    AllButLast,
    BackwardStates,
    ClippedSurrogate,
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    GroupSoftmaxWeights,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    SampleSumAggregation,
    SandwichedBounds,
    SandwichedObjective,
    SpanLikelihood,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
    UnitMeanAggregation,
)
from dflow.sampling import SamplerConfig
from tests.conftest import rl_settings

pytestmark = pytest.mark.usefixtures("single_thread")

V, K, G, P = 3, 4, 4, 2  # copy task values, sampler steps, group size, prompts per RL step
B = G * P  # 8 rollouts per RL step

SOURCES = {"mask": lambda: MaskSource(V), "uniform": lambda: UniformSource(V)}


def _elbo(objective):
    # the ELBO paper's released advantage 0.1 (R - group mean), no std, no clip; gradients summed
    # over the timestep units (3 of 10 grid times here, 9 of 10 in the preset, to keep tests fast)
    return dict(
        likelihood=ELBOLikelihood(num_timesteps=3, grid_steps=10),
        objective=objective,
        advantage=GroupAdvantage(scale="none", coef=0.1, clip=None),
        aggregation=SampleSumAggregation(),
    )


# DESIGN.md section 5 presets, shrunk to K = 4 rollout steps
METHODS = {
    "dflow_grpo": lambda: dict(
        likelihood=TrajectoryLikelihood(AllButLast()),
        objective=ClippedSurrogate(1e-3, 1.5e-3),
        advantage=GroupAdvantage(scale="batch"),
    ),
    "udm_grpo": lambda: dict(
        likelihood=ForwardReconstruction(num_timesteps=3, grid_steps=10, max_start=2),
        objective=ClippedSurrogate(1e-4),
        advantage=GroupAdvantage(clip=5.0),
        kl=KLPenalty(0.05, "k3"),
    ),
    "elbo_epg": lambda: _elbo(EPG()),
    "elbo_pepg": lambda: _elbo(PEPG()),
    "elbo_par": lambda: _elbo(PAR()),
    "elbo_grpo": lambda: _elbo(ClippedSurrogate(1e-3)),
    "naive_grpo": lambda: dict(
        likelihood=IntermediateActionLikelihood(states=BackwardStates()),
        objective=ClippedSurrogate(1e-4),
        advantage=GroupAdvantage(),
    ),
    "stepwise": lambda: dict(
        likelihood=TrajectoryLikelihood(),
        objective=ClippedSurrogate(0.2),
        advantage=StepwiseGainAdvantage(),
    ),
    "diffu_grpo": lambda: dict(
        likelihood=MeanFieldLikelihood(p_mask_prompt=0.15),
        objective=ClippedSurrogate(0.5),
        advantage=GroupAdvantage(),
        kl=KLPenalty(0.04, "k3"),
    ),
    # SPG: ELBO for positive advantages, EUBO/ELBO mixture for negative ones, block masks (L = 4: 2 blocks)
    "spg": lambda: dict(
        likelihood=SandwichedBounds(num_draws=2, block_length=2, eubo_beta=1.5),
        objective=SandwichedObjective(0.5),
        advantage=GroupAdvantage(scale="none", clip=None),
        aggregation=SampleSumAggregation(),
    ),
    # coupled-GRPO (DiffuCoder): complementary pairs + the fully masked pass, one clipped unit per token
    "coupled_grpo": lambda: dict(
        likelihood=CoupledELBOLikelihood(full_noise=True, per_token=True),
        objective=ClippedSurrogate(0.5),
        advantage=GroupAdvantage(scale="none", coef=G / (G - 1), clip=None),  # leave-one-out baseline
        kl=KLPenalty(0.01, "k3"),
        aggregation=UnitMeanAggregation(),
    ),
    # wd1: group-softmax weights on the mean-field log-likelihood, no ratio
    "wd1": lambda: dict(
        likelihood=MeanFieldLikelihood(p_mask_prompt=0.15),
        objective=REINFORCE(),
        advantage=GroupSoftmaxWeights(),
    ),
    # TraceRL-style spans: 2 sampler steps per unit, one clipped unit per settled token
    "trace_spans": lambda: dict(
        likelihood=SpanLikelihood(span=2, per_token=True),
        objective=ClippedSurrogate(0.2),
        advantage=GroupAdvantage(),
    ),
}
# methods whose maths covers a mask source only (their estimator refuses any other, naming both)
MASK_ONLY = {"spg"}


def _module(builder, source, parts, **overrides) -> RLModule:
    kwargs = dict(
        rollout=SamplerConfig(num_steps=K),
        evaluation=SamplerConfig(num_steps=K),
        group_size=G,
        num_inner_epochs=2,
        minibatch_size=4,  # two prompt groups per optimiser step: 2 epochs x 2 mini-batches
        lr=1e-2,
        eval_every_n_steps=0,
    )
    kwargs.update(overrides)
    return RLModule(builder, MixturePath(source), **parts, **rl_settings(**kwargs))


def _trainer(tmp_path, logger=False, callbacks=None) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,  # one pass over the data module's batches = that many RL steps
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )


def _optimizer_steps(trainer: L.Trainer) -> int:
    """AdamW's step counter (0 when no step was taken)."""
    state = trainer.optimizers[0].state
    return int(max((s["step"] for s in state.values()), default=0))


def _finite_metrics(trainer: L.Trainer) -> dict[str, float]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics {bad}"
    return metrics


# ---------------------------------------------------------------- smoke: method x source


@pytest.mark.parametrize("source_name", list(SOURCES))
@pytest.mark.parametrize("method", list(METHODS))
def test_two_rl_steps_change_every_parameter(method, source_name, copy_task, tiny_builder, prompt_batches, tmp_path):
    if method in MASK_ONLY and source_name != "mask":
        with pytest.raises(ValueError, match="MaskSource.*UniformSource"):
            _module(tiny_builder, SOURCES[source_name](), METHODS[method]())
        return
    module = _module(tiny_builder, SOURCES[source_name](), METHODS[method]())
    module.attach_task(copy_task)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if p.requires_grad}
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))

    assert _optimizer_steps(trainer) == 2 * 2 * 2  # RL steps x inner epochs x mini-batches: no fault
    after = dict(module.denoiser.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, f"{method}/{source_name}: parameters not trained: {unchanged}"

    metrics = _finite_metrics(trainer)
    for key in (
        "train/reward",
        "train/ratio_mean",
        "train/ratio_min",
        "train/ratio_max",
        "train/clip_frac",
        "train/grad_norm",
        "adv/std",
        "compute/forward",
        "compute/backward",
    ):
        assert key in metrics, key
    assert metrics["adv/frac_zero_std_groups"] < 1.0  # the rewards did vary within a group
    assert ("train/kl" in metrics) == (module.kl.beta > 0)
    assert module.faults["bad_reward"] == module.faults["nonfinite_grad"] == 0


def test_compute_logs_of_dflow_grpo_by_hand(copy_task, tiny_builder, prompt_batches, tmp_path):
    """Per RL step, B = 8 rollouts, K = 4 steps, U = K - 1 = 3 trained steps:
    rollout 8 x 4 = 32 forward; old values recomputed at the mini-batch shape 8 x 3 = 24 forward;
    loss 2 epochs x 24 = 48 forward + 48 backward. Two RL steps: 2 x 104 = 208 forward, 96 backward;
    tokens = (208 + 96) x (L + Lc = 8) = 2432."""
    module = _module(tiny_builder, UniformSource(V), METHODS["dflow_grpo"]())
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))
    metrics = _finite_metrics(trainer)
    assert (metrics["compute/forward"], metrics["compute/backward"]) == (208.0, 96.0)
    assert metrics["compute/tokens"] == 2432.0
    assert metrics["compute/fwd_equiv"] == 208.0 + 2 * 96.0


def red_fraction(x1: torch.Tensor, prompts) -> torch.Tensor:
    """Fraction of red pixels: a reward that varies within a group from the first step (a random
    model's shapes reward is almost always 0, which gives no gradient)."""
    return (x1 == 1).float().mean(-1)


def test_real_task_smoke_shapes(tiny_builder, prompt_batches, tmp_path):
    """One UDM-GRPO step on the real shapes task (8x8 images, V = 7), with evaluation and PNG
    grids."""
    from dflow.tasks import ShapesTask

    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=2, test_prompts_per_category=1)
    module = _module(
        tiny_builder,
        UniformSource(task.vocab_size),
        METHODS["udm_grpo"](),
        rewards=[
            RewardSpec(source=f"{__name__}:red_fraction", name="red"),
            RewardSpec("task", weight=0.5),
        ],
        eval_every_n_steps=1,
        num_eval_prompts=4,
        num_grid_prompts=4,
    )
    module.attach_task(task)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters()}
    trainer = _trainer(tmp_path, logger=CSVLogger(tmp_path, name="shapes"))
    trainer.fit(module, datamodule=prompt_batches(task, num_batches=1, prompts_per_step=P))
    metrics = _finite_metrics(trainer)
    assert "reward/red" in metrics and "reward/shapes_reward" in metrics
    after = dict(module.denoiser.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in before.items())
    grids = sorted((tmp_path / "shapes" / "version_0" / "samples").glob("*.png"))
    assert len(grids) == 2  # before and after the step
    assert Image.open(grids[0]).size[0] > 8 * 8


# ---------------------------------------------------------------- bad rewards


class BadReward:
    """A reward that misbehaves in one way and remembers the prompts of its last call."""

    def __init__(self, kind: str, bad_calls: set[int] | None = None) -> None:
        self.kind, self.bad_calls, self.calls, self.prompts = kind, bad_calls, 0, None
        self.name = f"bad_{kind}"

    def __call__(self, x1, prompts):
        self.calls += 1
        self.prompts = list(prompts)
        good = torch.linspace(0.0, 1.0, len(prompts))  # varies within every group
        if self.bad_calls is not None and self.calls not in self.bad_calls:
            return good
        if self.kind == "nan":
            return good.index_fill(0, torch.tensor([3]), float("nan"))
        if self.kind == "inf":
            return good.index_fill(0, torch.tensor([5]), float("inf"))
        if self.kind == "shape":
            return good[:-1]
        raise RuntimeError("verifier crashed")

    def named_prompt(self) -> str:
        """The prompt the error message must name: the first non-finite one, else the first."""
        return self.prompts[{"nan": 3, "inf": 5}.get(self.kind, 0)].text


def nan_reward(x1, prompts):
    return torch.full((len(prompts),), float("nan"))


BAD_KINDS = ["nan", "inf", "shape", "raises"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_reward_stops_naming_the_reward_and_the_prompt(kind, copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), on_bad_reward="stop")
    module.attach_task(copy_task)
    reward = BadReward(kind)
    module.rewards = WeightedRewards([reward])
    with pytest.raises(ValueError) as info:
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))
    message = str(info.value)
    assert reward.name in message and repr(reward.named_prompt()) in message, message
    assert module.faults["bad_reward"] == 1


def test_bad_reward_loaded_from_a_dotted_path_stops(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        tiny_builder,
        MaskSource(V),
        METHODS["dflow_grpo"](),
        rewards=[RewardSpec(source=f"{__name__}:nan_reward")],
    )
    with pytest.raises(ValueError, match=r"nan_reward.*nan for prompt"):
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_reward_skips_the_step_with_weights_untouched(kind, copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        tiny_builder,
        UniformSource(V),
        METHODS["udm_grpo"](),
        on_bad_reward="skip",
        max_consecutive_faults=3,
    )
    module.attach_task(copy_task)
    module.rewards = WeightedRewards([BadReward(kind)])
    before = copy.deepcopy(module.denoiser.state_dict())
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))
    assert _optimizer_steps(trainer) == 0
    after = module.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert float(trainer.callback_metrics["faults/bad_reward"]) == 2.0
    assert module.faults["bad_reward"] == 2


def test_consecutive_bad_rewards_stop_with_a_clear_message(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        tiny_builder,
        UniformSource(V),
        METHODS["udm_grpo"](),
        on_bad_reward="skip",
        max_consecutive_faults=2,
    )
    module.attach_task(copy_task)
    module.rewards = WeightedRewards([BadReward("nan")])
    with pytest.raises(ValueError, match=r"2 faulty step\(s\) in a row \(bad_reward\).*bad_nan"):
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=4, prompts_per_step=P))
    assert module.faults["bad_reward"] == 2


def test_a_good_step_resets_the_consecutive_fault_count(copy_task, tiny_builder, prompt_batches, tmp_path):
    """bad, good, bad, good with max_consecutive_faults=2: never two in a row, so the run
    completes."""
    module = _module(
        tiny_builder,
        UniformSource(V),
        METHODS["udm_grpo"](),
        on_bad_reward="skip",
        max_consecutive_faults=2,
    )
    module.attach_task(copy_task)
    module.rewards = WeightedRewards([BadReward("nan", bad_calls={1, 3})])
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=4, prompts_per_step=P))
    assert module.faults["bad_reward"] == 2 and module.faults["consecutive"] == 0
    assert _optimizer_steps(trainer) == 2 * 4  # two good RL steps x (2 epochs x 2 mini-batches)


def test_skipped_steps_do_not_repeat_an_earlier_steps_metrics(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        tiny_builder, UniformSource(V), METHODS["udm_grpo"](), on_bad_reward="skip", max_consecutive_faults=2
    )
    module.attach_task(copy_task)
    module.rewards = WeightedRewards([BadReward("nan", bad_calls={2, 4})])  # steps 0, 2 train; 1, 3 are skipped
    trainer = _trainer(tmp_path, logger=CSVLogger(tmp_path, name="rl"))
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=4, prompts_per_step=2))
    with open(tmp_path / "rl" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    by_step: dict[int, dict[str, str]] = {}
    for row in rows:
        by_step.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if v != ""})
    trained = {s for s, r in by_step.items() if "train/reward" in r}
    assert trained == {0, 2}, sorted(by_step)
    for step in (1, 3):
        row = by_step.get(step, {})
        assert "faults/bad_reward" in row, (step, row)
        stale = sorted(k for k in row if k.startswith(("train/", "adv/", "reward")))
        assert not stale, f"skipped step {step} repeats {stale}"


# ---------------------------------------------------------------- non-finite losses and gradients


class Poisonable(nn.Module):
    """Wraps a denoiser; once poisoned, its passes WITH gradient (the update, not the rollout or the
    old / reference values) return NaN logits, or finite logits whose gradient is infinite."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.poison: str | None = None

    def forward(self, x_t, t, cond=None):
        out = self.inner(x_t, t, cond)
        if self.poison is None or not torch.is_grad_enabled():
            return out
        if self.poison == "nan_logits":
            return out * float("nan")
        out = out.clone()
        out.register_hook(lambda grad: grad * float("inf"))
        return out


class PoisonableBuilder:
    def __init__(self, inner_builder) -> None:
        self.inner_builder = inner_builder

    def build(self, task, path):
        return Poisonable(self.inner_builder.build(task, path))


class PoisonAt(L.Callback):
    """Before RL step ``at``: snapshot weights and optimiser state, then poison the denoiser."""

    def __init__(self, poison: str, at: int = 1) -> None:
        self.poison, self.at = poison, at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.at:
            self.weights = copy.deepcopy(module.denoiser.state_dict())
            self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
            module.denoiser.poison = self.poison


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("poison", ["nan_logits", "inf_grad"])
def test_nonfinite_update_skips_the_step_bit_identically(poison, copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        PoisonableBuilder(tiny_builder),
        MaskSource(V),
        METHODS["udm_grpo"](),
        max_consecutive_faults=3,
    )
    callback = PoisonAt(poison, at=1)
    trainer = _trainer(tmp_path, callbacks=[callback])
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))

    assert _optimizer_steps(trainer) == 4  # the good first RL step only
    assert callback.optimizer["state"], "the snapshot must hold a non-empty AdamW state"
    assert _same_state(callback.weights, module.denoiser.state_dict())
    assert _same_state(callback.optimizer, trainer.optimizers[0].state_dict())
    assert float(trainer.callback_metrics["faults/nonfinite_grad"]) == 1.0
    assert all(p.grad is None for p in module.denoiser.parameters())


def test_nonfinite_updates_in_a_row_stop(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        PoisonableBuilder(tiny_builder),
        UniformSource(V),
        METHODS["dflow_grpo"](),
        max_consecutive_faults=2,
    )
    with pytest.raises(ValueError, match=r"2 faulty step\(s\) in a row \(nonfinite_grad\)"):
        _trainer(tmp_path, callbacks=[PoisonAt("nan_logits", at=0)]).fit(
            module, datamodule=prompt_batches(copy_task, num_batches=3, prompts_per_step=P)
        )


# ---------------------------------------------------------------- configuration errors


def test_minibatch_size_must_hold_whole_groups(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), minibatch_size=6)
    with pytest.raises(ValueError, match=r"minibatch_size=6.*group_size=4"):
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))


def test_minibatch_size_must_divide_the_rollout_batch(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), minibatch_size=12)
    with pytest.raises(ValueError, match=r"minibatch_size=12.*batch of 8 rollouts"):
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))


def test_construction_errors(tiny_builder):
    with pytest.raises(ValueError, match="group_size"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), group_size=0)
    with pytest.raises(ValueError, match=r"beta=0.05.*reference"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), reference_from_initial=False)
    with pytest.raises(ValueError, match="per-step"):
        parts = dict(METHODS["udm_grpo"](), advantage=StepwiseGainAdvantage())
        _module(tiny_builder, UniformSource(V), parts)
    with pytest.raises(ValueError, match="on_bad_reward"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), on_bad_reward="ignore")
    with pytest.raises(ValueError, match="lr"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), lr=0.0)
    with pytest.raises(ValueError, match="min_lr_ratio=1.5"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), warmup_steps=-1)
    with pytest.raises(ValueError, match="decay_steps=0"):
        _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), decay_steps=0)
    # a per-step advantage with per-step units is fine; the draws recorder is switched on by itself
    module = _module(
        tiny_builder,
        UniformSource(V),
        dict(METHODS["naive_grpo"](), advantage=StepwiseGainAdvantage()),
    )
    assert module.rollout_sampler.record_draws and not module.eval_sampler.record_draws


def test_path_vocabulary_must_match_the_task(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(5), METHODS["udm_grpo"]())
    with pytest.raises(ValueError, match=r"vocab_size=3.*vocab_size=5"):
        module.attach_task(copy_task)
    module = _module(tiny_builder, MaskSource(5), METHODS["udm_grpo"]())
    with pytest.raises(ValueError, match=r"vocab_size=3.*vocab_size=5"):  # through fit and the data module
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))


# ---------------------------------------------------------------- evaluation


def test_evaluation_at_start_and_end_with_grids_and_logged_metrics(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(
        tiny_builder,
        MaskSource(V),
        METHODS["dflow_grpo"](),
        eval_every_n_steps=10,
        num_eval_prompts=6,
        num_grid_prompts=4,
    )
    logger = CSVLogger(tmp_path, name="rl")
    trainer = _trainer(tmp_path, logger=logger)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))

    assert len(module.eval_history) == 2  # before the first step and after the last (10 > 2 steps)
    for record in module.eval_history:
        for key in ("eval/acc_overall", "eval/reward", "eval/acc_first_0", "eval/reward_total"):
            assert math.isfinite(record[key]), key
        assert 0.0 <= record["eval/acc_overall"] <= 1.0 and 0.0 <= record["eval/reward"] <= 1.0
    assert module.eval_history[0]["compute/forward"] == 0.0  # the start: nothing trained yet
    assert module.eval_history[-1]["compute/forward"] > 0.0

    grids = sorted((tmp_path / "rl" / "version_0" / "samples").glob("*.png"))
    assert len(grids) == 2
    for grid in grids:
        with Image.open(grid) as image:
            assert image.format == "PNG" and image.size[0] > 0

    with open(tmp_path / "rl" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    evals = [r for r in rows if r.get("eval/acc_overall")]
    assert len(evals) == 2 and all(math.isfinite(float(r["eval/reward"])) for r in evals)
    trains = [r for r in rows if r.get("train/reward")]
    assert trains and all(math.isfinite(float(r["train/reward"])) for r in trains)


class PoisonAfter(L.Callback):
    """Before RL step ``at``: snapshot, then poison only from the ``after``-th pass with gradient on,
    so the first mini-batches of that RL step take optimiser steps before the fault."""

    def __init__(self, at: int, after: int) -> None:
        self.at, self.after = at, after

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx != self.at:
            return
        self.weights = copy.deepcopy(module.denoiser.state_dict())
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        inner, calls = module.denoiser.forward, [0]

        def forward(x_t, t, cond=None):
            out = inner(x_t, t, cond)
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] > self.after:
                    return out * float("nan")
            return out

        module.denoiser.forward = forward


def test_fault_in_a_later_minibatch_undoes_the_whole_rl_step(copy_task, tiny_builder, prompt_batches, tmp_path):
    # UDM-GRPO scores 3 timesteps per mini-batch with gradient: with after=6 the first two mini-batches
    # (of 2 epochs x 2) step the optimiser, the third is NaN. The RL step must leave no trace.
    module = _module(PoisonableBuilder(tiny_builder), UniformSource(V), METHODS["udm_grpo"](), max_consecutive_faults=3)
    callback = PoisonAfter(at=1, after=6)
    trainer = _trainer(tmp_path, callbacks=[callback])
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))
    assert _same_state(callback.weights, module.denoiser.state_dict())
    assert _same_state(callback.optimizer, trainer.optimizers[0].state_dict())
    assert _optimizer_steps(trainer) == 4  # the good first RL step only
    assert float(trainer.callback_metrics["faults/nonfinite_grad"]) == 1.0


# ---------------------------------------------------------------- evaluation


def test_evaluation_samples_each_prompt_several_times(tiny_builder):
    """``samples_per_prompt=k`` evaluates k independent samples of every prompt, in prompt order,
    and the per-category accuracy is the mean over all of them; 0 is refused by name."""
    from dflow.lightning.evaluation import evaluate
    from dflow.tasks import ShapesTask

    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=2, test_prompts_per_category=1)
    module = _module(tiny_builder, UniformSource(task.vocab_size), METHODS["udm_grpo"]())
    module.attach_task(task)
    prompts = task.prompts("test")[:3]
    res = evaluate(module.policy, task, module.eval_sampler, prompts, batch_size=4, samples_per_prompt=3)
    assert res.x1.shape == (9, task.seq_len)
    expanded = [p for p in prompts for _ in range(3)]
    correct = task.correct(res.x1, expanded).float()
    assert res.metrics["reward"] == pytest.approx(float(task.reward(res.x1, expanded).mean()))
    by_cat: dict[str, list[float]] = {}
    for p, c in zip(expanded, correct.tolist(), strict=True):
        by_cat.setdefault(p.category, []).append(c)
    for cat, values in by_cat.items():
        assert res.metrics[f"acc/{cat}"] == pytest.approx(sum(values) / len(values))
    with pytest.raises(ValueError, match="samples_per_prompt=0"):
        evaluate(module.policy, task, module.eval_sampler, prompts, samples_per_prompt=0)

    # an RL run's own reward terms are evaluated too, each and weighted (not only the task's reward)
    from dflow.rewards import TaskReward, WeightedRewards

    def filled(x1, prompts):
        return (x1 != 0).float().mean(-1)

    terms = WeightedRewards([TaskReward(task), filled], [1.0, 2.0])
    res2 = evaluate(
        module.policy, task, module.eval_sampler, prompts, batch_size=4, samples_per_prompt=3, rewards=terms
    )
    assert torch.equal(res2.x1, res.x1)  # the same noise: the terms only add metrics
    assert res2.metrics["reward/shapes_reward"] == pytest.approx(res.metrics["reward"])
    fill = float((res.x1 != 0).float().mean())
    assert res2.metrics["reward/filled"] == pytest.approx(fill)
    assert res2.metrics["reward/total"] == pytest.approx(res.metrics["reward"] + 2.0 * fill)
    with pytest.raises(ValueError, match="evaluation.samples_per_prompt must be an int >= 1, got samples_per_prompt=0"):
        _module(tiny_builder, UniformSource(task.vocab_size), METHODS["udm_grpo"](), eval_samples_per_prompt=0)


def test_balanced_evaluation_gives_every_category_the_same_count():
    from dflow.lightning.evaluation import balanced_prompts
    from dflow.tasks import ShapesTask

    test = ShapesTask().prompts("test")  # categories of 1 to 60 prompts
    out = balanced_prompts(test, 8)
    categories = {p.category for p in test}
    assert len(out) == 8 * len(categories)
    for cat in categories:
        mine = [p for p in out if p.category == cat]
        pool = [p for p in test if p.category == cat]
        assert len(mine) == 8
        assert mine == [pool[i % len(pool)] for i in range(8)]  # cycled in order
    with pytest.raises(ValueError, match="per_category=0"):
        balanced_prompts(test, 0)


SEEN_PROMPTS: list = []


def recording_reward(x1, prompts):
    SEEN_PROMPTS.extend(prompts)
    return torch.zeros(len(prompts))


@pytest.mark.parametrize("split", ["rl", "test"])
def test_training_prompts_come_from_the_data_modules_split(tiny_builder, tmp_path, split):
    """The data module's batches index ``task.prompts(split)``; the module must resolve them in the
    same split (it once always used one split, silently training on other prompts)."""
    from dflow.lightning import PromptDataModule
    from dflow.tasks import ShapesTask

    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=2, test_prompts_per_category=1)
    module = _module(
        tiny_builder,
        UniformSource(task.vocab_size),
        METHODS["udm_grpo"](),
        rewards=[RewardSpec(source=f"{__name__}:recording_reward", name="rec")],
    )
    data = PromptDataModule(task, prompts_per_step=P, split=split, steps_per_epoch=2)
    SEEN_PROMPTS.clear()
    _trainer(tmp_path).fit(module, datamodule=data)
    assert SEEN_PROMPTS and set(SEEN_PROMPTS) <= set(task.prompts(split))


# ---------------------------------------------------------------- learning-rate schedule


def test_lr_schedule_steps_once_per_rl_step(copy_task, tiny_builder, prompt_batches, tmp_path):
    """warm-up 1, cosine to 0.2 lr over 3 RL steps, lr 1e-2; logged lr of RL step s (0-based):
    s = 0: 1/1 = 1 -> 1e-2 (warm-up); s = 1: progress (1-1)/(3-1) = 0 -> 1e-2;
    s = 2: progress 1/2 -> 0.2 + 0.8 x (1 + cos(pi/2)) / 2 = 0.6 -> 6e-3;
    s = 3: progress 1 -> 0.2 -> 2e-3 (the floor; stays there). Two optimiser steps per RL step
    (2 epochs x 2 mini-batches) still advance it once."""
    module = _module(
        tiny_builder, UniformSource(V), METHODS["udm_grpo"](), warmup_steps=1, min_lr_ratio=0.2, decay_steps=3
    )
    logger = CSVLogger(tmp_path, name="lr", version=0)
    trainer = _trainer(tmp_path, logger=logger)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=4, prompts_per_step=P))
    logger.save()
    with open(tmp_path / "lr" / "version_0" / "metrics.csv") as fh:
        lrs = [float(r["train/lr"]) for r in csv.DictReader(fh) if r.get("train/lr")]
    assert lrs == pytest.approx([1e-2, 1e-2, 6e-3, 2e-3], rel=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-3)


def test_constant_lr_has_no_scheduler(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"]())
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=2, prompts_per_step=P))
    assert trainer.lr_scheduler_configs == []
    assert _finite_metrics(trainer)["train/lr"] == pytest.approx(1e-2, rel=1e-6)


def test_lr_schedule_needs_a_length(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), min_lr_ratio=0.5)
    with pytest.raises(ValueError, match="decay_steps or trainer.max_steps"):
        _trainer(tmp_path).fit(module, datamodule=prompt_batches(copy_task, num_batches=1, prompts_per_step=P))


# ---------------------------------------------------------------- settings records


def test_settings_are_grouped_in_typed_records(tiny_builder):
    module = _module(tiny_builder, UniformSource(V), METHODS["udm_grpo"](), lr=3e-3, eval_batch_size=5)
    assert isinstance(module.rollout_config, RolloutConfig) and module.group_size == G
    assert isinstance(module.optim, OptimConfig) and module.optim.lr == 3e-3
    assert isinstance(module.eval_config, EvalConfig) and module.eval_config.batch_size == 5
    assert isinstance(module.fault_policy, FaultPolicy) and module.fault_policy.on_bad_reward == "stop"
    # a mapping (a config, a checkpoint's hyperparameters) becomes its record; the hparams keep the blocks
    again = RLModule(tiny_builder, MixturePath(UniformSource(V)), **METHODS["udm_grpo"](), optim={"lr": 2e-3})
    assert again.optim == OptimConfig(lr=2e-3) and again.hparams["optim"] == OptimConfig(lr=2e-3)
    assert again.eval_config.num_steps == 25 and again.rollout_config.num_steps == 10  # the defaults


def test_flat_arguments_of_earlier_versions_say_where_they_moved(tiny_builder):
    parts = METHODS["udm_grpo"]()
    with pytest.raises(TypeError, match=r"lr -> optim\.lr; max_consecutive_faults -> faults\.max_consecutive"):
        RLModule(tiny_builder, MixturePath(UniformSource(V)), **parts, lr=1e-3, max_consecutive_faults=2)
    with pytest.raises(TypeError, match=r"colour \(no such argument\)"):
        RLModule(tiny_builder, MixturePath(UniformSource(V)), **parts, colour=3)
    with pytest.raises(ValueError, match=r"optim: unknown field\(s\) \['lrr'\]"):
        RLModule(tiny_builder, MixturePath(UniformSource(V)), **parts, optim={"lrr": 1e-3})


@pytest.mark.parametrize(
    ("record", "kwargs", "message"),
    [
        (RolloutConfig, {"group_size": 0}, r"rollout\.group_size must be an int >= 1, got group_size=0"),
        (OptimConfig, {"lr": 0.0}, r"optim\.lr must be > 0, got lr=0\.0"),
        (OptimConfig, {"max_grad_norm": -1.0}, r"optim\.max_grad_norm must be > 0 or null"),
        (OptimConfig, {"num_inner_epochs": 0}, r"optim\.num_inner_epochs must be an int >= 1"),
        (OptimConfig, {"minibatch_size": 0}, r"optim\.minibatch_size must be an int >= 1"),
        (EvalConfig, {"every_n_steps": -1}, r"evaluation\.every_n_steps must be an int >= 0, got every_n_steps=-1"),
        (EvalConfig, {"samples_per_prompt": 0}, r"evaluation\.samples_per_prompt must be an int >= 1"),
        (EvalConfig, {"samples_per_category": 0}, r"evaluation\.samples_per_category must be an int >= 1 or null"),
        (EvalConfig, {"batch_size": 0}, r"evaluation\.batch_size must be an int >= 1"),
        (FaultPolicy, {"on_bad_reward": "ignore"}, r"faults\.on_bad_reward must be 'skip' or 'stop'"),
        (FaultPolicy, {"max_consecutive": 0}, r"faults\.max_consecutive must be an int >= 1"),
    ],
)
def test_records_name_the_field_of_a_bad_value(record, kwargs, message):
    with pytest.raises(ValueError, match=message):
        record(**kwargs)
