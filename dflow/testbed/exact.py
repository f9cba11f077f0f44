"""The exact final-sample distribution of the MDP sampler, by dynamic programming over all states.

The sampler's state ``x_{t_k}`` is one of ``N = S**L`` sequences. With ``pi_k(a)`` the probability that
``x_{t_k} = a`` (``pi_0 = prod_i p_0(a_i)``, the source), one sampler step is

    pi_{k+1}(b) = sum_a pi_k(a) prod_i P_k(b_i | a),
    P_k(. | a) = path.step_kernel(p_{1|t_k}(. | a), a, t_k, t_{k+1})

with the posterior ``p_{1|t_k} = softmax(sampler.logits(policy, a, t_k, c))`` (guidance and temperature
as the sampler applies them). The kernel factorises over positions given ``a``, so splitting the
positions into a head ``H`` (the first ``h``) and a tail ``T``,

    pi_{k+1}[b_H, b_T] = sum_a pi_k(a) A[a, b_H] B[a, b_T],     A[a, b_H] = prod_{i in H} P_k(b_i | a),
                                                               B[a, b_T] = prod_{i in T} P_k(b_i | a)

is one matrix product ``(pi_k * A)^T B`` of cost ``N * S**h * S**(L-h) = N**2`` per prompt, without ever
building the ``N x N`` transition matrix. After the last step (``t_K = 1``, where every kernel samples
the posterior) all mass sits on clean sequences: their probabilities are the result.

The posterior of every state comes from one batched network pass per step, over the states that
carry mass for some prompt (for a mask source, step 0 has only the all-mask state). A time-agnostic
policy (``DFlowTransformer`` without time conditioning, dflow's default) gives the same posterior at
every step, so one pass over all states serves the whole grid (``K`` times cheaper).

Example::

    sampler = Sampler(MixturePath(MaskSource(3)), num_steps=8)
    dist = exact_distribution(model, sampler, cond, seq_len=5)   # cond long [P, Lc]
    dist.probs          # float64 [P, 3**5]: P(x_1 = all_sequences(3, 5)[j] | prompt p)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dflow.sampling.sampler import Policy, Sampler
from dflow.testbed.states import MAX_STATES, StateSpace


@dataclass
class ExactDistribution:
    """The exact distribution of the sampler's final sample ``x_1``, per prompt.

    Attributes:
        probs: float64 ``[P, V**L]``, ``probs[p, j] = P(x_1 = sequences[j] | prompt p)``; rows sum to 1.
            Differentiable in the policy's weights when computed with ``with_grad=True``.
        sequences: long ``[V**L, L]``, the clean sequence of every column (``all_sequences(V, L)``).
        residual_mass: float64 ``[P]``, mass left on sequences holding a mask id after the last step
            (0 up to rounding: the last step samples the posterior, which has no mask column).
        forward_passes: sequences sent through the network, summed over steps (x2 with guidance).
    """

    probs: Tensor
    sequences: Tensor
    residual_mass: Tensor
    forward_passes: int

    @property
    def num_prompts(self) -> int:
        return self.probs.shape[0]


def is_time_agnostic(policy: Policy) -> bool:
    """True for a model whose config says it ignores ``t`` (``DFlowTransformer`` with
    ``time_conditioning=False``, the default): its posterior at a state is the same at every step."""
    return getattr(getattr(policy, "config", None), "time_conditioning", None) is False


def state_posteriors(
    policy: Policy, sampler: Sampler, states: Tensor, cond: Tensor | None, t: Tensor, chunk_size: int
) -> tuple[Tensor, int]:
    """``p_{1|t}(. | a, c)`` of every prompt and state: float64 ``[P, n, L, V]``, from the sampler's own
    sampling logits (guidance and temperature applied).

    ``states`` long ``[n, L]``, ``cond`` long ``[P, Lc]`` or None (one unconditional prompt), ``t`` a
    0-dim time. The network sees ``P * n`` sequences in chunks of ``chunk_size`` rows. Returns the
    posteriors and the number of sequences passed through the network.
    """
    n, L = states.shape
    P = 1 if cond is None else cond.shape[0]
    rows = states.repeat(P, 1)  # [P * n, L], prompt-major
    conds = None if cond is None else cond.repeat_interleave(n, dim=0)  # [P * n, Lc]
    out = []
    for start in range(0, P * n, chunk_size):
        x = rows[start : start + chunk_size]  # [c, L]
        c = None if conds is None else conds[start : start + chunk_size]
        logits = sampler.logits(policy, x, t.expand(x.shape[0]), c)  # [c, L, V], guided and tempered
        out.append(torch.softmax(logits.double(), dim=-1))
    passes = P * n * (2 if sampler.uses_guidance(cond) else 1)
    return torch.cat(out).view(P, n, L, -1), passes


def step_kernels(sampler: Sampler, posteriors: Tensor, states: Tensor, k: int) -> Tensor:
    """``P_k(x_{t_{k+1}}^i = y | x_{t_k} = a)`` from the posteriors ``[P, n, L, V]`` of the states
    ``[n, L]``: float64 ``[P, n, L, S]``, by the path's own ``step_kernel`` on the sampler's grid."""
    P, n, L, V = posteriors.shape
    times = sampler.times.to(states.device)  # float32, exactly the sampler's grid values
    t, s = times[k].expand(P * n), times[k + 1].expand(P * n)
    kernel = sampler.path.step_kernel(posteriors.reshape(P * n, L, V), states.repeat(P, 1), t, s)
    return kernel.view(P, n, L, -1)


def _outer(factors: Tensor) -> Tensor:
    """``out[..., code(y)] = prod_i factors[..., i, y_i]``: ``[..., m, S] -> [..., S**m]`` (first most significant)."""
    out = factors[..., 0, :]
    for i in range(1, factors.shape[-2]):
        out = (out[..., :, None] * factors[..., i, None, :]).flatten(-2)  # [..., S**(i+1)]
    return out


def propagate(pi: Tensor, kernels: Tensor) -> Tensor:
    """One step of the DP: ``pi`` ``[P, n]`` over the states whose ``kernels`` ``[P, n, L, S]`` are given
    -> ``[P, S**L]`` over all states (see the module docstring for the head / tail split)."""
    L = kernels.shape[2]
    h = (L + 1) // 2
    head = _outer(kernels[:, :, :h]) * pi[..., None]  # [P, n, S**h]
    tail = _outer(kernels[:, :, h:]) if h < L else kernels.new_ones(*kernels.shape[:2], 1)  # [P, n, S**(L-h)]
    return torch.bmm(head.transpose(1, 2), tail).flatten(1)  # [P, S**L]


def exact_distribution(
    policy: Policy,
    sampler: Sampler,
    cond: Tensor | None,
    seq_len: int,
    *,
    max_states: int = MAX_STATES,
    chunk_size: int = 8192,
    with_grad: bool = False,
    time_agnostic: bool | None = None,
) -> ExactDistribution:
    """Exact final-sample distribution of ``sampler`` driven by ``policy``, for every prompt in ``cond``.

    Args:
        policy: ``(x_t [B, L], t [B], cond) -> logits [B, L, V]``, e.g. a ``DFlowTransformer`` in eval mode.
        sampler: the :class:`~dflow.sampling.Sampler` whose draws are described: its path (source and
            step kernel), time grid, guidance scale and temperature.
        cond: long ``[P, Lc]`` prompt ids, or None for an unconditional policy (``P = 1``).
        seq_len: ``L``.
        max_states: refuse (``ValueError``) a state space above this many sequences.
        chunk_size: sequences per network call.
        with_grad: keep the graph, so ``probs`` can be differentiated (exact policy gradients).
        time_agnostic: the policy ignores ``t``, so one network pass over all states serves every
            step; ``None`` reads it from the policy's config (:func:`is_time_agnostic`).
    """
    path = sampler.path
    space = StateSpace.build(path.num_states, path.vocab_size, seq_len, max_states)
    if cond is not None and (not torch.is_tensor(cond) or cond.dim() != 2):
        raise ValueError(f"cond must be a long tensor [P, Lc] or None, got {getattr(cond, 'shape', cond)!r}")
    P = 1 if cond is None else cond.shape[0]
    device = cond.device if cond is not None else torch.device("cpu")
    states = space.states.to(device)  # [N, L]
    times = sampler.times.to(device)  # [K + 1] float32, as Sampler.rollout moves them
    passes = 0
    with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
        p0 = path.source.probs(dtype=torch.float64, device=device)  # [S]
        pi = p0[states].prod(-1).expand(P, -1)  # [P, N], x_0 ~ p_0 independently per token
        if time_agnostic is None:
            time_agnostic = is_time_agnostic(policy)
        cached = None  # a time-agnostic policy's posteriors of all states, computed once
        for k in range(sampler.num_steps):
            support = (pi > 0).any(0).nonzero().squeeze(1)  # states with mass for some prompt
            if time_agnostic and cached is None and support.numel() > 1:
                cached, n = state_posteriors(policy, sampler, states, cond, times[k], chunk_size)
                passes += n
            if cached is not None:
                posteriors = cached[:, support]  # [P, n, L, V]
            else:
                posteriors, n = state_posteriors(policy, sampler, states[support], cond, times[k], chunk_size)
                passes += n
            pi = propagate(pi[:, support], step_kernels(sampler, posteriors, states[support], k))  # [P, N]
        clean = space.clean_index.to(device)
        probs = pi[:, clean]  # [P, V**L]
        residual = (pi.sum(-1) - probs.sum(-1)).detach()
    return ExactDistribution(probs=probs, sequences=states[clean], residual_mass=residual, forward_passes=passes)
