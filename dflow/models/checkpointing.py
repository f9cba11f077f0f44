"""Gradient (activation) checkpointing of ``transformers`` models, switched on the same way for all.

Checkpointing keeps only each block's input during the forward pass and recomputes the block's
activations during the backward pass: about one more forward pass of compute for activation memory
that no longer grows with the blocks' internals (measured in docs/benchmarks.md).

The switch is the model's own ``transformers`` machinery, non-reentrant
(``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which replays the RNG state, so a
recomputed dropout mask equals the original one). Example::

    enable_gradient_checkpointing(model)   # a DFlowTransformer or any PreTrainedModel that supports it
    loss.backward()                        # blocks are recomputed here
"""

from __future__ import annotations

from typing import Any

from torch import nn

# non-reentrant: works when no input requires grad (frozen embeddings, LoRA), with keyword
# arguments, and checks that the recompute saved the same tensors as the forward pass
CHECKPOINT_KWARGS: dict[str, Any] = {"use_reentrant": False}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Switch on ``model``'s own gradient checkpointing (non-reentrant).

    Raises:
        ValueError: naming the model class when it does not declare ``supports_gradient_checkpointing``.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing=True, but {type(model).__name__} does not support gradient checkpointing "
            "(its supports_gradient_checkpointing is False); set gradient_checkpointing: false for this model"
        )
    # transformers 5 renamed the method (the old name warns); 4.x only has the old one
    new = getattr(model, "activation_checkpointing_enable", None)
    if new is not None:
        new(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))  # type: ignore[operator]


def disable_gradient_checkpointing(model: nn.Module) -> None:
    """Switch ``model``'s gradient checkpointing off (a no-op when it was off)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    new = getattr(model, "activation_checkpointing_disable", None)
    if new is not None:
        new()
    else:
        model.gradient_checkpointing_disable()  # type: ignore[operator]


def is_gradient_checkpointing(model: nn.Module) -> bool:
    """Whether any module of ``model`` has checkpointing switched on (the flag ``transformers`` sets)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
