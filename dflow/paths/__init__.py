"""Probability paths: schedulers ``kappa_t``, sources ``p_0``, and the mixture and metric-induced paths."""

from dflow.paths.base import ProbabilityPath, StepSample
from dflow.paths.metric import MetricPath
from dflow.paths.mixture import MixturePath
from dflow.paths.schedulers import CosineScheduler, LinearScheduler, PolynomialScheduler, Scheduler
from dflow.paths.sources import MaskSource, MixtureSource, Source, UniformSource

__all__ = [
    "CosineScheduler",
    "LinearScheduler",
    "MaskSource",
    "MetricPath",
    "MixturePath",
    "MixtureSource",
    "PolynomialScheduler",
    "ProbabilityPath",
    "Scheduler",
    "Source",
    "StepSample",
    "UniformSource",
]
