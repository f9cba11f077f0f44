"""Warnings for RL runs that spend compute and learn nothing, or drift: each said once per run.

The failure modes researchers report with GRPO-style training, checked on every RL step's numbers:

- no prompt group has any reward spread for ``flat_steps`` steps in a row: every group-relative
  advantage is 0 and the update is empty;
- every group's rollouts are identical for ``flat_steps`` steps: the policy no longer explores;
- the policy's per-token entropy (the rollout's ``-log pi`` per token) falls below ``entropy_floor``;
- the KL to the reference exceeds ``kl_limit``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


@dataclass
class TrainingWatch:
    """What counts as a failure (``None`` switches a check off).

    Attributes:
        flat_steps: RL steps in a row without reward spread (or with identical rollouts) in every group.
        entropy_floor: per-token entropy of the rollouts below which the policy has collapsed.
        kl_limit: KL to the reference above which the policy has drifted far from the base.
    """

    flat_steps: int | None = 5
    entropy_floor: float | None = 1e-3
    kl_limit: float | None = 10.0
    _flat: int = field(default=0, init=False, repr=False)
    _same: int = field(default=0, init=False, repr=False)
    _said: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flat_steps is not None and self.flat_steps < 1:
            raise ValueError(f"TrainingWatch: flat_steps must be >= 1 or null, got flat_steps={self.flat_steps}")

    def check(
        self, step: int, frac_flat_groups: float, frac_identical_groups: float, entropy: float, kl: float | None
    ) -> list[str]:
        """The warnings this RL step raises (each kind once per run); they are also emitted."""
        self._flat = self._flat + 1 if frac_flat_groups >= 1.0 else 0
        self._same = self._same + 1 if frac_identical_groups >= 1.0 else 0
        found = []
        if self.flat_steps is not None and self._flat >= self.flat_steps:
            found.append(
                (
                    "flat",
                    f"RL step {step}: no prompt group has had any reward spread for {self._flat} steps, so every "
                    "group-relative advantage is 0 and nothing is learned; raise group_size or the rollout "
                    "temperature, or use a denser reward (a partial-credit one)",
                )
            )
        if self.flat_steps is not None and self._same >= self.flat_steps:
            found.append(
                (
                    "identical",
                    f"RL step {step}: every group's rollouts have been identical for {self._same} steps: the policy "
                    "no longer explores (a collapsed policy or a deterministic sampler)",
                )
            )
        if self.entropy_floor is not None and entropy < self.entropy_floor:
            found.append(
                (
                    "entropy",
                    f"RL step {step}: the rollouts' entropy is {entropy:.2e} per token (< {self.entropy_floor:g}): the "
                    "policy has collapsed; lower the learning rate or add a KL penalty",
                )
            )
        if self.kl_limit is not None and kl is not None and kl > self.kl_limit:
            found.append(
                (
                    "kl",
                    f"RL step {step}: the KL to the reference is {kl:.3g} (> {self.kl_limit:g}): the policy has "
                    "drifted far from the base; lower the learning rate or raise kl.beta",
                )
            )
        new = [message for kind, message in found if kind not in self._said]
        self._said |= {kind for kind, _ in found}
        for message in new:
            warnings.warn(message, stacklevel=2)
        return new
