"""``TestbedTask``: a task small enough that the policy's whole output distribution is computed exactly.

The answer is ``L`` values in ``[0, V)`` (default ``V = 3``, ``L = 5``: 243 answers; a mask source has
``4**5 = 1024`` sampler states). The prompt spells a target ``x*`` (prompt id ``x*_i + 1``; 0 is the pad
id), so a base trained on some targets generalises to the prompts of the other splits by copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dflow.tasks.base import Prompt, Task, TaskBatch, check_split, choose_prompts
from dflow.tasks.grid import palette_tiles, save_grid
from dflow.testbed.rewards import ExactMatch, PartialCredit, TrapReward
from dflow.testbed.spec import TargetSpec, spec_tensors
from dflow.testbed.states import all_sequences

REWARD_KINDS = ("partial", "sparse", "trap")
_PALETTE = np.array(  # value -> RGB, cycled when V > 8
    [[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.3, 0.9], [0.95, 0.8, 0.1], [0.6, 0.2, 0.8], [0.1, 0.8, 0.8]]
    + [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
)


class TestbedTask(Task):
    """The exact testbed's task: write the prompt's target, scored by a chosen reward.

    Splits: the ``V**L`` targets in a seeded random order; the first ``num_test_prompts`` are
    ``test``, the next ``num_rl_prompts`` are ``rl``, and the rest are ``pretrain`` (disjoint by
    construction). Pretraining data are noisy copies: each row is built around the prompt's
    target (or, with probability ``pretrain_decoy_prob``, around its decoy), keeping each position
    with probability ``pretrain_keep`` and drawing it uniformly otherwise. A base trained on them is
    broad (defaults: 0.55-0.59 expected partial credit and a 5-7% chance of the exact target, measured
    in docs/testbed.md), so RL has headroom, and it already visits the trap's decoy.

    ``reward`` picks what :meth:`reward` returns (the recipe's ``source: task``):
    ``"partial"`` (:class:`PartialCredit`), ``"sparse"`` (:class:`ExactMatch`) or ``"trap"``
    (:class:`TrapReward` with ``trap_height``). :meth:`correct` is the exact match whatever the reward.

    Args:
        vocab_size: ``V`` symbols.
        seq_len: ``L`` positions.
        num_rl_prompts / num_test_prompts: sizes of the ``rl`` and ``test`` splits.
        reward: the task's reward, one of ``"partial"``, ``"sparse"``, ``"trap"``.
        trap_height: the decoy's reward under the trap, in ``(0, 1)``.
        pretrain_keep: probability that a pretraining token equals the centre's (else uniform).
        pretrain_decoy_prob: probability that a pretraining row is built around the decoy.
        seed: seeds the order of the targets (hence the splits).
    """

    name = "testbed"

    def __init__(
        self,
        vocab_size: int = 3,
        seq_len: int = 5,
        num_rl_prompts: int = 4,
        num_test_prompts: int = 4,
        reward: str = "partial",
        trap_height: float = 0.6,
        pretrain_keep: float = 0.5,
        pretrain_decoy_prob: float = 0.25,
        seed: int = 0,
    ) -> None:
        for field, value, low in (
            ("vocab_size", vocab_size, 2),
            ("seq_len", seq_len, 1),
            ("num_rl_prompts", num_rl_prompts, 1),
            ("num_test_prompts", num_test_prompts, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TestbedTask: {field} must be an int >= {low}, got {field}={value!r}")
        if num_rl_prompts + num_test_prompts >= vocab_size**seq_len:
            raise ValueError(
                f"TestbedTask: num_rl_prompts + num_test_prompts = {num_rl_prompts + num_test_prompts} leaves no "
                f"pretraining prompt among the {vocab_size}**{seq_len} = {vocab_size**seq_len} targets"
            )
        if reward not in REWARD_KINDS:
            raise ValueError(f"TestbedTask: reward must be one of {REWARD_KINDS}, got reward={reward!r}")
        for field, prob in (("pretrain_keep", pretrain_keep), ("pretrain_decoy_prob", pretrain_decoy_prob)):
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
                raise ValueError(f"TestbedTask: {field} must be in [0, 1], got {field}={prob!r}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.prompt_len, self.prompt_vocab_size = seq_len, vocab_size + 1
        self.categories = ("testbed",)
        self.reward_kind = reward
        self.trap_height = float(trap_height)
        self.pretrain_keep, self.pretrain_decoy_prob = float(pretrain_keep), float(pretrain_decoy_prob)
        self.rewards: dict[str, Any] = {
            "partial": PartialCredit(),
            "sparse": ExactMatch(),
            "trap": TrapReward(trap_height),
        }
        order = torch.randperm(vocab_size**seq_len, generator=torch.Generator().manual_seed(seed))
        targets = all_sequences(vocab_size, seq_len)[order].tolist()  # [V**L, L] in the seeded order
        prompts = [
            Prompt("target " + " ".join(map(str, t)), "testbed", TargetSpec.from_target(t, vocab_size)) for t in targets
        ]
        cut = num_test_prompts + num_rl_prompts
        self._prompts = {
            "test": prompts[:num_test_prompts],
            "rl": prompts[num_test_prompts:cut],
            "pretrain": prompts[cut:],
        }

    def __repr__(self) -> str:
        return (
            f"TestbedTask(vocab_size={self.vocab_size}, seq_len={self.seq_len}, reward={self.reward_kind!r}, "
            f"rl={len(self._prompts['rl'])}, test={len(self._prompts['test'])})"
        )

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        target, _ = spec_tensors(prompts)
        if target.numel() and (target.shape[1] != self.seq_len or int(target.max()) >= self.vocab_size):
            raise ValueError(f"prompts are not prompts of {self!r}: targets of shape {tuple(target.shape)}")
        return target.view(-1, self.prompt_len) + 1  # [B, Lc], 0 stays the pad / null id

    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        prompts = choose_prompts(self.prompts(split), n, generator)
        target, decoy = spec_tensors(prompts)  # [n, L] each
        around_decoy = torch.rand(n, 1, generator=generator) < self.pretrain_decoy_prob  # [n, 1]
        centre = torch.where(around_decoy, decoy, target)
        keep = torch.rand(n, self.seq_len, generator=generator) < self.pretrain_keep  # [n, L]
        noise = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=generator)
        return TaskBatch(torch.where(keep, centre, noise), self.encode_prompts(prompts), prompts)

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        self.check_prompts(prompts)
        out = self.rewards[self.reward_kind](self.check_x1(x1, prompts), prompts)
        return out.to(x1.device)

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        self.check_prompts(prompts)
        return (self.rewards["sparse"](self.check_x1(x1, prompts), prompts) == 1.0).to(x1.device)

    def embedding(self) -> Tensor:
        """Symbols evenly spaced on ``[0, 1]`` (float ``[V, 1]``): a metric path's distance is ``|a - b|``."""
        return torch.linspace(0.0, 1.0, self.vocab_size, dtype=torch.float32)[:, None]

    def render(self, x1: Tensor, prompts: Sequence[Prompt] | None, path: str | Path, ncol: int = 8) -> Path:
        """One row of coloured cells per sample, captioned with the prompt text."""
        values = self.check_x1(x1, prompts).numpy() % len(_PALETTE)
        tiles = palette_tiles(values.reshape(-1, 1, self.seq_len), _PALETTE, scale=8)
        captions = [p.text for p in prompts] if prompts is not None else None
        return save_grid(tiles, path, captions, ncol)
