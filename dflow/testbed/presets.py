"""The methods a testbed study compares: each one's parts with the settings of its shapes recipe.

A preset is ``PolicyUpdate``'s parts and the advantage estimator, built fresh for every run. The
settings are the papers' as the shapes recipes carry them (``recipes/shapes/<recipe>.yaml``: clips,
advantages, KL, aggregation, inner epochs); what a study holds in common (prompts x group, rollout
steps, lr) comes from its ``StudySpec``, not from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dflow.rl import (
    EPG,
    PAR,
    PEPG,
    REINFORCE,
    AllButLast,
    AllSteps,
    BackwardStates,
    ClippedSurrogate,
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    ForwardStates,
    GroupAdvantage,
    GroupSoftmaxWeights,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    SampleSumAggregation,
    SandwichedBounds,
    SandwichedObjective,
    SpanLikelihood,
    StepWindow,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
    UnitMeanAggregation,
)


def _paper_advantage() -> GroupAdvantage:
    """UDM-GRPO's (and naive GRPO's) ``(R - group mean) / (std + 1e-4)``, clipped to 5."""
    return GroupAdvantage(scale="group", clip=5.0, eps=1e-4)


def _elbo_parts(objective: Any) -> tuple[Any, Any, Any, KLPenalty, Any]:
    """The ELBO family's units (9 of 10 times, exact weighting, summed) and advantage ``0.1 (R - mean)``."""
    return (
        ELBOLikelihood(9, grid_steps=10, weighting="exact"),
        objective,
        GroupAdvantage(scale="none", coef=0.1, clip=None),
        KLPenalty(0.0),
        SampleSumAggregation(),
    )


@dataclass
class MethodPreset:
    """A method's parts, with the settings of its shapes recipe (``recipes/shapes/<recipe>.yaml``).
    ``build()`` returns ``PolicyUpdate``'s parts and the advantage estimator, fresh each call."""

    recipe: str  # recipes/shapes/<recipe>, or "<grid>.yaml:<method>" for a method of recipes/ablations/<grid>.yaml
    build: Callable[[], tuple[Any, Any, Any, KLPenalty, Any]]  # likelihood, objective, advantage, kl, aggregation
    num_inner_epochs: int = 1
    minibatch_groups: int | None = None  # mini-batches of this many prompt groups (None: the whole batch)
    sources: tuple[str, ...] = ("mask", "uniform")  # the sources its maths covers (SPG: mask only)


def _dflowgrpo(recipe: str, steps: Callable[[], Any]) -> MethodPreset:
    """dFlowGRPO's parts (the trajectory's per-step log-probabilities, token mean; asymmetric clip
    1e-3 / 1.5e-3; batch-std advantage; 2 inner epochs of 2-group mini-batches) with ``steps`` scored."""
    return MethodPreset(
        recipe,
        lambda: (
            TrajectoryLikelihood(steps(), token_mean=True),
            ClippedSurrogate(1e-3, 1.5e-3),
            GroupAdvantage(scale="batch", clip=5.0, eps=1e-4),
            KLPenalty(0.0),
            None,
        ),
        num_inner_epochs=2,
        minibatch_groups=2,
    )


METHODS: dict[str, MethodPreset] = {
    # the UDM-GRPO paper's baseline: each step's posterior draw scored at the stored backward state
    "naive_grpo": MethodPreset(
        "naive_grpo.yaml",
        lambda: (
            IntermediateActionLikelihood(states=BackwardStates(), token_mean=True),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.0),
            None,
        ),
    ),
    # the same with UDM-GRPO's k3 KL 0.05: it then differs from udm_grpo only in what is scored where
    "naive_grpo_kl": MethodPreset(
        "naive_grpo.yaml + UDM-GRPO's KL",
        lambda: (
            IntermediateActionLikelihood(states=BackwardStates(), token_mean=True),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.05, "k3"),
            None,
        ),
    ),
    "udm_grpo": MethodPreset(
        "udm_grpo.yaml",
        lambda: (
            ForwardReconstruction(3, grid_steps=10, max_start=2, states=ForwardStates()),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.05, "k3"),
            None,
        ),
    ),
    "dflowgrpo": _dflowgrpo("dflowgrpo.yaml", AllButLast),
    # dFlowGRPO scoring every step, the last one too: its step selection is the only change. Leaving
    # the last step out turns the expected update against the exact gradient on the uniform source
    # away from the base (docs/testbed.md, "Gradient estimators away from the base")
    "dflowgrpo_all_steps": _dflowgrpo("dflowgrpo.yaml + the last step scored", AllSteps),
    "elbo_epg": MethodPreset("elbo_epg.yaml", lambda: _elbo_parts(EPG())),
    # the ELBO family's other objectives (elbo_pepg.yaml, elbo_par.yaml, elbo_grpo.yaml): the same units
    # and advantage as elbo_epg; with one inner epoch all four give the same gradient (ratio 1)
    "elbo_pepg": MethodPreset("elbo_pepg.yaml", lambda: _elbo_parts(PEPG())),
    "elbo_par": MethodPreset("elbo_par.yaml", lambda: _elbo_parts(PAR())),
    "elbo_grpo": MethodPreset("elbo_grpo.yaml", lambda: _elbo_parts(ClippedSurrogate(1e-3))),
    "stepwise": MethodPreset(
        "stepwise.yaml",
        lambda: (
            TrajectoryLikelihood(token_mean=True),
            ClippedSurrogate(0.2),
            StepwiseGainAdvantage(clip=5.0),
            KLPenalty(0.0),
            None,
        ),
    ),
    # SPG (spg_mask.yaml): ELBO for A > 0, 0.5 EUBO + 0.5 ELBO for A < 0; blocks of 1 token on L = 5
    # (the shapes recipe's 6 blocks of 24 tokens; SPG's 8 of 32), so a draw masks a random suffix
    "spg": MethodPreset(
        "spg_mask.yaml",
        lambda: (
            SandwichedBounds(num_draws=2, block_length=1, eubo_beta=1.5, score_later_blocks=True, token_mean=True),
            SandwichedObjective(mix_weight=0.5),
            GroupAdvantage(scale="none", clip=None),
            KLPenalty(0.0),
            SampleSumAggregation(),
        ),
        num_inner_epochs=4,
        sources=("mask",),
    ),
    # coupled-GRPO (coupled_grpo.yaml): one complementary mask pair + the fully noised pass, per token
    "coupled_grpo": MethodPreset(
        "coupled_grpo.yaml",
        lambda: (
            CoupledELBOLikelihood(num_pairs=1, noise_min=0.2, noise_max=0.8, full_noise=True, per_token=True),
            ClippedSurrogate(0.5),
            GroupAdvantage(scale="none", coef=8 / 7, clip=None),  # leave-one-out G / (G - 1), G = 8
            KLPenalty(0.01, "k3"),
            UnitMeanAggregation(),
        ),
        num_inner_epochs=2,
    ),
    # wd1 (wd1.yaml): d1's one-pass mean-field estimate, weighted by group softmax weights, no ratio
    "wd1": MethodPreset(
        "wd1.yaml",
        lambda: (
            MeanFieldLikelihood(p_mask_prompt=0.15, prompt_mask_id=0),
            REINFORCE(),
            GroupSoftmaxWeights(psi=1.0, negative_weight=1.0),
            KLPenalty(0.0),
            None,
        ),
        num_inner_epochs=12,
    ),
    # d1's diffu-GRPO (diffu_grpo_mask.yaml): mean-field per token, clip 0.5, k3 KL 0.04, 12 inner epochs
    "diffu_grpo": MethodPreset(
        "diffu_grpo_mask.yaml",
        lambda: (
            MeanFieldLikelihood(p_mask_prompt=0.15, prompt_mask_id=0, per_token=True),
            ClippedSurrogate(0.5),
            _paper_advantage(),
            KLPenalty(0.04, "k3"),
            None,
        ),
        num_inner_epochs=12,
    ),
    # TraceRL's idea (trace_spans.yaml): the steps the sampler took, in spans of 2, one ratio per token
    "trace_spans": MethodPreset(
        "trace_spans.yaml",
        lambda: (
            SpanLikelihood(span=2, per_token=True),
            ClippedSurrogate(0.2),
            GroupAdvantage(scale="group", clip=None, eps=1e-4),
            KLPenalty(0.0),
            None,
        ),
    ),
    # UDM-GRPO's 2x2 (recipes/ablations/shapes_udm_2x2.yaml): udm_grpo with only the likelihood
    # replaced, so the cells differ in which states are scored and which sample is the action; the
    # intermediate-action cells score the same window of 3 early steps from a start in {0, 1, 2}
    "udm_fwd_intermediate": MethodPreset(
        "shapes_udm_2x2.yaml:fwd_intermediate",
        lambda: (
            IntermediateActionLikelihood(StepWindow(3, 0, 2), states=ForwardStates(), token_mean=True),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.05, "k3"),
            None,
        ),
    ),
    "udm_bwd_final": MethodPreset(
        "shapes_udm_2x2.yaml:bwd_final",
        lambda: (
            ForwardReconstruction(3, grid_steps=10, max_start=2, states=BackwardStates()),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.05, "k3"),
            None,
        ),
    ),
    "udm_bwd_intermediate": MethodPreset(
        "shapes_udm_2x2.yaml:bwd_intermediate",
        lambda: (
            IntermediateActionLikelihood(StepWindow(3, 0, 2), states=BackwardStates(), token_mean=True),
            ClippedSurrogate(1e-4),
            _paper_advantage(),
            KLPenalty(0.05, "k3"),
            None,
        ),
    ),
}
