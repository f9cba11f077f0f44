"""Denoisers: the protocol, a small transformer, an adapter for HF masked LMs, DiffusionGemma as a block policy,
and LoRA adapters (peft)."""

from dflow.models.checkpointing import (
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_gradient_checkpointing,
)
from dflow.models.config import DFlowConfig
from dflow.models.diffusion_gemma import DiffusionGemmaDenoiser
from dflow.models.hf_adapter import HFMaskedLMDenoiser
from dflow.models.lora import AdaptersOff, LoRAConfig, apply_lora, has_adapters, merged_copy
from dflow.models.protocol import Denoiser
from dflow.models.transformer import DFlowTransformer, count_parameters

__all__ = [
    "AdaptersOff",
    "LoRAConfig",
    "apply_lora",
    "has_adapters",
    "merged_copy",
    "DFlowConfig",
    "DFlowTransformer",
    "Denoiser",
    "DiffusionGemmaDenoiser",
    "HFMaskedLMDenoiser",
    "count_parameters",
    "disable_gradient_checkpointing",
    "enable_gradient_checkpointing",
    "is_gradient_checkpointing",
]
