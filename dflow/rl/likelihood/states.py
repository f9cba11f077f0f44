"""Which states a likelihood estimator scores its action at: sibling classes chosen by ``class_path``.

UDM-GRPO's 2x2 ablation crosses two choices: the *action* (the final clean sample ``x_1``, or each
step's intermediate draw ``xhat_1^k``; that is the estimator class) and the *scored states*:

- :class:`ForwardStates`: ``xtilde ~ q_t(. | x_1)``, fresh states re-noised from the rollout's final
  sample by the pretraining forward process (UDM-GRPO's fix: the states the model was trained on);
- :class:`BackwardStates`: the states the rollout actually visited, ``x_{t_k}`` (the naive choice).

Both take grid indices ``idx [B, U]`` per sample and unit and return the times and states
``[U, B, L]`` to score. In YAML::

    likelihood:
      class_path: dflow.rl.ForwardReconstruction
      init_args:
        states: {class_path: dflow.rl.BackwardStates}
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dflow.rl.likelihood.base import forward_states
from dflow.sampling import Sampler, Trajectory


class ScoredStates(ABC):
    """Where the action is scored. ``on_rollout_grid``: the times are the rollout grid's own (the
    estimator's ``grid_steps`` then does not apply and the rollout must have enough steps)."""

    on_rollout_grid: bool = False

    @abstractmethod
    def states(self, traj: Trajectory, sampler: Sampler, idx: Tensor, times: Tensor, generator) -> Tensor:
        """Compact integer states ``[U, B, L]`` (``traj.states.dtype``) at grid indices ``idx [B, U]``
        with times ``times [B, U]``."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ForwardStates(ScoredStates):
    """``xtilde_{t} ~ q_t(. | x_1)``: re-noised from the rollout's final sample by the pretraining
    forward process, one draw per unit from the RL generator (UDM-GRPO)."""

    def states(self, traj: Trajectory, sampler: Sampler, idx: Tensor, times: Tensor, generator) -> Tensor:
        return forward_states(sampler.path, traj.x1, times, generator, traj.states.dtype)


class BackwardStates(ScoredStates):
    """The stored rollout states ``x_{t_k}`` at rollout step ``k = idx`` (no draw)."""

    on_rollout_grid = True

    def states(self, traj: Trajectory, sampler: Sampler, idx: Tensor, times: Tensor, generator) -> Tensor:
        rows = torch.arange(traj.batch_size, device=idx.device)
        return torch.stack([traj.states[idx[:, u], rows] for u in range(idx.shape[1])])  # [U, B, L]


def check_states(owner: str, states: object) -> ScoredStates:
    """``states`` as a :class:`ScoredStates`; the old strings get a message that gives the new form."""
    if isinstance(states, ScoredStates):
        return states
    if states in ("forward", "backward"):
        cls = "ForwardStates" if states == "forward" else "BackwardStates"
        raise TypeError(
            f"{owner}: states={states!r} is no longer a string; pass states={cls}() in Python, or in YAML "
            f"`states: {{class_path: dflow.rl.{cls}}}`"
        )
    raise TypeError(
        f"{owner}: states must be a ScoredStates (dflow.rl.ForwardStates or dflow.rl.BackwardStates), got {states!r}"
    )
