"""State the RL module saves or restores around a step: global RNG states, weight/optimiser snapshots."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch


def global_rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return params, copy.deepcopy(optimizer.state_dict())


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: tuple[dict, dict]) -> None:
    params, opt_state = saved
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(params[k])
    optimizer.load_state_dict(opt_state)
