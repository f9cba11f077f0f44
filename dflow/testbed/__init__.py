"""The exact testbed: tasks small enough that the sampler's whole output distribution is computed
exactly, so RL methods compare without sampling noise (see ``docs/testbed.md``)."""

from dflow.testbed.base import PretrainLog, TestbedBase, pretrain
from dflow.testbed.callback import ExactEvaluationCallback
from dflow.testbed.evaluate import (
    ExactEvaluation,
    ExactEvaluator,
    RewardTable,
    entropy,
    evaluate_distribution,
    kl_divergence,
)
from dflow.testbed.exact import (
    ExactDistribution,
    exact_distribution,
    is_time_agnostic,
    propagate,
    state_posteriors,
    step_kernels,
)
from dflow.testbed.rewards import ExactMatch, PartialCredit, TrapReward
from dflow.testbed.spec import TargetSpec
from dflow.testbed.states import MAX_STATES, StateSpace, all_sequences, encode
from dflow.testbed.task import REWARD_KINDS, TestbedTask

__all__ = [
    "MAX_STATES",
    "REWARD_KINDS",
    "ExactDistribution",
    "ExactEvaluationCallback",
    "ExactEvaluation",
    "ExactEvaluator",
    "ExactMatch",
    "PartialCredit",
    "PretrainLog",
    "RewardTable",
    "StateSpace",
    "TargetSpec",
    "TestbedBase",
    "TestbedTask",
    "TrapReward",
    "all_sequences",
    "encode",
    "entropy",
    "evaluate_distribution",
    "exact_distribution",
    "kl_divergence",
    "is_time_agnostic",
    "pretrain",
    "propagate",
    "state_posteriors",
    "step_kernels",
]
