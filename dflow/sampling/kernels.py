"""Step kernels that act inside the current block of a :class:`~dflow.sampling.BlockSampler`.

A kernel turns the sampling logits of the block ``[B, C, V]`` (``C`` = block length) and the block's
state ``x [B, C]`` into the next state ``x_s [B, C]`` and scores that transition, per token. The
sampler sums the per-token scores into the step's log-probability; RL recomputes them with
:meth:`BlockKernel.log_prob` from the recorded states, so ``log_prob`` must compute exactly what
``sample`` recorded (on-policy ratio exactly 1).

Sibling kernels, one signature (see docs/block_sampling.md for the maths and the gradient caveats):

- :class:`PathKernel`: the sampler's probability-path kernel (mixture or metric) with block-local times;
- :class:`ConfidenceUnmaskKernel`: mask source; reveal the most confident masked positions (LLaDA / Dream);
- :class:`EntropyBoundKernel`: uniform source; DiffusionGemma's entropy-bound acceptance and re-noising.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from dflow.logprobs import log_softmax_gather
from dflow.paths.base import ProbabilityPath, StepSample


@dataclass
class BlockStep:
    """Where a kernel step sits: step ``index`` of ``num_steps`` in the current block, from block-local
    time ``t`` to ``s`` (float ``[B]`` each)."""

    index: int
    num_steps: int
    t: Tensor
    s: Tensor

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


def gumbel_argmax(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per token from ``softmax(logits)``: long ``[B, C]``; the Gumbel noise is the only extra tensor."""
    noise = torch.empty_like(logits).exponential_(generator=generator).log_().neg_().add_(logits)
    return noise.argmax(-1)


def token_log_prob(logits: Tensor, tokens: Tensor, vocab_size: int) -> Tensor:
    """``log softmax(logits)[tokens]`` per token ``[B, C]`` (chunked, float32); states ``>= V`` read as 0."""
    return log_softmax_gather(logits, tokens.clamp_max(vocab_size - 1)[..., None]).squeeze(-1)


class BlockKernel(ABC):
    """Base class of the in-block kernels (sibling classes chosen by ``class_path``)."""

    def check(self, path: ProbabilityPath) -> None:  # noqa: B027 (optional hook, no check by default)
        """Start-up check against the sampler's path; raise ValueError naming the mismatch."""

    def sampling_logits(self, logits: Tensor, step: BlockStep) -> Tensor:
        """The logits the step samples from (a kernel's own temperature schedule); identity by default."""
        return logits

    @abstractmethod
    def sample(
        self, path: ProbabilityPath, logits: Tensor, x: Tensor, step: BlockStep, generator: torch.Generator | None
    ) -> StepSample:
        """Draw the block's next state from ``logits [B, C, V]`` at state ``x [B, C]`` and score it."""

    @abstractmethod
    def log_prob(self, path: ProbabilityPath, logits: Tensor, x: Tensor, x_s: Tensor, step: BlockStep) -> Tensor:
        """Per-token ``log P(x_s | x)`` ``[B, C]``, differentiable in ``logits``; sums to what ``sample`` recorded."""

    def moving(self, path: ProbabilityPath, x: Tensor, x_s: Tensor) -> Tensor:
        """bool ``[B, C]``: the tokens whose score the step counts (RL's ``token_mean`` / per-token units)."""
        return torch.ones_like(x, dtype=torch.bool)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PathKernel(BlockKernel):
    """The sampler path's own kernel (``MixturePath`` / ``MetricPath`` ``sample_step`` and
    ``step_log_prob``) applied to the current block, with the block-local times ``t -> s``."""

    def sample(self, path, logits, x, step, generator=None) -> StepSample:
        return path.sample_step(logits, x, step.t, step.s, generator=generator)

    def log_prob(self, path, logits, x, x_s, step) -> Tensor:
        return path.step_log_prob(logits, x, x_s, step.t, step.s)

    def moving(self, path, x, x_s) -> Tensor:
        return ~path.is_clean(x)


def _require_source(kernel: str, path: ProbabilityPath, want: str) -> None:
    probs = path.source.probs(dtype=torch.float64)
    mask_id = path.source.mask_id
    pure_mask = mask_id is not None and float(probs[mask_id]) == 1.0
    pure_uniform = mask_id is None
    if (want == "mask" and not pure_mask) or (want == "uniform" and not pure_uniform):
        raise ValueError(f"{kernel} needs a path with a pure {want} source, got source={path.source!r}")


CONFIDENCES = ("max_prob", "sampled")


class ConfidenceUnmaskKernel(BlockKernel):
    """Mask source: reveal the most confident masked positions of the block; the rest stay masked.

    Per step, with ``m`` masked positions in the block row: reveal ``n`` of them, ranked by confidence
    (ties: lower position first), each revealed token drawn from ``p = softmax(logits)``:

    - ``n = ceil(m / (S - j))`` at step ``j`` of ``S`` (default; LLaDA's even split), or ``min(k, m)``
      with ``k``, or with ``threshold`` every position whose confidence exceeds it (at least one);
      the block's last step reveals all that are left, so each block ends clean.
    - ``confidence="max_prob"``: ``c_i = max_v p_i(v)``, a function of the logits, so the revealed set
      ``R`` is a deterministic function of the state and ``log P(x_s | x) = sum_{i in R} log p_i(x_s^i)``.
      Scoring a recorded step at other weights keeps the recorded ``R`` (the set is treated as fixed).
    - ``confidence="sampled"`` (LLaDA's ``low_confidence`` remasking): draw ``y_i ~ p_i`` at every masked
      position, ``c_i = p_i(y_i)``, reveal the top ``n``, discard the other draws. The step log-prob adds
      the probability of the set choice: every unrevealed masked ``j`` must rank below the revealed
      set, so ``log P = sum_{i in R} log p_i(y_i) + sum_{j not in R} log sum_v p_j(v) [v ranks below R]``
      with "below" meaning ``p_j(v) < c*`` (or ``= c*`` and ``j`` after the boundary position), ``c*``
      the smallest revealed confidence; with ``threshold``, ``p_j(v) <= threshold`` when every revealed
      confidence exceeds it. Exact at any weights.

    Example::

        sampler = BlockSampler(MixturePath(MaskSource(V)), ConfidenceUnmaskKernel(), block_len=32, steps_per_block=8)
    """

    def __init__(self, k: int | None = None, threshold: float | None = None, confidence: str = "max_prob") -> None:
        if k is not None and threshold is not None:
            raise ValueError(f"ConfidenceUnmaskKernel: give k or threshold, not both; got k={k}, threshold={threshold}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"ConfidenceUnmaskKernel: k must be an int >= 1 or None, got k={k!r}")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
            raise ValueError(f"ConfidenceUnmaskKernel: threshold must be in [0, 1) or None, got {threshold!r}")
        if confidence not in CONFIDENCES:
            raise ValueError(f"ConfidenceUnmaskKernel: confidence must be one of {CONFIDENCES}, got {confidence!r}")
        self.k, self.threshold, self.confidence = k, threshold, confidence

    def check(self, path: ProbabilityPath) -> None:
        _require_source("ConfidenceUnmaskKernel", path, "mask")

    def num_revealed(self, masked: Tensor, conf: Tensor, step: BlockStep) -> Tensor:
        """long ``[B]``: how many masked positions the step reveals."""
        m = masked.sum(-1)  # [B]
        if step.is_last:
            return m
        if self.threshold is not None:
            n = (masked & (conf > self.threshold)).sum(-1).clamp_min(1)
        elif self.k is not None:
            n = torch.full_like(m, self.k)
        else:
            left = step.num_steps - step.index
            n = (m + left - 1) // left  # ceil(m / steps left)
        return torch.minimum(n, m)

    @staticmethod
    def reveal(masked: Tensor, conf: Tensor, n: Tensor) -> Tensor:
        """bool ``[B, C]``: the ``n`` masked positions of highest confidence (ties: lower position first)."""
        key = conf.masked_fill(~masked, -1.0)  # confidences lie in [0, 1]
        order = key.sort(dim=-1, descending=True, stable=True).indices  # [B, C]
        positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)  # rank[i]: place of position i in the order
        return masked & (rank < n[:, None])

    def sample(self, path, logits, x, step, generator=None) -> StepSample:
        masked = x == path.source.mask_id  # [B, C]
        draw = gumbel_argmax(logits, generator)  # [B, C]
        probs = torch.softmax(logits.float(), dim=-1)  # [B, C, V]
        conf = probs.max(-1).values if self.confidence == "max_prob" else probs.gather(-1, draw[..., None]).squeeze(-1)
        del probs
        revealed = self.reveal(masked, conf, self.num_revealed(masked, conf, step))
        x_s = torch.where(revealed, draw, x)
        return StepSample(x_s=x_s, log_prob=self.log_prob(path, logits, x, x_s, step), draw=draw)

    def log_prob(self, path, logits, x, x_s, step) -> Tensor:
        V, mask_id = path.vocab_size, path.source.mask_id
        masked = x == mask_id
        revealed = masked & (x_s != mask_id)
        lp = token_log_prob(logits, x_s, V).masked_fill(~revealed, 0.0)  # [B, C]
        lp = lp.masked_fill(~masked & (x_s != x), float("-inf"))  # a clean token never changes
        if self.confidence == "sampled":
            lp = lp + self._selection_log_prob(logits, masked, revealed, x_s, step)
        return lp

    def _selection_log_prob(self, logits: Tensor, masked: Tensor, revealed: Tensor, x_s: Tensor, step: BlockStep):
        # log P(every unrevealed masked draw ranks below the revealed set), per unrevealed position.
        B, C, V = logits.shape
        probs = torch.softmax(logits.float(), dim=-1)  # [B, C, V], the numbers sample() ranked by
        p = probs.detach()
        conf = p.gather(-1, x_s.clamp_max(V - 1)[..., None]).squeeze(-1)  # [B, C] confidence of the revealed draws
        c_star = conf.masked_fill(~revealed, math.inf).min(-1).values  # [B] smallest revealed confidence
        pos = torch.arange(C, device=x_s.device).expand(B, C)
        last = torch.where(revealed & (conf == c_star[:, None]), pos, -1).max(-1).values  # [B] boundary position
        bound, allow_equal = c_star, pos > last[:, None]  # top-n rule: below the boundary in the ranking
        if self.threshold is not None and not step.is_last:
            above = c_star > self.threshold  # [B] the threshold alone chose the set: the others are <= threshold
            bound = torch.where(above, torch.full_like(c_star, self.threshold), c_star)
            allow_equal = allow_equal | above[:, None]
        # a set the rule cannot choose has probability 0: the wrong size, or several below the threshold
        count, m = revealed.sum(-1), masked.sum(-1)
        if step.is_last:
            valid = count == m
        elif self.threshold is not None:
            valid = (count >= m.clamp_max(1)) & ((c_star > self.threshold) | (count == 1))
        else:
            valid = count == self.num_revealed(masked, conf, step)
        below = (p < bound[:, None, None]) | ((p == bound[:, None, None]) & allow_equal[..., None])  # [B, C, V]
        mass = (probs * below).sum(-1)  # [B, C] with gradient; the set of values below is held fixed
        unrevealed = masked & ~revealed
        safe = torch.where(unrevealed, mass, torch.ones_like(mass))  # no 0 * log 0 in the gradient
        out = torch.log(safe).masked_fill(~unrevealed, 0.0)
        return out.masked_fill(~valid[:, None], float("-inf"))

    def moving(self, path, x, x_s) -> Tensor:
        masked = x == path.source.mask_id
        if self.confidence == "sampled":
            return masked  # every masked position carries a term
        return masked & (x_s != path.source.mask_id)  # only the revealed ones do


FINAL_STEPS = ("sample", "argmax")


class EntropyBoundKernel(BlockKernel):
    """Uniform source: DiffusionGemma's entropy-bound acceptance with its linear temperature schedule.

    Step ``j`` of ``S`` samples from ``softmax(logits / T_j)`` with
    ``T_j = t_min + (t_max - t_min) (S - j) / S`` (``t_max`` at the first step, decreasing). With the
    per-token entropies ``H_i`` of that posterior sorted ascending, it accepts the longest prefix with
    ``sum(H) - max(H) <= entropy_bound`` (ties: lower position first; the lowest-entropy token is
    always accepted), takes the posterior draw at accepted positions and re-noises every other
    position uniformly. The accepted set ``A`` is a function of the logits, so::

        log P(x_s | x) = sum_{i in A} log p_i(x_s^i) + |C \\ A| log(1 / V)

    exactly, at any weights (``A`` is recomputed from the logits it is scored with).

    ``final_step``: ``"sample"`` (default) accepts every position at the block's last step, so the
    block ends on a draw from the posterior; ``"argmax"`` ends it on the posterior's argmax, as
    ``DiffusionGemmaForBlockDiffusion.generate`` returns (that step is deterministic: log-prob 0).
    """

    def __init__(
        self, entropy_bound: float = 0.1, t_min: float = 0.4, t_max: float = 0.8, final_step: str = "sample"
    ) -> None:
        if not (isinstance(entropy_bound, (int, float)) and entropy_bound > 0 and math.isfinite(entropy_bound)):
            raise ValueError(f"EntropyBoundKernel: entropy_bound must be a finite number > 0, got {entropy_bound!r}")
        for name, val in (("t_min", t_min), ("t_max", t_max)):
            if not (isinstance(val, (int, float)) and val >= 0 and math.isfinite(val)):
                raise ValueError(f"EntropyBoundKernel: {name} must be a finite number >= 0, got {name}={val!r}")
        if t_max <= 0 or t_max < t_min:
            raise ValueError(f"EntropyBoundKernel: need t_max > 0 and t_max >= t_min, got t_min={t_min}, t_max={t_max}")
        if final_step not in FINAL_STEPS:
            raise ValueError(f"EntropyBoundKernel: final_step must be one of {FINAL_STEPS}, got {final_step!r}")
        self.entropy_bound, self.t_min, self.t_max, self.final_step = float(entropy_bound), t_min, t_max, final_step

    def check(self, path: ProbabilityPath) -> None:
        _require_source("EntropyBoundKernel", path, "uniform")

    def temperature(self, step: BlockStep) -> float:
        """``T_j``; DiffusionGemma's ``cur_step`` counts down ``S..1``, i.e. ``S - j``."""
        return self.t_min + (self.t_max - self.t_min) * (step.num_steps - step.index) / step.num_steps

    def sampling_logits(self, logits: Tensor, step: BlockStep) -> Tensor:
        return logits / self.temperature(step)

    def _argmax_step(self, step: BlockStep) -> bool:
        return step.is_last and self.final_step == "argmax"

    @torch.no_grad()
    def accepted(self, logits: Tensor, step: BlockStep) -> Tensor:
        """bool ``[B, C]``: the positions that keep their posterior draw."""
        if step.is_last:
            return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, C, V]
        entropy = -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1)  # [B, C], 0 log 0 = 0
        del logp
        h, order = entropy.sort(dim=-1, stable=True)  # ascending
        keep = (h.cumsum(-1) - h) <= self.entropy_bound  # sum(H) - max(H) over the prefix
        return torch.zeros_like(keep).scatter_(-1, order, keep)

    def sample(self, path, logits, x, step, generator=None) -> StepSample:
        if self._argmax_step(step):
            x_s = logits.argmax(-1)
            return StepSample(x_s=x_s, log_prob=self.log_prob(path, logits, x, x_s, step), draw=x_s)
        draw = gumbel_argmax(logits, generator)  # [B, C]
        noise = torch.randint(0, path.vocab_size, x.shape, generator=generator, device=x.device)
        accepted = self.accepted(logits, step)
        x_s = torch.where(accepted, draw, noise)
        return StepSample(x_s=x_s, log_prob=self._log_prob(path, logits, x_s, accepted), draw=draw)

    def log_prob(self, path, logits, x, x_s, step) -> Tensor:
        if self._argmax_step(step):
            # deterministic given the state: log 1, and (like any selection) treated as fixed in the gradient
            return logits[..., 0].float() * 0.0
        return self._log_prob(path, logits, x_s, self.accepted(logits, step))

    @staticmethod
    def _log_prob(path: ProbabilityPath, logits: Tensor, x_s: Tensor, accepted: Tensor) -> Tensor:
        lp = token_log_prob(logits, x_s, path.vocab_size)  # [B, C]
        return torch.where(accepted, lp, lp.new_full((), -math.log(path.vocab_size)))
