"""Likelihood estimators (sibling classes, chosen in YAML by ``class_path``)."""

from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan, token_scores
from dflow.rl.likelihood.coupled import CoupledELBOLikelihood
from dflow.rl.likelihood.final_sample import ELBOLikelihood, ForwardReconstruction, MeanFieldLikelihood
from dflow.rl.likelihood.per_step import IntermediateActionLikelihood, TrajectoryLikelihood
from dflow.rl.likelihood.sandwich import SandwichedBounds
from dflow.rl.likelihood.spans import SpanLikelihood
from dflow.rl.likelihood.states import BackwardStates, ForwardStates, ScoredStates
from dflow.rl.likelihood.steps import AllButLast, AllSteps, RandomSteps, StepSelection, StepWindow

__all__ = [
    "AllButLast",
    "AllSteps",
    "BackwardStates",
    "CoupledELBOLikelihood",
    "ELBOLikelihood",
    "ForwardReconstruction",
    "ForwardStates",
    "IntermediateActionLikelihood",
    "LikelihoodEstimator",
    "MeanFieldLikelihood",
    "RandomSteps",
    "SandwichedBounds",
    "ScoredStates",
    "SpanLikelihood",
    "StepSelection",
    "StepWindow",
    "TrajectoryLikelihood",
    "UnitPlan",
    "token_scores",
]
