"""SPG: the sandwiched bounds (``SandwichedBounds``) and the sign-selected objective
(``SandwichedObjective``), by hand and by exact enumeration.

- the masks: block-wise structure (earlier blocks clean, later ones fully masked, a count in
  ``1..|block|`` inside the chosen block) and the weights ``L / n``;
- both bounds recomputed by hand from a hand-made plan and a lookup-table policy;
- exact enumeration (``L = 3``): with every mask of the random-mask distribution as one draw, the
  lower bound IS the ELBO and lies below the exact ``log pi(x)`` of the one-token-at-a-time sampler;
  the upper bound with ``beta = L`` lies above it (Hoelder), with ``beta = 1`` it need not;
- the objective's loss and gradient by hand; the refusals (uniform source, mismatched parts);
- one PolicyUpdate step: ratio exactly 1 on the first mini-batch, then a step that moves the bounds.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from dflow.paths import MixturePath
from dflow.paths.sources import MaskSource, UniformSource
from dflow.rl import (
    EPG,
    Compute,
    ELBOLikelihood,
    GroupAdvantage,
    PolicyUpdate,
    SampleSumAggregation,
    SandwichedBounds,
    SandwichedObjective,
    UnitPlan,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler, Trajectory
from tests.conftest import TinyTransformerBuilder

pytestmark = pytest.mark.usefixtures("single_thread")

V = 3
MASK = V


def _traj(x1: Tensor) -> Trajectory:
    B, L = x1.shape
    states = torch.full((2, B, L), MASK, dtype=torch.uint8)
    states[1] = x1
    return Trajectory(
        states=states,
        times=torch.tensor([0.0, 1.0]),
        log_probs=torch.zeros(B, 1),
        x1=x1,
        posterior_argmax=x1[None].to(torch.uint8),
        cond=None,
    )


def _sampler(source=None) -> Sampler:
    return Sampler(MixturePath(source if source is not None else MaskSource(V)), num_steps=2)


class TablePolicy:
    """``p(x_1^i | state)`` from a table: the logits of position ``i`` depend on the whole state."""

    def __init__(self, L: int, seed: int = 0, scale: float = 2.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.L = L
        self.table = scale * torch.randn((V + 1) ** L, L, V, generator=g, dtype=torch.float64)

    def index(self, x: Tensor) -> Tensor:
        powers = (V + 1) ** torch.arange(self.L)
        return (x.long() * powers).sum(-1)

    def __call__(self, x: Tensor, t: Tensor, cond) -> Tensor:
        return self.table[self.index(x)]  # [B, L, V]

    def p(self, state: list[int], i: int, value: int) -> float:
        row = self.table[self.index(torch.tensor(state))]
        return float(torch.softmax(row[i], -1)[value])


# ---------------------------------------------------------------- the masks


def test_block_masks_keep_earlier_blocks_clean_and_mask_later_ones():
    L, Bl = 10, 4  # blocks [0..3], [4..7], [8, 9] (a short last block)
    est = SandwichedBounds(num_draws=3, block_length=Bl)
    x1 = torch.randint(0, V, (64, L), generator=torch.Generator().manual_seed(0))
    plan = est.plan(_traj(x1), _sampler(), torch.Generator().manual_seed(1))
    masked = plan.states == MASK  # [M, B, L]
    block = torch.arange(L) // Bl
    counts = {}
    for draw in masked.flatten(0, 1):
        c = int(block[draw.nonzero()[0, 0]])  # the partly masked block holds the first mask
        assert not draw[block < c].any() and draw[block > c].all()
        n = int(draw[block == c].sum())
        assert 1 <= n <= int((block == c).sum())
        counts[(c, n)] = counts.get((c, n), 0) + 1
    assert {c for c, _ in counts} == {0, 1, 2}
    # SPG's weight: L over the number of masked tokens; the time shows that fraction to the model
    torch.testing.assert_close(plan.weights, (L / masked.sum(-1).float()).T)
    torch.testing.assert_close(plan.times, 1.0 - masked.sum(-1).float().T / L)  # linear scheduler


def test_block_and_count_are_uniform():
    """Block ``c ~ U{0, 1}`` and count ``n ~ U{1, 2}`` (L = 4, blocks of 2): each (c, n) has 1/4."""
    est = SandwichedBounds(num_draws=4, block_length=2)
    x1 = torch.zeros(2000, 4, dtype=torch.long)
    masked = est.plan(_traj(x1), _sampler(), torch.Generator().manual_seed(0)).states == MASK  # [4, N, 4]
    first_block = masked[..., :2].any(-1)
    n0, n1 = masked[..., :2].sum(-1), masked[..., 2:].sum(-1)
    cells = [first_block & (n0 == 1), first_block & (n0 == 2), ~first_block & (n1 == 1), ~first_block & (n1 == 2)]
    freq = torch.stack(cells).float().mean((1, 2))  # (c, n) = (0, 1), (0, 2), (1, 1), (1, 2)
    # 8000 draws: the standard error of each frequency is sqrt(0.25 * 0.75 / 8000) = 0.005
    torch.testing.assert_close(freq, torch.full((4,), 0.25), rtol=0, atol=0.02)


# ---------------------------------------------------------------- the bounds by hand


def _hand_plan(states: list[list[int]], weights: list[float], L: int) -> UnitPlan:
    s = torch.tensor(states, dtype=torch.uint8)[:, None]  # [M, 1, L]
    frac = (s == MASK).sum(-1).float().T / L  # [1, M]
    return UnitPlan(times=1.0 - frac, states=s, weights=torch.tensor([weights]))


def test_bounds_by_hand():
    """``x_1 = [0, 1, 2, 1]``, blocks of 2, two draws:

    draw 1: block 0 with 1 mask (position 1), block 1 fully masked: state [0, M, M, M], w = 4/3;
    draw 2: block 1 with both masked:                               state [0, 1, M, M], w = 4/2.

    lower = (1/2) [4/3 (l1_1 + l1_2 + l1_3) + 2 (l2_2 + l2_3)]      (l = log p(x_1^i | draw))
    upper = 4/3 sum_{i = 1, 2, 3} (1/beta) log[(1/2) sum_j w_j [i masked in j] p_ij^beta]
    (position 0 is never masked: left out, and the 3 scored tokens stand for all 4).
    """
    L, beta = 4, 1.5
    x1 = torch.tensor([[0, 1, 2, 1]])
    states = [[0, MASK, MASK, MASK], [0, 1, MASK, MASK]]
    weights = [4 / 3, 2.0]
    policy = TablePolicy(L, seed=3)
    plan = _hand_plan(states, weights, L)
    est = SandwichedBounds(num_draws=2, block_length=2, eubo_beta=beta, token_mean=False)
    units = est.log_probs(policy, _traj(x1), plan, _sampler()).double()  # [1, 2]

    target = x1[0].tolist()
    p = [[policy.p(states[j], i, target[i]) for i in range(L)] for j in range(2)]
    lower = 0.5 * (4 / 3 * sum(math.log(p[0][i]) for i in (1, 2, 3)) + 2.0 * sum(math.log(p[1][i]) for i in (2, 3)))
    upper = math.log(0.5 * 4 / 3 * p[0][1] ** beta) / beta
    upper += sum(math.log(0.5 * (4 / 3 * p[0][i] ** beta + 2.0 * p[1][i] ** beta)) / beta for i in (2, 3))
    upper *= 4 / 3
    torch.testing.assert_close(units[0], torch.tensor([lower, upper], dtype=torch.float64), rtol=1e-6, atol=1e-6)

    # token_mean (SPG's normalisation) divides both by L
    mean = SandwichedBounds(num_draws=2, block_length=2, eubo_beta=beta).log_probs(policy, _traj(x1), plan, _sampler())
    torch.testing.assert_close(mean.double(), units / L, rtol=1e-6, atol=1e-6)

    # score_later_blocks=False scores only the partly masked block: draw 1 scores position 1 with
    # w = blocks x |block| / n = 2 x 2 / 1, draw 2 positions 2, 3 with w = 2 x 2 / 2
    exact = SandwichedBounds(num_draws=2, block_length=2, eubo_beta=beta, score_later_blocks=False, token_mean=False)
    plan_exact = _hand_plan(states, [4.0, 2.0], L)
    units = exact.log_probs(policy, _traj(x1), plan_exact, _sampler()).double()
    lower = 0.5 * (4.0 * math.log(p[0][1]) + 2.0 * (math.log(p[1][2]) + math.log(p[1][3])))
    upper = (
        4
        / 3
        * sum(
            math.log(0.5 * w * p[j][i] ** beta) / beta for j, w, idx in ((0, 4.0, (1,)), (1, 2.0, (2, 3))) for i in idx
        )
    )
    torch.testing.assert_close(units[0], torch.tensor([lower, upper], dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_bounds_have_gradients_and_no_nan_for_never_masked_tokens():
    est = SandwichedBounds(num_draws=1, block_length=2)
    x1 = torch.tensor([[0, 1, 2, 1]])
    plan = _hand_plan([[0, 1, MASK, MASK]], [2.0], 4)  # positions 0, 1 never masked
    table = TablePolicy(4, seed=1)
    table.table.requires_grad_(True)
    units = est.log_probs(table, _traj(x1), plan, _sampler())
    units.sum().backward()
    assert torch.isfinite(table.table.grad).all() and table.table.grad.abs().sum() > 0


# ---------------------------------------------------------------- exact enumeration


def _exact_log_likelihood(policy: TablePolicy, x: list[int]) -> float:
    """``log pi(x)`` of the sampler that reveals one token at a time in a uniformly random order."""
    L, total = len(x), 0.0
    for order in itertools.permutations(range(L)):
        state, prob = [MASK] * L, 1.0
        for i in order:
            prob *= policy.p(state, i, x[i])
            state[i] = x[i]
        total += prob
    return math.log(total / math.factorial(L))


def _every_random_mask_once(L: int) -> tuple[list[list[int]], list[float]]:
    """The random-mask distribution (n ~ U{1..L}, then a uniform n-subset) as equally likely draws:
    a subset of size n has probability 1 / (L C(L, n)), so it appears L! / (L C(L, n)) x ... times;
    for L = 3 that is once for each 1- and 2-subset and 3 times for the full mask (9 draws)."""
    assert L == 3
    draws = []
    for n in (1, 2, 3):
        for subset in itertools.combinations(range(L), n):
            draws += [subset] * (3 if n == 3 else 1)
    return draws, [L / len(s) for s in draws]


@pytest.mark.parametrize("seed", range(6))
def test_exact_bounds_sandwich_the_exact_log_likelihood(seed):
    L = 3
    policy = TablePolicy(L, seed=seed, scale=3.0)
    x = [seed % V, (seed + 1) % V, 0]
    subsets, weights = _every_random_mask_once(L)
    states = [[MASK if i in s else x[i] for i in range(L)] for s in subsets]
    plan = _hand_plan(states, weights, L)
    log_pi = _exact_log_likelihood(policy, x)

    def bounds(beta: float) -> Tensor:
        est = SandwichedBounds(num_draws=len(states), block_length=None, eubo_beta=beta, token_mean=False)
        return est.log_probs(policy, _traj(torch.tensor([x])), plan, _sampler()).double()[0]

    lower, upper_L = bounds(float(L)).tolist()
    # the lower unit is the exact ELBO of masked diffusion (every mask weighted by its probability)
    assert lower <= log_pi + 1e-9
    # Hoelder: log E[prod_i c_i] <= sum_i (1/L) log E[c_i^L]; the upper unit with beta = L is that bound
    assert upper_L >= log_pi - 1e-9


def test_beta_below_the_length_is_not_a_guaranteed_upper_bound():
    """A documented caveat: with beta = 1 the EUBO formula can fall below log pi (L = 2 here: the
    first revealed token is near-certain on one order, near-impossible on the other)."""
    L = 2
    policy = TablePolicy(L, seed=0)
    big = 8.0
    x = [0, 0]
    # p(x^0 | both masked) = 1, p(x^1 | x^0 known) = 1; p(x^1 | both masked) ~ 0, p(x^0 | x^1 known) ~ 0
    table = torch.zeros_like(policy.table)
    idx = lambda s: int(policy.index(torch.tensor(s)))  # noqa: E731
    table[idx([MASK, MASK]), 0, 0], table[idx([MASK, MASK]), 1, 0] = big, -big
    table[idx([0, MASK]), 1, 0], table[idx([MASK, 0]), 0, 0] = big, -big
    policy.table = table
    log_pi = _exact_log_likelihood(policy, x)
    states = [[MASK, 0], [0, MASK], [MASK, MASK]]  # n = 1 (two subsets), n = 2 (twice as likely)
    states.append([MASK, MASK])
    plan = _hand_plan(states, [2.0, 2.0, 1.0, 1.0], L)
    est = SandwichedBounds(num_draws=4, block_length=None, eubo_beta=1.0, token_mean=False)
    upper = est.log_probs(policy, _traj(torch.tensor([x])), plan, _sampler())[0, 1].item()
    assert upper < log_pi - 0.5
    est = SandwichedBounds(num_draws=4, block_length=None, eubo_beta=2.0, token_mean=False)
    assert est.log_probs(policy, _traj(torch.tensor([x])), plan, _sampler())[0, 1].item() >= log_pi - 1e-9


# ---------------------------------------------------------------- the objective


def test_objective_by_hand():
    """A = [0.5, -2], omega = 0.5: sample 0 raises its lower bound, loss -0.5 L0; sample 1 lowers
    the mixture, loss -(-2)(0.5 U1 + 0.5 L1) = U1 + L1. Summed over units, averaged over samples."""
    logp = torch.tensor([[-3.0, -1.0], [-4.0, -2.0]], requires_grad=True)  # [[L0, U0], [L1, U1]]
    adv = torch.tensor([0.5, -2.0])
    out = SandwichedObjective(0.5)(logp, logp.detach(), adv)
    torch.testing.assert_close(out.loss.detach(), torch.tensor([[1.5, 0.0], [-4.0, -2.0]]))
    loss = SampleSumAggregation()(out.loss)
    torch.testing.assert_close(loss.detach(), torch.tensor((1.5 + (-6.0)) / 2))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, 0.0], [0.5, 0.5]]))
    assert (out.ratio == 1).all() and not out.clipped.any()

    # omega = 1: SPG with the pure EUBO; omega = 0: the ELBO on both signs
    torch.testing.assert_close(SandwichedObjective(1.0)(logp, logp, adv).loss.detach()[1], torch.tensor([0.0, -4.0]))
    torch.testing.assert_close(SandwichedObjective(0.0)(logp, logp, adv).loss.detach()[1], torch.tensor([-8.0, 0.0]))


def test_refusals_name_the_parts():
    with pytest.raises(ValueError, match="UniformSource"):
        SandwichedBounds().validate(_sampler(UniformSource(V)))
    with pytest.raises(ValueError, match="two units"):
        SandwichedObjective()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="SandwichedBounds"):
        PolicyUpdate(SandwichedBounds(), EPG())
    with pytest.raises(ValueError, match="ELBOLikelihood"):
        PolicyUpdate(ELBOLikelihood(), SandwichedObjective())
    for bad in (dict(num_draws=0), dict(block_length=0), dict(eubo_beta=0.5)):
        with pytest.raises(ValueError):
            SandwichedBounds(**bad)
    with pytest.raises(ValueError, match="mix_weight"):
        SandwichedObjective(1.5)


# ---------------------------------------------------------------- through PolicyUpdate


def test_one_update_through_policy_update(copy_task):
    """Two inner epochs: the first mini-batch has ratio exactly 1 (old and new scored on the same
    masks); after a step the bounds move; the advantage's sign picks the bound that moves."""
    B, G, L = 8, 2, 4
    path = MixturePath(MaskSource(V))
    policy = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=3)
    prompts = [p for p in copy_task.prompts("rl")[: B // G] for _ in range(G)]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(0)
    )
    est = SandwichedBounds(num_draws=2, block_length=2)
    est.validate(sampler)
    update = PolicyUpdate(est, SandwichedObjective(0.5), aggregation=SampleSumAggregation(), num_inner_epochs=2)
    adv = GroupAdvantage(scale="none")(AdvantageInput(torch.rand(B, generator=torch.Generator().manual_seed(1)), G))
    compute = Compute()
    batch = update.prepare(policy, None, traj, adv, sampler, G, compute, torch.Generator().manual_seed(2))
    assert batch.old_logp.shape == (B, 2)
    assert compute.forward == B * 2  # two masked copies per sample, both bounds from them
    assert (batch.old_logp[:, 0] <= 0).all()  # an ELBO of a discrete outcome
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    out = update.loss(policy, batch, torch.arange(B), sampler, compute)
    assert out.stats["ratio_min"] == out.stats["ratio_max"] == 1.0
    out.loss.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = est.log_probs(policy, traj, batch.plan, sampler)
    moved = after - batch.old_logp
    assert moved.abs().max() > 1e-4
    # to first order the step moves the lower bound of the positive samples up, the upper bound of
    # the negative ones down (omega = 0.5)
    pos, neg = adv.values > 0, adv.values < 0
    assert moved[pos, 0].mean() > 0 and moved[neg, 1].mean() < 0
