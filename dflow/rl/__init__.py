"""The RL design space: likelihood estimators x objectives x advantage estimators (+ KL, aggregation)."""

from dflow.rl.advantages import (
    AdvantageEstimator,
    AdvantageInput,
    Advantages,
    GroupAdvantage,
    StepwiseGainAdvantage,
)
from dflow.rl.aggregation import (
    GlobalSumAggregation,
    LossAggregation,
    SampleMeanAggregation,
    SampleSumAggregation,
    UnitMeanAggregation,
)
from dflow.rl.kl import KLPenalty, kl_k1, kl_k2, kl_k3
from dflow.rl.likelihood import (
    AllButLast,
    AllSteps,
    ELBOLikelihood,
    ForwardReconstruction,
    IntermediateActionLikelihood,
    LikelihoodEstimator,
    MeanFieldLikelihood,
    RandomSteps,
    StepSelection,
    StepWindow,
    TrajectoryLikelihood,
    UnitPlan,
)
from dflow.rl.objectives import EPG, PAR, PEPG, REINFORCE, ClippedSurrogate, Objective, ObjectiveOutput
from dflow.rl.update import Compute, PolicyUpdate, PreparedBatch

__all__ = [
    "EPG",
    "PAR",
    "PEPG",
    "REINFORCE",
    "AdvantageEstimator",
    "AdvantageInput",
    "Advantages",
    "AllButLast",
    "AllSteps",
    "ClippedSurrogate",
    "Compute",
    "ELBOLikelihood",
    "ForwardReconstruction",
    "GlobalSumAggregation",
    "GroupAdvantage",
    "IntermediateActionLikelihood",
    "KLPenalty",
    "LikelihoodEstimator",
    "LossAggregation",
    "MeanFieldLikelihood",
    "Objective",
    "ObjectiveOutput",
    "PolicyUpdate",
    "PreparedBatch",
    "RandomSteps",
    "SampleMeanAggregation",
    "SampleSumAggregation",
    "StepSelection",
    "StepWindow",
    "StepwiseGainAdvantage",
    "TrajectoryLikelihood",
    "UnitMeanAggregation",
    "UnitPlan",
    "kl_k1",
    "kl_k2",
    "kl_k3",
]
