"""Sharded training with FSDP2 through Lightning's ``ModelParallelStrategy``.

``RLModule.configure_model`` calls :func:`shard` on the policy and on the frozen KL reference when the
strategy gives the module a device mesh. Each layer of the network's layer stacks (the entries of its
``nn.ModuleList``s: ``DFlowTransformer.blocks``, a Hugging Face model's ``layer`` list) becomes one FSDP
unit, then the whole network: a rank holds a ``1 / world_size`` shard of every weight, gradient and
optimiser state, and gathers one layer's weights at a time for its forward and backward.

Gradient clipping stays ``torch.nn.utils.clip_grad_norm_``: on FSDP2's DTensor gradients it reduces
the norm over every rank's shards (``norm_value`` turns the DTensor it returns into a number).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def data_parallel_mesh(mesh: Any) -> Any:
    """The data-parallel dimension of Lightning's mesh; tensor parallelism is refused (not supported)."""
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"ModelParallelStrategy(tensor_parallel_size={mesh['tensor_parallel'].size()}): dflow shards its "
            "models with FSDP2 only; use tensor_parallel_size=1 (data_parallel_size = the number of devices)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard(module: nn.Module, mesh: Any) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to every layer of ``module``'s layer stacks, then to ``module``."""
    from torch.distributed.fsdp import fully_shard

    mesh = data_parallel_mesh(mesh)
    done: list[str] = []  # layers already units: a ModuleList inside one belongs to it
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.ModuleList) or any(name.startswith(prefix + ".") for prefix in done):
            continue
        for index, layer in enumerate(sub):
            fully_shard(layer, mesh=mesh)
            done.append(f"{name}.{index}" if name else str(index))
    fully_shard(module, mesh=mesh)
    return module


def norm_value(norm: Tensor) -> Tensor:
    """A gradient norm as a plain tensor (FSDP2 returns a DTensor, already reduced over the ranks)."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` was sharded by FSDP2 (its parameters are DTensors)."""
    return any(type(p).__name__ == "DTensor" for p in module.parameters())
