"""Start-up check of ``trainer.precision`` against the device (a clear message, not a slow or
failing bfloat16 run on a GPU without it)."""

from __future__ import annotations

import torch


def check_precision(precision: str, device: torch.device) -> None:
    """``ValueError`` naming ``trainer.precision`` when it asks for bfloat16 on a GPU without it (NVIDIA
    before compute capability 8.0, where PyTorch would emulate it slowly or fail). CPUs have it."""
    if not precision.startswith("bf16") or device.type != "cuda":
        return
    try:
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3: no emulation to exclude
        supported = torch.cuda.is_bf16_supported()
    if not supported:
        name = f" ({torch.cuda.get_device_name(device)})" if torch.cuda.is_available() else ""
        raise ValueError(
            f"trainer.precision={precision} needs bfloat16, which {device}{name} does not have (NVIDIA GPUs "
            "have it from compute capability 8.0, Ampere); use --trainer.precision=16-mixed or 32-true"
        )
