"""SPG's sandwiched bounds: a lower (ELBO) and an upper (EUBO) bound on ``log pi(x_1)`` from the same
masked states, for a mask source (Sandwiched Policy Gradient, Wang et al. 2025).

With ``M`` draws ``j`` of a masked set ``S_j`` (block-wise by default), its weight ``w_j`` and
``p_ij = p_theta(x_1^i | x_1 with S_j masked, c)``:

    lower = (1/M) sum_j w_j sum_{i in S_j} log p_ij                       (ELBO, MDLM form)
    upper = sum_i (1/beta) log[ (1/M) sum_j w_j [i in S_j] p_ij^beta ]   (EUBO, log outside the mean)

The objective :class:`~dflow.rl.objectives.SandwichedObjective` picks the lower bound for a
positive advantage and the upper one (or a mixture) for a negative one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dflow.logprobs import scoring_logits
from dflow.paths.mixture import MixturePath
from dflow.paths.sources import MaskSource
from dflow.rl.likelihood.base import LikelihoodEstimator, UnitPlan, token_scores
from dflow.rng import draw_device
from dflow.sampling import Sampler, Trajectory


def source_error(owner: str, maths: str, sampler: Sampler) -> ValueError:
    """The error for a method given a path or source its maths does not cover, naming both."""
    path = sampler.path
    source = getattr(path, "source", None)
    return ValueError(
        f"{owner}: {maths}, so it needs a MixturePath with a MaskSource; got path={type(path).__name__} "
        f"with source={type(source).__name__ if source is not None else None}"
    )


class SandwichedBounds(LikelihoodEstimator):
    """SPG: two units per sample, ``[B, 2]``: column 0 the ELBO (lower bound), column 1 the EUBO
    (upper bound) of ``log pi_theta(x_1 | c)``, both from the same ``num_draws`` masked copies of
    ``x_1`` (one forward pass each; theta, old and reference score the same masks).

    Masks, per sample and draw (exact counts, as SPG's code draws them):

    - ``block_length=None``: ``n ~ U{1..L}`` positions chosen uniformly; ``w = L / n``.
    - ``block_length=Bl`` (block-wise, SPG's default): a block ``c`` uniform over the
      ``ceil(L / Bl)`` blocks, ``n ~ U{1..|block c|}`` of its positions masked at random, every later
      block fully masked, every earlier block clean: the state semi-autoregressive block decoding
      passes through. ``score_later_blocks=True`` (SPG's code): every masked token is scored, with
      ``w = L / (masked count)``. ``False``: only block ``c``'s masked tokens, with
      ``w = num_blocks |block c| / n``, the exact estimator of the block-order ELBO.

    The denoiser sees the time ``t`` whose mask fraction ``1 - kappa_t`` is the draw's masked
    fraction (``Scheduler.kappa_inverse``). ``token_mean=True`` (SPG's normalisation) divides both
    bounds by ``L``; the upper bound's sum runs over the tokens some draw scored, scaled by
    ``L / (their count)``, so both bounds estimate a sum over all ``L`` tokens. Mask source only:
    the EUBO is derived for masked diffusion (the error names the source otherwise).

    Args:
        num_draws: masked copies per sample (SPG: 2 per inner iteration).
        block_length: tokens per block, or None for masks over the whole sequence.
        eubo_beta: the EUBO's ``beta >= 1`` (SPG: 1.0 sudoku, 1.5 GSM8K / MATH, 2.0 countdown).
        score_later_blocks: see above.
        token_mean: divide both bounds by ``L``.
    """

    unit_kind = "bounds"

    def __init__(
        self,
        num_draws: int = 2,
        block_length: int | None = 32,
        eubo_beta: float = 1.5,
        score_later_blocks: bool = True,
        token_mean: bool = True,
    ) -> None:
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"SandwichedBounds: num_draws must be an int >= 1, got num_draws={num_draws!r}")
        if block_length is not None and (
            isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1
        ):
            raise ValueError(
                f"SandwichedBounds: block_length must be an int >= 1 or None, got block_length={block_length!r}"
            )
        if not (eubo_beta >= 1.0 and math.isfinite(eubo_beta)):
            raise ValueError(f"SandwichedBounds: eubo_beta must be a finite number >= 1, got eubo_beta={eubo_beta!r}")
        self.num_draws, self.block_length, self.eubo_beta = num_draws, block_length, float(eubo_beta)
        self.score_later_blocks, self.token_mean = score_later_blocks, token_mean

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        path = sampler.path
        if not (isinstance(path, MixturePath) and isinstance(path.source, MaskSource)):
            raise source_error(
                "SandwichedBounds (SPG)", "its upper bound (EUBO) is derived for masked diffusion only", sampler
            )

    def num_units(self, traj: Trajectory, plan: UnitPlan) -> int:
        return 2  # lower, upper; plan.num_units (= num_draws) counts the forward passes

    # ------------------------------------------------------------------ masks
    def _masks(self, B: int, L: int, generator, dev) -> tuple[Tensor, Tensor]:
        """bool ``[B, M, L]`` masked positions and float ``[B, M]`` weights."""
        M, gdev = self.num_draws, draw_device(generator, dev)
        keys = torch.rand(B, M, L, generator=generator, device=gdev).to(dev)  # random order of positions
        r = torch.rand(B, M, 2, generator=generator, device=gdev).to(dev)  # block choice, count
        if self.block_length is None:
            n = (r[..., 1] * L).long().clamp_max(L - 1) + 1  # [B, M] in 1..L
            masked = keys.argsort(-1).argsort(-1) < n[..., None]  # n uniformly chosen positions
            return masked, L / n.double()
        Bl = self.block_length
        nb = -(-L // Bl)
        block = torch.arange(L, device=dev) // Bl  # [L] block of each position
        c = (r[..., 0] * nb).long().clamp_max(nb - 1)  # [B, M] the partly masked block
        size = (L - c * Bl).clamp_max(Bl)  # [B, M] its length (the last block may be short)
        n = (r[..., 1] * size).long().clamp_max(size - 1) + 1  # [B, M] in 1..size
        inside = block == c[..., None]  # [B, M, L]
        rank = torch.where(inside, keys, 2.0).argsort(-1).argsort(-1)  # ranks 0..size-1 inside block c
        current = inside & (rank < n[..., None])
        masked = current | (block > c[..., None])
        if self.score_later_blocks:
            return masked, L / masked.sum(-1).double()
        return masked, (nb * size).double() / n.double()

    def _scored(self, x_in: Tensor, mask_id: int) -> Tensor:
        """bool ``[B, L]``: the tokens a draw scores, read back from its state."""
        masked = x_in == mask_id
        if self.score_later_blocks or self.block_length is None:
            return masked
        block = torch.arange(x_in.shape[1], device=x_in.device) // self.block_length
        first = masked.long().argmax(-1)  # the first masked position lies in block c
        return masked & (block == (first // self.block_length)[:, None])

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        x1 = traj.x1
        (B, L), dev = x1.shape, x1.device
        masked, weights = self._masks(B, L, generator, dev)  # [B, M, L], [B, M]
        mask_id = sampler.path.source.mask_id
        states = torch.where(masked, mask_id, x1[:, None]).transpose(0, 1)  # [M, B, L]
        kappa = 1.0 - masked.sum(-1).double() / L  # [B, M] the draw's clean fraction
        times = sampler.path.scheduler.kappa_inverse(kappa).float()
        return UnitPlan(times=times, states=states.to(traj.states.dtype), weights=weights.float())

    # ------------------------------------------------------------------ bounds
    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        mask_id = sampler.path.source.mask_id
        M, L = plan.num_units, traj.x1.shape[1]
        lp, scored = [], []
        for j in range(M):
            x_in = plan.states[j].long()
            lp.append(token_scores(scoring_logits(policy, x_in, plan.times[:, j], traj.cond), traj.x1))  # [B, L]
            scored.append(self._scored(x_in, mask_id))
        logp = torch.stack(lp, dim=1)  # [B, M, L] log p_ij
        sc = torch.stack(scored, dim=1)  # [B, M, L]
        w = plan.weights.to(logp.dtype)[..., None]  # [B, M, 1]
        lower = torch.where(sc, w * logp, 0.0).sum(1) / M  # [B, L]
        # upper, in log space: (1/beta) [logsumexp_j (log w_j + beta log p_ij over scored j) - log M]
        seen = sc.any(1)  # [B, L] scored by some draw
        # a never-scored token gets one finite dummy term (dropped below), so no -inf logsumexp
        # sends NaN into the backward pass
        keep = sc | (~seen[:, None] & (torch.arange(M, device=sc.device) == 0)[:, None])
        terms = torch.where(keep, w.log() + self.eubo_beta * logp, float("-inf"))
        upper = (torch.logsumexp(terms, dim=1) - math.log(M)) / self.eubo_beta  # [B, L]
        upper = torch.where(seen, upper, 0.0) * (L / seen.sum(-1, keepdim=True).clamp_min(1))
        return torch.stack([lower, upper], dim=1)  # [B, 2, L]
