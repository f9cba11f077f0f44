"""Metric-induced path (FUDOKI, URSA): ``p_t(x | x_1) = softmax_x(-beta_t d(x, x_1))``.

``beta_t = c (t / (1 - t))**a`` (uniform at ``t = 0``, ``delta_{x_1}`` at ``t = 1``). The
kinetic-optimal conditional rate for ``y != x`` is::

    u_t(y, x | x_1) = p_t(y | x_1) * d_beta_t * max(d(x, x_1) - d(y, x_1), 0)

A step ``t -> s`` (``h = s - t``) of the conditional CTMC uses the exponential (Euler) form that keeps
every row a distribution for any ``h``: leave ``x`` with probability ``1 - exp(-h R)``, ``R = sum_y u``,
to ``y`` in proportion to ``u_t(y, x | x_1)``. The marginal kernel averages it over the posterior::

    P(x_s = y | x_t) = sum_{x_1} p_{1|t}(x_1 | x_t) K_h(y | x_t, x_1)

computed exactly when ``V <= exact_max_vocab``, else estimated dFlowGRPO-style from ``n_mc`` posterior
draws (importance weights ``p_theta / sg(p_theta)`` carry the gradient; the draws are keyed to the
transition and ``mc_seed``, never to a row position, so the same weights give the same number
wherever a sample sits in a batch; see :meth:`MetricPath._mc_log_prob`). A step ending at
``s = 1`` samples the posterior. With ``d = 1 - I`` (0 on the diagonal, 1 elsewhere) this path is a
:class:`MixturePath` with ``kappa_t = (1 - e^{-beta_t}) / (1 + (V - 1) e^{-beta_t})`` and Euler
discretization (tested).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from dflow.logprobs import HeadLogits, compute_dtype, map_token_chunks, materialize
from dflow.paths.base import ProbabilityPath, StepSample
from dflow.paths.keyed_uniforms import keyed_uniforms
from dflow.paths.sources import Source, UniformSource


def _matrix(name: str, value: Tensor | list[list[float]] | str | os.PathLike | None) -> Tensor | None:
    """``value`` as a float64 tensor: as given, from nested lists, or loaded from a ``.pt`` / ``.npy``
    file; ``ValueError`` naming the field, the file and the fix otherwise."""
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, (str, os.PathLike)):
        file = Path(value)
        if not file.is_file():
            raise ValueError(
                f"MetricPath: {name}={str(value)!r} is not a file; give a .pt (torch.save of a tensor) or .npy "
                "file, a tensor, or nested lists of numbers"
            )
        try:
            if file.suffix == ".npy":
                import numpy as np

                loaded: object = torch.from_numpy(np.load(file, allow_pickle=False))
            elif file.suffix in (".pt", ".pth"):
                loaded = torch.load(file, map_location="cpu", weights_only=True)
            else:
                raise ValueError(f"unknown suffix {file.suffix!r} (use .pt, .pth or .npy)")
        except Exception as err:
            raise ValueError(
                f"MetricPath: {name}={str(value)!r} could not be read ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(loaded, Tensor):
            raise ValueError(f"MetricPath: {name}={str(value)!r} holds a {type(loaded).__name__}, not a tensor")
        return loaded.to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"MetricPath: {name} must be a [rows, columns] matrix of numbers ({err})") from err


class MetricPath(ProbabilityPath):
    """Metric-induced probability path from a ``[V, V]`` distance or a ``[V, D]`` embedding.

    Args:
        distance: ``[V, V]`` with ``distance[x, x1] = d(x, x1)``, zero diagonal, positive elsewhere.
        embedding: ``[V, D]`` alternative: ``d = ||e_x - e_y||**power`` (rows L2-normalised first if
            ``normalize``; FUDOKI uses normalised codebook embeddings and ``power=4``).
        c, a: ``beta_t = c (t / (1 - t))**a`` (FUDOKI defaults 3 and 0.9).
        n_mc: posterior draws of the Monte-Carlo kernel estimate (used when ``V > exact_max_vocab``).

    ``distance`` and ``embedding`` may each be a tensor, nested lists of numbers, or the path of a
    file holding the matrix (``.pt`` / ``.pth``: a tensor saved with ``torch.save``; ``.npy``: a
    numpy array), so a recipe can give them in YAML::

        path:
          class_path: dflow.paths.MetricPath
          init_args: {embedding: assets/palette_embedding.pt, normalize: true, power: 4}
    """

    def __init__(
        self,
        distance: Tensor | list[list[float]] | str | None = None,
        embedding: Tensor | list[list[float]] | str | None = None,
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
        distance, embedding = _matrix("distance", distance), _matrix("embedding", embedding)
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
        assert self._gap is not None  # exact mode: built in __init__
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
        """dFlowGRPO's Monte-Carlo estimate of ``log P(x_s | x_t)``, restricted and keyed.

        Restricted: for a move ``y != x`` only the ``x_1`` with ``d(y, x_1) < d(x, x_1)`` have a
        non-zero rate, so the draws come from the posterior restricted to that set ``S`` (it always
        holds ``x_1 = y``) and ``P = p(S) E_{p|S}[K_h(y | x, x_1)]``: never a zero estimate, and no
        variance spent on draws that cannot explain the move. A stay (``y == x``) is reachable from
        every ``x_1``: ``S`` is everything. The importance weight ``p_theta / sg(p_theta)`` of each
        draw carries the (unbiased) gradient; everything is in log space, so nothing is floored.

        Keyed: the uniforms behind the draws are a hash of ``(mc_seed, x_t row, x_s row, t, s,
        position, draw)``, i.e. common random numbers for the transition itself. The old policy, the
        new one and the reference score a sample with the same draws wherever its row sits in a
        (shuffled) mini-batch; two rows holding the same transition share them.
        """
        B, L, V = log_p.shape
        n = self.n_mc
        D = self.distance.to(log_p.device)
        stay = x_s == x_t  # [B, L]
        closer = D[x_s] < D[x_t]  # [B, L, V(x1)]: d(y, x1) < d(x, x1) (distance[x, x1] = d(x, x1))
        allowed = closer | stay[..., None]
        lp_allowed = log_p.detach().masked_fill(~allowed, float("-inf"))
        log_mass = torch.logsumexp(lp_allowed, dim=-1)  # [B, L] log p(S), detached
        cdf = torch.softmax(lp_allowed, dim=-1).cumsum(-1)  # [B, L, V] of p restricted to S
        u = keyed_uniforms(self.mc_seed, x_t, x_s, t, s, n).to(cdf.dtype) * cdf[..., -1:]
        draws = torch.searchsorted(cdf.contiguous(), u.contiguous()).clamp_max(V - 1)  # [B, L, n]
        lp_draw = log_p.gather(-1, draws)  # [B, L, n]
        log_w = lp_draw - lp_draw.detach()  # 0 in value, carries grad of log p_theta
        log_k = torch.stack([self._log_kernel(x_t, draws[..., m], x_s, t, s) for m in range(n)], dim=-1)
        return log_mass + torch.logsumexp(log_w + log_k.to(log_p.dtype), dim=-1) - math.log(n)

    def _log_kernel(self, x: Tensor, x1: Tensor, y: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``log K_h(y | x, x1)`` ``[B, L]`` in log space (no underflow of tiny moves); one ``[B, L, V]`` row."""
        D = self.distance.to(x.device)
        extra = (1,) * (x.dim() - 1)
        beta = self.beta(t).view(-1, *extra, 1)
        log_pt = torch.log_softmax(-beta * D.T[x1], dim=-1)  # [B, L, V] log p_t(. | x1)
        gap = (D[x, x1][..., None] - D.T[x1]).clamp_min(0)  # [B, L, V]
        log_rate = log_pt + gap.log() + self.d_beta(t).log().view(-1, *extra, 1)  # log u_t(., x | x1)
        log_total = torch.logsumexp(log_rate, dim=-1)  # [B, L]; -inf when x1 == x
        h = (s - t).view(-1, *extra)
        log_leave = torch.log(-torch.expm1(-h * log_total.exp()))  # log(1 - exp(-h R))
        log_move = log_rate.gather(-1, y[..., None]).squeeze(-1) + log_leave - log_total
        log_stay = -h * log_total.exp()
        return torch.where(y == x, log_stay, log_move)

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
        """Generalized KL between conditional and model rates at ``x_t`` (small V only), ``[B, L]``::

            sum_{y != x_t} u(y|x_1) log(u(y|x_1) / u_theta(y)) - u(y|x_1) + u_theta(y),
            u_theta(y) = sum_{x_1'} p_{1|t}(x_1') u_t(y, x_t | x_1')

        Non-negative; equals :meth:`MixturePath.generalized_kl` for the 0/1 distance.
        ``weighted=False`` drops the factor ``d_beta_t`` that every rate carries (the sum above is
        linear in a common factor of the rates, so this is the weighted value divided by it).

        A token needs its ``[V(x1), V(y)]`` rate rows, so the loss is computed ``chunk_size`` tokens at a
        time under activation checkpointing (:func:`dflow.logprobs.map_token_chunks`): backward keeps
        the logits and recomputes one chunk's softmax and rows at a time.
        """
        self._check_states("x1", x1, self.vocab_size)
        self._check_states("x_t", x_t)
        self._check_time("t", t, x1.shape[0])
        if x_t.shape != x1.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} must equal x1 shape {tuple(x1.shape)}")
        logits = materialize(logits)  # reads every logit: HeadLogits are made whole
        self._check_posterior("logits", logits, x1)
        if not self.exact or self._gap is None:  # the gap tensor exists in exact mode only
            raise ValueError(f"MetricPath.generalized_kl needs V <= exact_max_vocab, V={self.vocab_size}")
        B, L = x1.shape
        V, dtype = self.vocab_size, compute_dtype(logits.dtype)
        tt = t.to(dtype)
        gap = self._gap.to(device=logits.device, dtype=dtype)  # [x, x1, y]
        cond = self.cond_probs(tt)  # [B, x1, y]: rates without the factor d_beta_t
        d_beta = self.d_beta(tt)  # [B]

        def per_token(lg: Tensor, xt: Tensor, target: Tensor, b: Tensor) -> Tensor:  # [n, V], [n] x3 -> [n]
            p = torch.softmax(lg.to(dtype), dim=-1)  # [n, x1]
            rows = gap[xt] * cond[b]  # [n, x1, y] = u_t(y, x_t | x1)
            if weighted:
                rows = rows * d_beta[b][:, None, None]
            u_theta = torch.einsum("nk,nky->ny", p, rows)  # [n, y]
            u_cond = rows.gather(1, target[:, None, None].expand(-1, 1, V)).squeeze(1)  # [n, y]
            terms = torch.xlogy(u_cond, u_cond) - u_cond * u_theta.clamp_min(1e-30).log() - u_cond + u_theta
            return terms.sum(-1)

        batch = torch.arange(B, device=x1.device)[:, None].expand(B, L)  # [B, L] row of each token
        return map_token_chunks(
            per_token, logits, x_t.long(), x1.long(), batch, chunk_size=chunk_size, work_per_token=4 * V * V
        )
