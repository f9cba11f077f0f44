"""Start-up check of an RL run's ``trainer.precision`` against the device and the inner loop (a clear
message, not a slow or failing bfloat16 run on a GPU without it, nor an fp16 run clipped at the wrong scale)."""

from __future__ import annotations

import torch

FP16_SCALED = ("16-mixed", "16")  # Lightning's fp16 with a GradScaler


def check_precision(precision: str, device: torch.device) -> None:
    """``ValueError`` naming ``trainer.precision`` when it asks for bfloat16 on a GPU without it (NVIDIA
    before compute capability 8.0, where PyTorch would emulate it slowly or fail; CPUs have it), or for
    fp16 with a loss scaler, which the RL inner loop cannot honour: it clips the gradient of the
    *scaled* loss (a clip of 1 then bounds the true gradient at about 1 / scale, 2**-16 at the start)
    and takes every inner mini-batch step but the last past the scaler's unscale and overflow check
    (dflow.lightning.rl_inner)."""
    if precision in FP16_SCALED:
        raise ValueError(
            f"trainer.precision={precision} (fp16 with a loss scaler) is not supported for RL: the inner loop would "
            "clip the scaled gradient and step its mini-batches past the scaler; use --trainer.precision=bf16-mixed "
            "(CPUs, NVIDIA GPUs from Ampere) or 32-true"
        )
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
            "have it from compute capability 8.0, Ampere); use --trainer.precision=32-true"
        )
