"""Mixture path: ``p_t(x | x_1) = kappa_t delta_{x_1}(x) + (1 - kappa_t) p_0(x)`` per token."""

from __future__ import annotations

import torch
from torch import Tensor

from dflow.logprobs import HeadLogits, log_softmax_gather
from dflow.paths.base import ProbabilityPath, StepSample
from dflow.paths.schedulers import LinearScheduler, Scheduler
from dflow.paths.sources import Source

DISCRETIZATIONS = ("exact", "euler")


class MixturePath(ProbabilityPath):
    """Mixture probability path over a mask, uniform or mixture source.

    Step kernel for ``s > t`` (DESIGN.md section 3), per token::

        P(x_s = y | x_t) = (1 - lam) delta_{x_t}(y) + lam p_{1|t}(y | x_t)

    ``discretization="exact"``: ``lam = (kappa_s - kappa_t) / (1 - kappa_t)``, the exact probability
    that a token not yet arrived arrives in ``(t, s]``. ``"euler"``:
    ``lam = 1 - exp(-(s - t) d_kappa_t / (1 - kappa_t))`` (the FUDOKI / URSA / flow_matching sampler).
    In both, a step that ends at ``s = 1`` has ``lam = 1``: it samples the posterior.

    A token whose state has no mass under ``p_0`` (any non-mask token of a pure mask source) must already
    be clean, so its kernel row is ``delta_{x_t}`` whatever the posterior says (carry-over), and its
    generalized-KL term is 0. With a :class:`MixtureSource` (``mask_prob < 1``) a data token may be noise,
    so it may change.

    Example::

        path = MixturePath(UniformSource(8), LinearScheduler())
        x_t = path.sample_xt(x1, torch.full((B,), 0.3))
    """

    accepts_head_logits = True  # generalized_kl reads the logits through log_softmax_gather only

    def __init__(self, source: Source, scheduler: Scheduler | None = None, discretization: str = "exact") -> None:
        if not isinstance(source, Source):
            raise ValueError(f"MixturePath: source must be a dflow.paths Source, got {source!r}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"MixturePath: unknown discretization={discretization!r}; choose one of {DISCRETIZATIONS}")
        self.source = source
        self.scheduler = scheduler if scheduler is not None else LinearScheduler()
        self.discretization = discretization
        # states with no mass under p_0 are certainly clean (carry-over); [num_states] bool
        self._clean_state = source.probs(dtype=torch.float64) == 0

    def __repr__(self) -> str:
        return (
            f"MixturePath(source={self.source!r}, scheduler={self.scheduler!r}, discretization={self.discretization!r})"
        )

    # ------------------------------------------------------------------ forward process
    def sample_xt(self, x1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_states("x1", x1, self.vocab_size)
        self._check_time("t", t, x1.shape[0])
        kappa = self.scheduler.kappa(t.to(torch.float32))  # [B]
        keep = (
            torch.rand(x1.shape, generator=generator, device=x1.device, dtype=torch.float32) < kappa[:, None]
        )  # [B, L]
        noise = self.source.sample(x1.shape, generator=generator, device=x1.device)  # [B, L]
        return torch.where(keep, x1, noise)

    # ------------------------------------------------------------------ kernel
    def jump_prob(self, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``lam`` per token ``[B, L]``: probability of replacing ``x_t`` by a posterior draw."""
        kt = self.scheduler.kappa(t)  # [B]
        if self.discretization == "exact":
            lam = (self.scheduler.kappa(s) - kt) / (1.0 - kt).clamp_min(1e-12)
        else:
            rate = self.scheduler.d_kappa(t) / (1.0 - kt).clamp_min(1e-12)
            lam = -torch.expm1(-(s - t) * rate)
        lam = torch.where(s >= 1.0, torch.ones_like(lam), lam.clamp(0.0, 1.0))  # last step: posterior
        clean = self._clean_state.to(x_t.device)[x_t]  # [B, L]
        return lam[:, None].to(torch.float32).masked_fill(clean, 0.0)

    def step_kernel(self, posterior: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        self._check_step(x_t, t, s)
        self._check_posterior("posterior", posterior, x_t)
        lam = self.jump_prob(x_t, t, s).to(posterior.dtype)  # [B, L]
        kernel = posterior.new_zeros(*x_t.shape, self.num_states)  # [B, L, S]
        kernel[..., : self.vocab_size] = lam[..., None] * posterior
        return kernel.scatter_add_(-1, x_t[..., None], (1.0 - lam)[..., None])

    def sample_step(self, logits, x_t, t, s, generator=None) -> StepSample:
        self._check_posterior("logits", logits, x_t)  # shape only, no device sync; wider logits draw states >= V
        # Gumbel-max on the logits: the only extra [B, L, V] tensor is the noise, reused in place.
        noise = torch.empty_like(logits).exponential_(generator=generator).log_().neg_().add_(logits)
        draw = noise.argmax(-1)  # [B, L] ~ softmax(logits)
        del noise
        lam = self.jump_prob(x_t, t, s)  # [B, L]
        # float32 uniforms whatever the default dtype (bf16-true training makes it bfloat16 inside a step)
        jump = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float32) < lam
        x_s = torch.where(jump, draw, x_t)
        return StepSample(x_s=x_s, log_prob=self._log_prob(logits, x_t, x_s, lam), draw=draw)

    def step_log_prob(self, logits, x_t, x_s, t, s) -> Tensor:
        self._check_transition(logits, x_t, x_s)  # wider logits would be renormalised silently
        return self._log_prob(logits, x_t, x_s, self.jump_prob(x_t, t, s))

    def _log_prob(self, logits: Tensor, x_t: Tensor, x_s: Tensor, lam: Tensor) -> Tensor:
        # log P(x_s | x_t) = log[(1 - lam) [x_s == x_t] + lam p(x_s)], from gathered logits only.
        # Chunked over tokens, so backward keeps the logits and one logsumexp per token, no [B, L, V] copy.
        V = self.vocab_size
        lp_s = log_softmax_gather(logits, x_s.clamp_max(V - 1)[..., None]).squeeze(-1)  # [B, L] log p(x_s)
        lp_s = lp_s.masked_fill(x_s >= V, float("-inf"))  # the mask id is never a posterior value
        lam = lam.to(lp_s.dtype)
        jump_term = torch.log(lam) + lp_s  # arrived at x_s through a draw
        stay_term = torch.log1p(-lam).masked_fill(x_s != x_t, float("-inf"))  # stayed put
        return torch.logaddexp(stay_term, jump_term)

    # ------------------------------------------------------------------ loss
    def generalized_kl(
        self,
        logits: Tensor | HeadLogits,
        x1: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        weighted: bool = True,
        chunk_size: int | None = None,
    ) -> Tensor:
        """Generalized KL of Shaul et al. (2024) per token ``[B, L]``::

            ell = -d_kappa_t / (1 - kappa_t) * [ p(x_t) - delta_{x_1}(x_t) + (1 - delta_{x_1}(x_t)) log p(x_1) ]

        with ``p = softmax(logits)`` over the ``V`` data values (``p(mask) = 0``). Carry-over tokens
        (no mass under ``p_0``) contribute 0, so for a mask source this is the MDLM bound.
        ``weighted=False`` drops the jump coefficient ``d_kappa_t / (1 - kappa_t)``.

        Only ``log p`` at ``x_1`` and ``x_t`` enter, so both come from one chunked log-softmax
        (:func:`dflow.logprobs.log_softmax_gather`, ``chunk_size`` tokens at a time): float32 (float64
        for float64 logits), with no float32 ``[B, L, V]`` tensor in forward or backward.
        """
        self._check_states("x1", x1, self.vocab_size)
        self._check_states("x_t", x_t)
        self._check_time("t", t, x1.shape[0])
        if x_t.shape != x1.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} must equal x1 shape {tuple(x1.shape)}")
        self._check_posterior("logits", logits, x1)
        V = self.vocab_size
        index = torch.stack([x1.long(), x_t.long().clamp_max(V - 1)], dim=-1)  # [B, L, 2]
        lp_x1, lp_xt = log_softmax_gather(logits, index, chunk_size=chunk_size).unbind(-1)  # [B, L] each
        p_xt = lp_xt.exp().masked_fill(x_t >= V, 0.0)  # the mask id is never a posterior value
        same = (x_t == x1).to(lp_x1.dtype)
        bracket = p_xt - same + (1.0 - same) * lp_x1
        clean = self._clean_state.to(x_t.device)[x_t]
        bracket = bracket.masked_fill(clean, 0.0)
        if not weighted:
            return -bracket
        tt = t.to(lp_x1.dtype)
        coef = self.scheduler.d_kappa(tt) / (1.0 - self.scheduler.kappa(tt)).clamp_min(1e-6)  # [B]
        return -coef[:, None] * bracket
