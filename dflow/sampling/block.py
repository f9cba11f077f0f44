"""Block (semi-autoregressive) sampling: blocks left to right, a fixed number of kernel steps each.

The MDP is the one of :class:`~dflow.sampling.Sampler` with the state restricted to move inside one
block at a time: the sequence ``x [B, L]`` starts from the source (``x_0 ~ p_0``), and block ``b``
(positions ``[b C, (b + 1) C)``) takes ``S`` kernel steps while earlier blocks are frozen and later
blocks keep their source draw (masks for a mask source, noise for a uniform one). Step ``k = b S + j``
has the policy ``P_theta(x_{k+1} | x_k)`` of the block kernel; the trajectory has ``K = (L / C) S`` steps
and the same :class:`~dflow.sampling.Trajectory` record as the plain sampler, so every likelihood
estimator reads it unchanged.

How the policy is called:

- a plain denoiser ``(x [B, L], t [B], cond) -> logits [B, L, V]`` sees the whole sequence at the
  block-local time ``t`` (LLaDA's semi-autoregressive scheme, no cache); its logits of the current
  block drive the kernel;
- a policy with ``block_session(cond, batch_size, seq_len, block_len)`` (e.g.
  :class:`~dflow.models.DiffusionGemmaDenoiser`) returns a :class:`BlockSession` that keeps its own
  per-rollout state: a KV cache of the prompt and finished blocks, self-conditioning on the previous
  step's sampling logits. A stateful session is replayed in order when RL rescores steps, so what
  it carries is recomputed under the weights being scored (see docs/block_sampling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dflow.paths.base import ProbabilityPath
from dflow.sampling.kernels import BlockKernel, BlockStep, PathKernel
from dflow.sampling.sampler import Policy, Sampler, rollout_device
from dflow.sampling.trajectory import Trajectory, compact_dtype


@runtime_checkable
class BlockSession(Protocol):
    """A policy's state over one batch of block rollouts (or one rescoring of them).

    Attributes:
        stateful: each step depends on earlier steps of its block beyond the state ``x`` (self-
            conditioning), so rescoring step ``j`` replays steps ``0..j`` of its block.
    """

    stateful: bool

    def begin_block(self, x: Tensor, block: int) -> None:
        """Block ``block`` starts; ``x [B, L]`` holds every earlier block finished (to cache them)."""

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits of the current block ``[B, C, V]`` (or of the whole sequence ``[B, L, V]``) at state ``x [B, L]``."""

    def feedback(self, logits: Tensor) -> None:
        """The sampling logits ``[B, C, V]`` this step drew from (self-conditioning for the next step)."""


class PolicySession:
    """The session of a plain denoiser: one call on the whole sequence per step, guidance as the sampler's."""

    stateful = False

    def __init__(self, sampler: Sampler, policy: Policy, cond: Any) -> None:
        self.sampler, self.policy, self.cond = sampler, policy, cond

    def begin_block(self, x: Tensor, block: int) -> None:
        pass

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.policy(x, t, self.cond)
        if self.sampler.uses_guidance(self.cond):
            uncond = self.policy(x, t, None)
            out = uncond + self.sampler.guidance_scale * (out - uncond)
        return out

    def feedback(self, logits: Tensor) -> None:
        pass


class BlockSampler(Sampler):
    """Blocks of ``block_len`` tokens left to right, ``steps_per_block`` kernel steps each.

    Args:
        path: the probability path (its source gives ``x_0``; :class:`PathKernel` uses its kernel).
        kernel: the in-block step kernel (default :class:`PathKernel`).
        block_len: ``C``; a rollout's ``seq_len`` must be a multiple of it.
        steps_per_block: ``S``, fixed (no adaptive stopping), so every rollout has ``K = (L / C) S`` steps.
        time_grid, shift: the block-local time grid ``t_0 = 0 < ... < t_S = 1`` (``PathKernel`` steps
            from ``t_j`` to ``t_{j+1}``; a time-conditioned denoiser is called at ``t_j``).
        guidance_scale, temperature, record_draws: as for :class:`Sampler` (guidance: plain denoisers only).

    ``Trajectory.times[k]`` is the block-local time of state ``k`` (so it restarts at 0 with each block),
    ``times[K] = 1``. ``num_steps`` is ``S``; a trajectory's step count is ``K``.

    Example::

        sampler = BlockSampler(MixturePath(UniformSource(V)), EntropyBoundKernel(), block_len=4, steps_per_block=8)
        traj = sampler.rollout(model, prompts, batch_size=B, seq_len=8, generator=g)
        new = sampler.log_probs(model, traj)   # == traj.log_probs at the same weights
    """

    def __init__(
        self,
        path: ProbabilityPath,
        kernel: BlockKernel | None = None,
        block_len: int = 32,
        steps_per_block: int = 8,
        time_grid: str = "uniform",
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        shift: float = 3.0,
        record_draws: bool = False,
    ) -> None:
        super().__init__(path, steps_per_block, time_grid, guidance_scale, temperature, shift, record_draws)
        if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len < 1:
            raise ValueError(f"BlockSampler: block_len must be an int >= 1, got block_len={block_len!r}")
        kernel = kernel if kernel is not None else PathKernel()
        if not isinstance(kernel, BlockKernel):
            raise ValueError(f"BlockSampler: kernel must be a dflow BlockKernel, got {kernel!r}")
        kernel.check(path)
        self.kernel, self.block_len, self.steps_per_block = kernel, block_len, steps_per_block

    def __repr__(self) -> str:
        return (
            f"BlockSampler(path={self.path!r}, kernel={self.kernel!r}, block_len={self.block_len}, "
            f"steps_per_block={self.steps_per_block}, time_grid={self.grid_name!r}, "
            f"guidance_scale={self.guidance_scale}, temperature={self.temperature})"
        )

    # ------------------------------------------------------------------ helpers
    def session(self, policy: Policy, cond: Any, batch_size: int, seq_len: int) -> BlockSession:
        """The policy's own :class:`BlockSession` when it has one, else a :class:`PolicySession`."""
        make = getattr(policy, "block_session", None)
        if make is None:
            return PolicySession(self, policy, cond)
        if self.uses_guidance(cond):
            raise ValueError(
                f"BlockSampler: guidance_scale={self.guidance_scale} needs a plain denoiser; "
                f"{type(policy).__name__} samples through its own block session"
            )
        return make(cond, batch_size, seq_len, self.block_len)

    def step_of(self, k: int, batch_size: int, device: torch.device | str) -> tuple[int, BlockStep]:
        """Block index and :class:`BlockStep` of trajectory step ``k``."""
        b, j = divmod(k, self.steps_per_block)
        times = self.times.to(device)
        return b, BlockStep(j, self.steps_per_block, times[j].expand(batch_size), times[j + 1].expand(batch_size))

    def _block_logits(self, session: BlockSession, x: Tensor, step: BlockStep, blk: slice) -> Tensor:
        """Sampling logits of the block ``[B, C, V]``: float32, temperature, the kernel's schedule; fed back."""
        out = self._sampling_logits(session, x, step, blk)
        session.feedback(out)
        return out

    def _sampling_logits(self, session: BlockSession, x: Tensor, step: BlockStep, blk: slice) -> Tensor:
        """As :meth:`_block_logits`, without feeding them back to the session."""
        out = session.logits(x, step.t)
        want = (x.shape[0], x.shape[1], self.path.vocab_size)
        if not torch.is_tensor(out) or out.dim() != 3 or out.shape[0] != x.shape[0] or out.shape[2] != want[2]:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"policy must return logits of shape [B, L, V]={want} or [B, C, V], got {got}")
        if out.shape[1] == x.shape[1]:
            out = out[:, blk]
        elif out.shape[1] != blk.stop - blk.start:
            raise ValueError(f"policy logits cover {out.shape[1]} positions; want L={x.shape[1]} or C={self.block_len}")
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        if self.temperature != 1.0:
            out = out / self.temperature
        return self.kernel.sampling_logits(out, step)

    def _check_shape(self, where: str, seq_len: int) -> int:
        if seq_len % self.block_len:
            raise ValueError(f"{where}: seq_len={seq_len} must be a multiple of block_len={self.block_len}")
        return seq_len // self.block_len

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(
        self,
        policy: Policy,
        cond: Any = None,
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Trajectory:
        """Sample ``batch_size`` sequences of ``seq_len`` tokens block by block and record the trajectory."""
        device = rollout_device("BlockSampler.rollout", cond, batch_size, seq_len, generator, device)
        num_blocks = self._check_shape("BlockSampler.rollout", seq_len)
        S, B, L, C = self.steps_per_block, batch_size, seq_len, self.block_len
        K = num_blocks * S
        sdt = compact_dtype(self.path.num_states)
        states = torch.empty(K + 1, B, L, dtype=sdt, device=device)
        argmax = torch.empty(K, B, L, dtype=sdt, device=device)
        draws = torch.empty(K, B, L, dtype=sdt, device=device) if self.record_draws else None
        log_probs = torch.empty(B, K, dtype=torch.float32, device=device)
        x = self.path.source.sample((B, L), generator=generator, device=device)  # [B, L] x_0 ~ p_0
        states[0] = x
        session = self.session(policy, cond, B, L)
        for b in range(num_blocks):
            blk = slice(b * C, (b + 1) * C)
            session.begin_block(x, b)
            for j in range(S):
                k = b * S + j
                _, step = self.step_of(k, B, device)
                logits = self._block_logits(session, x, step, blk)  # [B, C, V]
                out = self.kernel.sample(self.path, logits, x[:, blk], step, generator)
                log_probs[:, k] = out.log_prob.sum(-1)
                argmax[k] = x
                argmax[k, :, blk] = torch.where(self.path.is_clean(x[:, blk]), x[:, blk], logits.argmax(-1))
                if draws is not None:
                    draws[k] = x
                    draws[k, :, blk] = out.draw
                x = x.clone()
                x[:, blk] = out.x_s
                states[k + 1] = x
        times = torch.cat([self.times[:-1].repeat(num_blocks), self.times[-1:]]).to(device)  # [K+1] block-local
        passes = K * (2 if self.uses_guidance(cond) else 1)
        return Trajectory(states, times, log_probs, x.long(), argmax, draws, cond, passes, rollout_batch_size=B)

    # ------------------------------------------------------------------ rescoring
    def token_log_probs(self, policy: Policy, traj: Trajectory, steps: Sequence[int] | Tensor | None = None) -> Tensor:
        """Per-token ``log P_theta(x^i_{k+1} | x_k)`` for the chosen steps, with gradient: ``[B, len(steps), L]``
        (0 outside each step's block). A stateful session replays its block up to the last chosen step."""
        K, (B, L) = traj.num_steps, traj.x1.shape
        num_blocks = self._check_shape("BlockSampler.token_log_probs", L)
        if K != num_blocks * self.steps_per_block:
            raise ValueError(
                f"trajectory has {K} steps; this BlockSampler makes {num_blocks} blocks x {self.steps_per_block} "
                f"steps = {num_blocks * self.steps_per_block} for seq_len={L}"
            )
        steps = list(range(K)) if steps is None else [int(k) for k in steps]
        if any(k < 0 or k >= K for k in steps):
            raise ValueError(f"steps must lie in [0, {K}), got {steps}")
        S, C = self.steps_per_block, self.block_len
        session = self.session(policy, traj.cond, B, L)
        scores: dict[int, Tensor] = {}
        for b in sorted({k // S for k in steps}):
            blk = slice(b * C, (b + 1) * C)
            wanted = {k for k in steps if k // S == b}
            session.begin_block(traj.state(b * S), b)
            for k in range(b * S, max(wanted) + 1):
                if k not in wanted and not session.stateful:
                    continue
                x, x_s = traj.state(k), traj.state(k + 1)
                _, step = self.step_of(k, B, x.device)
                logits = self._block_logits(session, x, step, blk)
                if k in wanted:
                    lp = self.kernel.log_prob(self.path, logits, x[:, blk], x_s[:, blk], step)  # [B, C]
                    scores[k] = torch.nn.functional.pad(lp, (blk.start, L - blk.stop))  # [B, L]
        return torch.stack([scores[k] for k in steps], dim=1)

    def moving_tokens(self, traj: Trajectory, k: int) -> Tensor:
        """bool ``[B, L]``: the tokens step ``k`` scores (inside its block, as the kernel says)."""
        blk = slice((k // self.steps_per_block) * self.block_len, (k // self.steps_per_block + 1) * self.block_len)
        x, x_s = traj.state(k), traj.state(k + 1)
        out = torch.zeros_like(x, dtype=torch.bool)
        out[:, blk] = self.kernel.moving(self.path, x[:, blk], x_s[:, blk])
        return out

    def span_token_log_probs(self, policy: Policy, traj: Trajectory, spans: Sequence[tuple[int, int]]) -> Tensor:
        """TraceRL-style span units on block rollouts: per token ``[B, len(spans), L]``, with gradient.

        Span ``(b, e)`` covers steps ``b .. e - 1`` of one block. It is scored in one pass at the
        recorded state ``x_b``: the path's own kernel for one coarse step of the block from block-local
        time ``t_b`` to ``t_e``, around the posterior the sampler would use at step ``b`` (temperature and
        the kernel's own schedule included, no self-conditioning: a session is not replayed), on the
        block's positions only (0 elsewhere). It is a surrogate, like the plain sampler's spans: the
        sampler took ``e - b`` finer kernel steps."""
        K, (B, L) = traj.num_steps, traj.x1.shape
        self._check_shape("BlockSampler.span_token_log_probs", L)
        S, C = self.steps_per_block, self.block_len
        for b, e in spans:
            if not (0 <= b < e <= K) or b // S != (e - 1) // S:
                raise ValueError(
                    f"span ({b}, {e}) must lie inside one block of steps_per_block={S} steps (trajectory of {K} steps)"
                )
        session = self.session(policy, traj.cond, B, L)
        scores: dict[tuple[int, int], Tensor] = {}
        for blk_index in sorted({b // S for b, _ in spans}):
            blk = slice(blk_index * C, (blk_index + 1) * C)
            session.begin_block(traj.state(blk_index * S), blk_index)
            for b, e in sorted(span for span in spans if span[0] // S == blk_index):
                x_b, x_e = traj.state(b), traj.state(e)
                _, step = self.step_of(b, B, x_b.device)
                logits = self._sampling_logits(session, x_b, step, blk)  # [B, C, V]
                s = self.times[e - blk_index * S].to(x_b.device).expand(B)  # block-local t_e (1 at a block's end)
                lp = self.path.step_log_prob(logits, x_b[:, blk], x_e[:, blk], step.t, s)  # [B, C]
                scores[(b, e)] = torch.nn.functional.pad(lp, (blk.start, L - blk.stop))  # [B, L]
        return torch.stack([scores[(b, e)] for b, e in spans], dim=1)

    def block_positions(self, k: int, seq_len: int, device: torch.device | str) -> Tensor:
        """bool ``[L]``: the positions of step ``k``'s block."""
        b = k // self.steps_per_block
        out = torch.zeros(seq_len, dtype=torch.bool, device=device)
        out[b * self.block_len : (b + 1) * self.block_len] = True
        return out
