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
    AllButLast,
    BackwardStates,
    ClippedSurrogate,
    ELBOLikelihood,
    ForwardReconstruction,
    ForwardStates,
    GroupAdvantage,
    IntermediateActionLikelihood,
    KLPenalty,
    SampleSumAggregation,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)


def _paper_advantage() -> GroupAdvantage:
    """UDM-GRPO's (and naive GRPO's) ``(R - group mean) / (std + 1e-4)``, clipped to 5."""
    return GroupAdvantage(scale="group", clip=5.0, eps=1e-4)


@dataclass
class MethodPreset:
    """A method's parts, with the settings of its shapes recipe (``recipes/shapes/<recipe>.yaml``).
    ``build()`` returns ``PolicyUpdate``'s parts and the advantage estimator, fresh each call."""

    recipe: str
    build: Callable[[], tuple[Any, Any, Any, KLPenalty, Any]]  # likelihood, objective, advantage, kl, aggregation
    num_inner_epochs: int = 1
    minibatch_groups: int | None = None  # mini-batches of this many prompt groups (None: the whole batch)


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
    "dflowgrpo": MethodPreset(
        "dflowgrpo.yaml",
        lambda: (
            TrajectoryLikelihood(AllButLast(), token_mean=True),
            ClippedSurrogate(1e-3, 1.5e-3),
            GroupAdvantage(scale="batch", clip=5.0, eps=1e-4),
            KLPenalty(0.0),
            None,
        ),
        num_inner_epochs=2,
        minibatch_groups=2,
    ),
    "elbo_epg": MethodPreset(
        "elbo_epg.yaml",
        lambda: (
            ELBOLikelihood(9, grid_steps=10, weighting="exact"),
            EPG(),
            GroupAdvantage(scale="none", coef=0.1, clip=None),
            KLPenalty(0.0),
            SampleSumAggregation(),
        ),
    ),
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
}
