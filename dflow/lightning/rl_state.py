"""State the RL module saves or restores around a step: global RNG states, weight/optimiser snapshots."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch


def global_rng_state() -> dict:
    """The global torch / numpy / python RNG states as tensors and plain Python values only, so a
    checkpoint holding them loads with ``torch.load(weights_only=True)`` (LightningCLI reads
    ``--ckpt_path`` that way; a numpy array inside made every explicit RL resume path fail)."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: a tuple for the global MT19937 generator
    kind, keys, pos, has_gauss, cached = state
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Copies of the trainable parameters and the optimiser state: what optimiser steps change.
    Frozen parameters (a LoRA model's base weights) and buffers are not copied."""
    params = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return params, copy.deepcopy(optimizer.state_dict())


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: tuple[dict, dict]) -> None:
    params, opt_state = saved
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in params:
                p.copy_(params[k])
    optimizer.load_state_dict(opt_state)
