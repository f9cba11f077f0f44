"""Metric-induced path (FUDOKI, URSA): ``p_t(x | x_1) = softmax_x(-beta_t d(x, x_1))``.

``beta_t = c (t / (1 - t))**a`` (uniform at ``t = 0``, ``delta_{x_1}`` at ``t = 1``). The
kinetic-optimal conditional rate for ``y != x`` is::

    u_t(y, x | x_1) = p_t(y | x_1) * d_beta_t * max(d(x, x_1) - d(y, x_1), 0)

A step ``t -> s`` (``h = s - t``) of the conditional CTMC uses the exponential (Euler) form that keeps
every row a distribution for any ``h``: leave ``x`` with probability ``1 - exp(-h R)``, ``R = sum_y u``,
to ``y`` in proportion to ``u_t(y, x | x_1)``. The marginal kernel averages it over the posterior::

    P(x_s = y | x_t) = sum_{x_1} p_{1|t}(x_1 | x_t) K_h(y | x_t, x_1)

computed exactly when ``V <= exact_max_vocab``, else estimated dFlowGRPO-style from ``n_mc`` posterior
draws (importance weights ``p_theta / sg(p_theta)`` carry the gradient; draws come from a generator
seeded with ``mc_seed``, so the same weights and batch give the same number). A step ending at
``s = 1`` samples the posterior. With ``d = 1 - I`` (0 on the diagonal, 1 elsewhere) this path is a
:class:`MixturePath` with ``kappa_t = (1 - e^{-beta_t}) / (1 + (V - 1) e^{-beta_t})`` and Euler
discretization (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dflow.paths.base import ProbabilityPath, StepSample
from dflow.paths.sources import Source, UniformSource


class MetricPath(ProbabilityPath):
    """Metric-induced probability path from a ``[V, V]`` distance or a ``[V, D]`` embedding.

    Args:
        distance: ``[V, V]`` with ``distance[x, x1] = d(x, x1)``, zero diagonal, positive elsewhere.
        embedding: ``[V, D]`` alternative: ``d = ||e_x - e_y||**power`` (rows L2-normalised first if
            ``normalize``; FUDOKI uses normalised codebook embeddings and ``power=4``).
        c, a: ``beta_t = c (t / (1 - t))**a`` (FUDOKI defaults 3 and 0.9).
        n_mc: posterior draws of the Monte-Carlo kernel estimate (used when ``V > exact_max_vocab``).
    """

    def __init__(
        self,
        distance: Tensor | None = None,
        embedding: Tensor | None = None,
        c: float = 3.0,
        a: float = 0.9,
        power: float = 1.0,
        normalize: bool = False,
        n_mc: int = 24,
        exact_max_vocab: int = 128,
        mc_seed: int = 0,
        t_max: float = 1.0 - 1e-4,
    ) -> None:
        if (distance is None) == (embedding is None):
            raise ValueError("MetricPath: give exactly one of distance=[V, V] or embedding=[V, D]")
        if distance is None:
            emb = torch.as_tensor(embedding, dtype=torch.float64)
            if emb.dim() != 2:
                raise ValueError(f"MetricPath: embedding must be [V, D], got shape {tuple(emb.shape)}")
            if normalize:
                emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            distance = torch.cdist(emb, emb) ** power
        d = torch.as_tensor(distance, dtype=torch.float64)
        if d.dim() != 2 or d.shape[0] != d.shape[1]:
            raise ValueError(f"MetricPath: distance must be square [V, V], got shape {tuple(d.shape)}")
        eye = torch.eye(d.shape[0], dtype=torch.bool)
        bad = torch.where(eye, d != 0, ~(d > 0)).nonzero()  # [n, 2] offending (x, x1); NaN counts as bad
        if len(bad):
            x, x1 = bad[0].tolist()
            raise ValueError(
                "MetricPath: distance must be 0 on the diagonal and > 0 elsewhere (distinct embeddings), "
                f"got distance[{x}, {x1}]={d[x, x1].item():g}"
            )
        for name, val in (("c", c), ("a", a)):
            if not val > 0:
                raise ValueError(f"MetricPath: {name} must be > 0, got {name}={val!r}")
        if not (isinstance(n_mc, int) and n_mc >= 1):
            raise ValueError(f"MetricPath: n_mc must be an int >= 1, got n_mc={n_mc!r}")
        self.source: Source = UniformSource(d.shape[0])
        self.distance = d.to(torch.float32)  # [V(x), V(x1)]
        self.c, self.a, self.n_mc, self.mc_seed, self.t_max = float(c), float(a), n_mc, mc_seed, float(t_max)
        self.exact = d.shape[0] <= exact_max_vocab
        # gap[x, x1, y] = max(d(x, x1) - d(y, x1), 0): static part of the rate (V^3, exact mode only)
        self._gap = (d[:, :, None] - d.T[None, :, :]).clamp_min(0).to(torch.float32) if self.exact else None

    def __repr__(self) -> str:
        return f"MetricPath(V={self.vocab_size}, c={self.c}, a={self.a}, exact={self.exact}, n_mc={self.n_mc})"

    # ------------------------------------------------------------------ schedule
    def beta(self, t: Tensor) -> Tensor:
        t = t.clamp(0.0, self.t_max)
        return self.c * (t / (1.0 - t)) ** self.a

    def d_beta(self, t: Tensor) -> Tensor:
        t = t.clamp(1e-6, self.t_max)
        return self.c * self.a * (t / (1.0 - t)) ** (self.a - 1.0) / (1.0 - t) ** 2

    def cond_probs(self, t: Tensor) -> Tensor:
        """``p_t(y | x_1)`` as ``[B, V(x1), V(y)]``."""
        D = self.distance.to(t.device)
        return torch.softmax(-self.beta(t)[:, None, None] * D.T[None], dim=-1)

    # ------------------------------------------------------------------ forward process
    def sample_xt(self, x1: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_states("x1", x1, self.vocab_size)
        self._check_time("t", t, x1.shape[0])
        B, L = x1.shape
        probs = self.cond_probs(t.float())  # [B, V(x1), V]
        rows = probs[torch.arange(B, device=x1.device)[:, None], x1]  # [B, L, V]
        xt = torch.multinomial(rows.reshape(B * L, -1), 1, generator=generator).view(B, L)
        return torch.where((t >= 1.0)[:, None], x1, xt)

    # ------------------------------------------------------------------ conditional kernel
    def _cond_kernel(self, t: Tensor, s: Tensor) -> Tensor:
        """``K_h[b, x, x1, y]`` for the exact mode: ``[B', V, V, V]`` (``B' = 1`` when all times agree)."""
        if bool((t == t[0]).all()) and bool((s == s[0]).all()):
            t, s = t[:1], s[:1]
        gap = self._gap.to(t.device)
        rate = gap * self.cond_probs(t)[:, None] * self.d_beta(t)[:, None, None, None]  # [B', x, x1, y]
        total = rate.sum(-1, keepdim=True)  # [B', x, x1, 1]
        h = (s - t)[:, None, None, None]
        leave = -torch.expm1(-h * total)
        K = torch.where(total > 0, rate * leave / total.clamp_min(1e-30), torch.zeros_like(rate))
        eye = torch.eye(self.vocab_size, device=t.device)[:, None, :]  # [x, 1, y]
        return K + eye * (1.0 - leave)

    def _kernel_row(self, x: Tensor, x1: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``K_h(. | x, x1)`` on the fly for tokens ``x, x1`` ``[B, *]`` -> ``[B, *, V]`` (any V)."""
        D = self.distance.to(x.device)
        extra = (1,) * (x.dim() - 1)
        beta = self.beta(t).view(-1, *extra, 1)
        p_row = torch.softmax(-beta * D.T[x1], dim=-1)  # p_t(. | x1)
        rate = p_row * (D[x, x1][..., None] - D.T[x1]).clamp_min(0) * self.d_beta(t).view(-1, *extra, 1)
        total = rate.sum(-1, keepdim=True)
        leave = -torch.expm1(-(s - t).view(-1, *extra, 1) * total)
        row = torch.where(total > 0, rate * leave / total.clamp_min(1e-30), torch.zeros_like(rate))
        return row.scatter_add(-1, x[..., None], 1.0 - leave)

    # ------------------------------------------------------------------ marginal kernel
    def step_kernel(self, posterior: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        self._check_step(x_t, t, s)
        self._check_posterior("posterior", posterior, x_t)
        if not self.exact:
            raise ValueError(f"MetricPath.step_kernel: the full kernel needs V <= exact_max_vocab, V={self.vocab_size}")
        K = self._cond_kernel(t.float(), s.float()).to(posterior.dtype)  # [B', x, x1, y]
        b = torch.arange(x_t.shape[0], device=x_t.device)[:, None] if K.shape[0] > 1 else 0
        out = torch.einsum("blk,blky->bly", posterior, K[b, x_t])  # [B, L, V]
        last = (s >= 1.0)[:, None, None]
        return torch.where(last, posterior, out)

    def sample_step(self, logits, x_t, t, s, generator=None) -> StepSample:
        self._check_posterior("logits", logits, x_t)
        g = torch.empty_like(logits).exponential_(generator=generator).log_().neg_().add_(logits)
        draw = g.argmax(-1)  # [B, L] xhat_1 ~ p_{1|t}
        del g
        row = self._kernel_row(x_t, draw, t.float(), s.float())  # [B, L, V]
        B, L, V = row.shape
        y = torch.multinomial(row.reshape(B * L, V).clamp_min(0), 1, generator=generator).view(B, L)
        x_s = torch.where((s >= 1.0)[:, None], draw, y)
        return StepSample(x_s=x_s, log_prob=self.step_log_prob(logits, x_t, x_s, t, s), draw=draw)

    def step_log_prob(self, logits, x_t, x_s, t, s) -> Tensor:
        self._check_transition(logits, x_t, x_s)
        log_p = torch.log_softmax(logits, dim=-1)  # [B, L, V]
        lp_last = log_p.gather(-1, x_s[..., None]).squeeze(-1)  # s = 1: the posterior itself
        if self.exact:
            K = self._cond_kernel(t.float(), s.float())  # [B', x, x1, y]
            b = torch.arange(x_t.shape[0], device=x_t.device)[:, None] if K.shape[0] > 1 else 0
            col = K[b, x_t, :, x_s].to(log_p.dtype)  # [B, L, V(x1)] = K(x_s | x_t, x1)
            lp = torch.logsumexp(log_p + col.log(), dim=-1)
        else:
            lp = self._mc_log_prob(log_p, x_t, x_s, t.float(), s.float())
        return torch.where((s >= 1.0)[:, None], lp_last, lp)

    def _mc_log_prob(self, log_p: Tensor, x_t: Tensor, x_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
        gen = torch.Generator(device=log_p.device).manual_seed(self.mc_seed)
        B, L, V = log_p.shape
        draws = torch.multinomial(log_p.detach().exp().view(B * L, V), self.n_mc, replacement=True, generator=gen)
        draws = draws.view(B, L, self.n_mc)  # [B, L, n]
        lp_draw = log_p.gather(-1, draws)  # [B, L, n]
        weight = (lp_draw - lp_draw.detach()).exp()  # = 1 in value, carries grad of p_theta
        est = log_p.new_zeros(B, L)
        for m in range(self.n_mc):  # loop over draws keeps memory at one [B, L, V] row
            row = self._kernel_row(x_t, draws[..., m], t, s)
            est = est + weight[..., m] * row.gather(-1, x_s[..., None]).squeeze(-1).to(log_p.dtype)
        return (est / self.n_mc).clamp_min(1e-30).log()

    # ------------------------------------------------------------------ loss
    def generalized_kl(self, logits: Tensor, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Generalized KL between conditional and model rates at ``x_t`` (small V only), ``[B, L]``::

            sum_{y != x_t} u(y|x_1) log(u(y|x_1) / u_theta(y)) - u(y|x_1) + u_theta(y),
            u_theta(y) = sum_{x_1'} p_{1|t}(x_1') u_t(y, x_t | x_1')

        Non-negative; equals :meth:`MixturePath.generalized_kl` for the 0/1 distance.
        """
        self._check_states("x1", x1, self.vocab_size)
        self._check_states("x_t", x_t)
        self._check_time("t", t, x1.shape[0])
        if x_t.shape != x1.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} must equal x1 shape {tuple(x1.shape)}")
        self._check_posterior("logits", logits, x1)
        if not self.exact:
            raise ValueError(f"MetricPath.generalized_kl needs V <= exact_max_vocab, V={self.vocab_size}")
        p = torch.softmax(logits, dim=-1)  # [B, L, V]
        tt = t.to(p.dtype)
        rate = self._gap.to(p) * self.cond_probs(tt)[:, None] * self.d_beta(tt)[:, None, None, None]  # [B,x,x1,y]
        b = torch.arange(x1.shape[0], device=x1.device)[:, None]
        rows = rate[b, x_t]  # [B, L, x1, y]
        u_theta = torch.einsum("blk,blky->bly", p, rows)
        u_cond = rows.gather(2, x1[..., None, None].expand(-1, -1, 1, self.vocab_size)).squeeze(2)  # [B, L, y]
        terms = torch.xlogy(u_cond, u_cond) - u_cond * u_theta.clamp_min(1e-30).log() - u_cond + u_theta
        return terms.sum(-1)
