"""Coupled-GRPO's ELBO (DiffuCoder, Gong et al. 2025): complementary noising patterns in pairs.

Written in the noise level ``m = 1 - kappa_t`` (the probability that a token is noise), the ELBO of a
mixture path does not depend on the scheduler:

    ELBO(x_1) = E_{m ~ U[0,1]} [ (1/m) sum_i b_i(x^m) ],    x^m = x_1 with each token noised w.p. m,

where ``b_i = -generalized_kl(weighted=False)_i`` is the path's bracket (for a mask source: ``log
p(x_1^i)`` at a masked token, 0 at a clean one). A *pair* draws ``m`` and keys ``u_i ~ U[0,1)``:
draw A noises ``{i : u_i < m}`` at level ``m``, draw B the complement ``{i : u_i >= m}`` at level
``1 - m``. Each draw alone is an exact ``q`` draw, so the pair's mean is an unbiased ELBO estimate;
with a mask source every token is scored exactly once per pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dflow.logprobs import scoring_logits
from dflow.paths.mixture import MixturePath
from dflow.rl.likelihood.base import (
    LikelihoodEstimator,
    UnitPlan,
    counted_tokens,
    path_scoring_logits,
    stack_masks,
    token_scores,
)
from dflow.rng import draw_device
from dflow.sampling import Sampler, Trajectory


class CoupledELBOLikelihood(LikelihoodEstimator):
    """Coupled-GRPO: unit ``j`` = ``(1/2) sum_i [ b_i(A_j) / m_j + b_i(B_j) / (1 - m_j) ]`` for pair
    ``j`` of complementary draws ``A_j``, ``B_j`` (module docstring), ``m_j ~ U[noise_min, noise_max]``
    per sample (a range symmetric about 1/2, so the complement's level is drawn from the same range).

    ``coupled=False`` draws B independently of A (its own level and keys): the same passes, the
    baseline against which the coupling's variance reduction is measured (docs/rl_methods.md).
    ``full_noise=True`` adds DiffuCoder's third pass, d1's ``log p(x_1^i | x_0)`` at the fully noised
    input ``x_0 ~ p_0`` (one pass shared by all pairs): unit ``j`` becomes
    ``(1/2) [ sum_i b_i(A_j)/m_j + b_i(B_j)/(1-m_j) + log p(x_1^i | x_0) ]``, the released code's mix,
    which is no longer an ELBO estimate.

    Works for any :class:`~dflow.paths.MixturePath` (mask, uniform, mixture source). With a uniform
    source the noised tokens get fresh uniform values and every token enters both draws' brackets
    (the kept ones through ``p(x_1) - 1``); the pair is then an antithetic coupling of which tokens
    are noised, not "each token scored once".

    Args:
        num_pairs: pairs per sample (DiffuCoder: 1); ``2 num_pairs`` passes (+1 with ``full_noise``).
        noise_min, noise_max: range of ``m`` (DiffuCoder: mask ratio in [0.2, 0.8]); ``0 < noise_min
            <= noise_max < 1``, and with ``coupled`` ``noise_min + noise_max = 1``.
        token_mean / per_token: see :class:`~dflow.rl.likelihood.base.LikelihoodEstimator`
            (DiffuCoder: ``per_token=True``, one ratio and clip per token).
    """

    def __init__(
        self,
        num_pairs: int = 1,
        noise_min: float = 0.2,
        noise_max: float = 0.8,
        coupled: bool = True,
        full_noise: bool = False,
        token_mean: bool = False,
        per_token: bool = False,
    ) -> None:
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(f"CoupledELBOLikelihood: num_pairs must be an int >= 1, got num_pairs={num_pairs!r}")
        if not 0.0 < noise_min <= noise_max < 1.0:
            raise ValueError(
                f"CoupledELBOLikelihood: need 0 < noise_min <= noise_max < 1, got noise_min={noise_min!r}, "
                f"noise_max={noise_max!r}"
            )
        if coupled and not math.isclose(noise_min + noise_max, 1.0, abs_tol=1e-9):
            raise ValueError(
                f"CoupledELBOLikelihood: the complement of a draw at noise level m has level 1 - m, so the range "
                f"must be symmetric about 1/2 (noise_min + noise_max = 1); got noise_min={noise_min!r}, "
                f"noise_max={noise_max!r}"
            )
        self.num_pairs, self.noise_min, self.noise_max = num_pairs, float(noise_min), float(noise_max)
        self.coupled, self.full_noise = coupled, full_noise
        self.token_mean, self.per_token = token_mean, per_token

    def validate(self, sampler: Sampler) -> None:
        super().validate(sampler)
        if not isinstance(sampler.path, MixturePath):
            raise ValueError(
                "CoupledELBOLikelihood: its ELBO is written in the noise level 1 - kappa_t of a mixture path; "
                f"got path={type(sampler.path).__name__}"
            )

    def num_units(self, traj: Trajectory, plan: UnitPlan) -> int:
        # one unit per pair; plan.num_units counts the passes (2 per pair, +1 with full_noise)
        return self.num_pairs * (traj.x1.shape[1] if self.per_token else 1)

    def plan(self, traj, sampler, generator=None) -> UnitPlan:
        x1, path = traj.x1, sampler.path
        (B, L), J, dev = x1.shape, self.num_pairs, x1.device
        gdev = draw_device(generator, dev)

        def level(n: int) -> Tensor:  # [B, n] noise levels in [noise_min, noise_max]
            u = torch.rand(B, n, generator=generator, device=gdev).to(dev)
            return self.noise_min + (self.noise_max - self.noise_min) * u

        m_a = level(J)  # [B, J]
        keys = torch.rand(B, J, L, generator=generator, device=gdev).to(dev)
        noised_a = keys < m_a[..., None]  # [B, J, L]
        if self.coupled:
            m_b, noised_b = 1.0 - m_a, ~noised_a  # the complement, at the complementary level
        else:
            m_b = level(J)
            noised_b = torch.rand(B, J, L, generator=generator, device=gdev).to(dev) < m_b[..., None]
        noise = path.source.sample((2, B, J, L), generator=generator, device=dev)  # fresh values per draw
        x_a = torch.where(noised_a, noise[0], x1[:, None])  # [B, J, L]
        x_b = torch.where(noised_b, noise[1], x1[:, None])
        # draws in pair order: A_0, B_0, A_1, B_1, ... (then the fully noised state)
        states = torch.stack([x_a, x_b], dim=2).flatten(1, 2).transpose(0, 1)  # [2J, B, L]
        levels = torch.stack([m_a, m_b], dim=2).flatten(1)  # [B, 2J]
        if self.full_noise:
            x0 = path.source.sample((1, B, L), generator=generator, device=dev)
            states = torch.cat([states, x0])
            levels = torch.cat([levels, torch.ones(B, 1, device=dev)], dim=1)
        times = path.scheduler.kappa_inverse(1.0 - levels.double()).float()  # [B, 2J(+1)]
        return UnitPlan(times=times, states=states.to(traj.states.dtype), weights=1.0 / levels)

    def token_log_probs(self, policy, traj, plan, sampler) -> Tensor:
        path, J = sampler.path, self.num_pairs
        draws = []
        for d in range(2 * J):
            x_in, t = plan.states[d].long(), plan.times[:, d]
            logits = path_scoring_logits(path, policy, x_in, t, traj.cond)
            bracket = -path.generalized_kl(logits, traj.x1, x_in, t, weighted=False)  # [B, L]
            draws.append(plan.weights[:, d, None].to(bracket.dtype) * bracket)
        pairs = 0.5 * (torch.stack(draws[0::2], dim=1) + torch.stack(draws[1::2], dim=1))  # [B, J, L]
        if self.full_noise:
            x0, t0 = plan.states[2 * J].long(), plan.times[:, 2 * J]
            pairs = pairs + 0.5 * token_scores(scoring_logits(policy, x0, t0, traj.cond), traj.x1)[:, None]
        return pairs

    def token_mask(self, traj, plan, sampler) -> Tensor | None:
        """A token counts in a pair when some draw of the pair (or the fully noised pass) holds it as
        noise; with a mask source and ``coupled`` that is every token."""
        J, path = self.num_pairs, sampler.path
        maybe = [counted_tokens(path, plan.states[d].long()) for d in range(plan.num_units)]
        if all(m is None for m in maybe):
            return None
        full = torch.ones_like(traj.x1, dtype=torch.bool)
        counted = [full if m is None else m for m in maybe]  # [B, L] per draw
        shared = counted[2 * J] if self.full_noise else torch.zeros_like(full)
        return stack_masks([counted[2 * j] | counted[2 * j + 1] | shared for j in range(J)], traj.x1)
