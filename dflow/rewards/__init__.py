"""Reward protocol, task-verifier adapter, weighted multi-reward and output checks.

The verifiers themselves live with their tasks (``dflow.tasks``); ``TaskReward`` exposes them.
"""

from dflow.rewards.base import (
    Reward,
    RewardRecord,
    TaskReward,
    WeightedRewards,
    load_reward,
)
from dflow.rewards.checked import CheckedReward, check_rewards, reward_name

__all__ = [
    "CheckedReward",
    "Reward",
    "RewardRecord",
    "TaskReward",
    "WeightedRewards",
    "check_rewards",
    "load_reward",
    "reward_name",
]
