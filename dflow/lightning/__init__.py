"""Lightning training: the pretraining and RL modules, data modules, denoiser builders, losses, callbacks.

Recipes name these by ``class_path`` (e.g. ``dflow.lightning.PretrainModule``).
"""

from dflow.lightning.block_builders import DiffusionGemma
from dflow.lightning.builders import (
    DenoiserBuilder,
    PretrainedDenoiser,
    TransformerDenoiser,
    resolve_path,
)
from dflow.lightning.callbacks import DFlowProgressBar, ExportPretrained
from dflow.lightning.data import PromptDataModule, TaskDataModule
from dflow.lightning.hf_builders import HFMaskedLM
from dflow.lightning.loggers import ResumableCSVLogger
from dflow.lightning.losses import CrossEntropyLoss, GeneralizedKLLoss, PretrainLoss
from dflow.lightning.pretrain import PretrainModule
from dflow.lightning.reliability import AtomicCheckpointIO, GracefulShutdown
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_config import EvalConfig, FaultPolicy, OptimConfig, RolloutConfig
from dflow.lightning.rl_module import RLModule
from dflow.models.lora import LoRAConfig

__all__ = [
    "AtomicCheckpointIO",
    "GracefulShutdown",
    "RLModule",
    "EvalConfig",
    "FaultPolicy",
    "LoRAConfig",
    "OptimConfig",
    "RolloutConfig",
    "ResumableCSVLogger",
    "RewardSpec",
    "CrossEntropyLoss",
    "DFlowProgressBar",
    "DenoiserBuilder",
    "DiffusionGemma",
    "ExportPretrained",
    "GeneralizedKLLoss",
    "HFMaskedLM",
    "PretrainLoss",
    "PretrainModule",
    "PretrainedDenoiser",
    "PromptDataModule",
    "TaskDataModule",
    "TransformerDenoiser",
    "resolve_path",
]
