"""Denoisers: the protocol, a small transformer, and an adapter for HF masked LMs."""

from dflow.models.checkpointing import (
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_gradient_checkpointing,
)
from dflow.models.config import DFlowConfig
from dflow.models.hf_adapter import HFMaskedLMDenoiser
from dflow.models.protocol import Denoiser
from dflow.models.transformer import DFlowTransformer, count_parameters

__all__ = [
    "DFlowConfig",
    "DFlowTransformer",
    "Denoiser",
    "HFMaskedLMDenoiser",
    "count_parameters",
    "disable_gradient_checkpointing",
    "enable_gradient_checkpointing",
    "is_gradient_checkpointing",
]
