"""Rollout throughput of dflow's MDP sampler: what recording log-probs costs, and how it compares to a peer.

Measures tokens per second (``batch * length / seconds`` per rollout) of

- ``Sampler.rollout``: records states, per-step log-probs and posterior argmaxes (what RL needs);
- the same loop without any recording (:func:`rollout_without_recording`): identical draws from the
  same random numbers (checked before timing), but no log-probs, no stored states, no argmax;
- the public ``flow-matching`` package's ``MixtureDiscreteEulerSolver`` (optional peer, CC BY-NC:
  imported only here, only if installed), which records nothing.

All variants use the same time-agnostic denoiser (a 2-layer transformer, hidden 128), batch, length,
vocabulary, uniform source, linear scheduler, uniform time grid and number of steps, so each rollout
makes exactly ``K`` denoiser calls. The peer's mixture-path solver is an Euler kernel, so the
like-for-like dflow row is ``discretization="euler"``; the exact kernel is reported too. Variants run
interleaved (one rollout each per repeat, in rotating order), and the table reports medians.

Usage::

    python benchmarks/sampler_speed.py            # full run; writes the table into docs/benchmarks.md
    python benchmarks/sampler_speed.py --quick    # small sizes, prints only (add --write to write)
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dflow.paths import LinearScheduler, MixturePath, UniformSource
from dflow.sampling import Sampler, time_grid

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sampler_speed:begin -->", "<!-- sampler_speed:end -->"


# ---------------------------------------------------------------------------------------------- denoiser
class TransformerDenoiser(nn.Module):
    """Time-agnostic bidirectional transformer: ``(x_t [B, L], t [B], cond) -> logits [B, L, V]``
    (FUDOKI / URSA-style denoisers ignore ``t`` too)."""

    def __init__(self, num_states: int, vocab_size: int, seq_len: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_states, hidden)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, hidden))
        block = nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x_t: Tensor, t: Tensor | None = None, cond=None) -> Tensor:
        return self.head(self.encoder(self.embed(x_t) + self.pos))  # [B, L, V]


# ---------------------------------------------------------------------------------------------- dflow without recording
@torch.no_grad()
def rollout_without_recording(
    path: MixturePath,
    policy: Callable,
    times: Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    cond=None,
) -> Tensor:
    """The sampler's loop with nothing recorded: returns only ``x_1`` ``[B, L]``.

    Draws exactly as :meth:`MixturePath.sample_step` (Gumbel-max posterior draw, then a jump with
    probability ``lam``), consuming the generator in the same order, but never computes a log-prob.
    """
    x = path.source.sample((batch_size, seq_len), generator=generator)  # [B, L]
    for k in range(times.shape[0] - 1):
        t, s = times[k].expand(batch_size), times[k + 1].expand(batch_size)
        logits = policy(x, t, cond)  # [B, L, V]
        draw = torch.empty_like(logits).exponential_(generator=generator).log_().neg_().add_(logits).argmax(-1)
        jump = torch.rand(x.shape, generator=generator) < path.jump_prob(x, t, s)  # [B, L]
        x = torch.where(jump, draw, x)
    return x


# ---------------------------------------------------------------------------------------------- peer
def load_peer():
    """``(MixtureDiscreteEulerSolver, MixtureDiscreteProbPath, PolynomialConvexScheduler, ModelWrapper)`` or
    ``None`` with a reason when ``flow-matching`` is not installed."""
    try:
        import flow_matching  # noqa: F401
    except ImportError:
        return None, "flow-matching is not installed (`pip install flow-matching`)"
    try:
        from flow_matching.solver import MixtureDiscreteEulerSolver
    except ImportError:
        # `flow_matching.solver/__init__` also imports the ODE solver, which needs torchdiffeq + scipy;
        # `make bench` installs flow-matching with --no-deps. The discrete solver needs neither, so
        # load its package without running that __init__.
        pkg = types.ModuleType("flow_matching.solver")
        pkg.__path__ = [str(Path(flow_matching.__file__).parent / "solver")]
        sys.modules["flow_matching.solver"] = pkg
        discrete = importlib.import_module("flow_matching.solver.discrete_solver")
        MixtureDiscreteEulerSolver = discrete.MixtureDiscreteEulerSolver
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.utils import ModelWrapper

    return (MixtureDiscreteEulerSolver, MixtureDiscreteProbPath, PolynomialConvexScheduler, ModelWrapper), ""


def make_peer_rollout(peer, model: nn.Module, vocab_size: int, times: Tensor, batch_size: int, seq_len: int):
    Solver, ProbPath, PolyScheduler, ModelWrapper = peer

    class Posterior(ModelWrapper):  # the peer's solvers take posterior probabilities, not logits
        def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
            return torch.softmax(self.model(x, t), dim=-1)

    solver = Solver(model=Posterior(model), path=ProbPath(PolyScheduler(n=1.0)), vocabulary_size=vocab_size)

    def run(generator: torch.Generator) -> Tensor:
        x0 = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)  # uniform source
        return solver.sample(x_init=x0, step_size=None, time_grid=times)

    return run


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Variant:
    name: str
    discretization: str
    records: bool
    run: Callable[[torch.Generator], object]
    seconds: list[float]  # CPU seconds of this process per rollout (what the table reports)
    wall: list[float]  # wall-clock seconds, for reference: on a shared machine they include waiting


def measure(variants: list[Variant], repeats: int, seed: int) -> None:
    for v in variants:  # warm-up: first-call allocations and kernel selection
        v.run(torch.Generator().manual_seed(seed))
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate who goes first
        for v in order:
            g = torch.Generator().manual_seed(seed + r)
            start, start_wall = time.process_time(), time.perf_counter()
            v.run(g)
            v.seconds.append(time.process_time() - start)
            v.wall.append(time.perf_counter() - start_wall)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} CPU cores visible, {gpu}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s); Python {platform.python_version()}"
    )


def bench_denoiser(
    label: str, model: nn.Module, B: int, L: int, V: int, K: int, repeats: int, peer
) -> tuple[list, dict]:
    """Time the five variants on one denoiser; returns table rows and the headline ratios."""
    times = time_grid("uniform", K)
    paths = {d: MixturePath(UniformSource(V), LinearScheduler(), discretization=d) for d in ("euler", "exact")}
    samplers = {d: Sampler(p, num_steps=K) for d, p in paths.items()}
    # parity: without recording, the loop draws the very same samples from the same random numbers
    for d in paths:
        a = samplers[d].rollout(model, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(1)).x1
        b = rollout_without_recording(paths[d], model, times, B, L, torch.Generator().manual_seed(1))
        if not torch.equal(a, b):
            raise RuntimeError(f"the no-recording loop diverged from Sampler.rollout ({d}); the comparison is void")

    variants = []
    for d in ("euler", "exact"):
        record = lambda g, d=d: samplers[d].rollout(model, batch_size=B, seq_len=L, generator=g)  # noqa: E731
        variants.append(Variant("dflow Sampler.rollout", d, True, record, [], []))
        variants.append(
            Variant(
                "dflow loop, no recording",
                d,
                False,
                lambda g, d=d: rollout_without_recording(paths[d], model, times, B, L, g),
                [],
                [],
            )
        )
    if peer is not None:
        variants.append(Variant(PEER, "euler", False, make_peer_rollout(peer, model, V, times, B, L), [], []))
    measure(variants, repeats, seed=10)

    med = {(v.name, v.discretization): statistics.median(v.seconds) for v in variants}
    results = {}
    for d in ("euler", "exact"):
        rec = next(v for v in variants if v.records and v.discretization == d)
        bare = next(v for v in variants if not v.records and v.discretization == d and v.name != PEER)
        # from paired repeats (adjacent runs share the machine's state), then the median
        pairs = list(zip(rec.seconds, bare.seconds, strict=True))
        results[f"overhead_{d}_pct"] = 100 * statistics.median(a / b - 1 for a, b in pairs)
        results[f"overhead_{d}_ms"] = 1e3 * statistics.median(a - b for a, b in pairs)
        results[f"bare_{d}_ms"] = 1e3 * statistics.median(bare.seconds)
    peer_t = med.get((PEER, "euler"))
    if peer_t is not None:
        for d in ("euler", "exact"):
            results[f"dflow_{d}_vs_peer"] = peer_t / med[("dflow Sampler.rollout", d)]
    rows = []
    for v in variants:
        t = med[(v.name, v.discretization)]
        rows.append(
            (
                label,
                v.name,
                v.discretization,
                "yes" if v.records else "no",
                f"{B * L / t:,.0f}",
                f"{t * 1e3:.1f}",
                f"{min(v.seconds) * 1e3:.1f}-{max(v.seconds) * 1e3:.1f}",
                f"{statistics.median(v.wall) * 1e3:.1f}",
                f"{peer_t / t:.3f}" if peer_t is not None else "n/a",
            )
        )
    return rows, results


class LookupDenoiser(nn.Module):
    """A lookup table ``x_t -> logits``: almost free, so a rollout's time is the sampler's own."""

    def __init__(self, num_states: int, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_states, vocab_size)

    def forward(self, x_t: Tensor, t: Tensor | None = None, cond=None) -> Tensor:
        return self.table(x_t)  # [B, L, V]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="repeats with the transformer (the lookup table gets 3x)")
    # One intra-op thread by default: on a shared 2-core machine a second thread made every variant
    # 2-10x slower and the spread larger than the effects measured; pass --threads 0 for torch's default.
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 keeps torch's default")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md even with --quick")
    ap.add_argument("--no-write", action="store_true", help="never write docs/benchmarks.md")
    args = ap.parse_args(argv)
    B = args.batch or (8 if args.quick else 64)
    L = args.length or (16 if args.quick else 64)
    K = args.steps or (4 if args.quick else 16)
    repeats = args.repeats or (3 if args.quick else 11)
    V = args.vocab
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peer, why = load_peer()

    rows, results = [], {}
    for label, model, reps in (
        ("transformer", TransformerDenoiser(V, V, L).eval(), repeats),
        ("lookup table", LookupDenoiser(V, V).eval(), 3 * repeats),
    ):
        r, res = bench_denoiser(label, model, B, L, V, K, reps, peer)
        rows += r
        results[label] = res

    command = "python benchmarks/sampler_speed.py" + (" --quick" if args.quick else "")
    setup = (
        f"B={B} sequences x L={L} tokens, V={V}, K={K} steps (uniform grid, linear kappa, uniform source). "
        f"Denoisers: a 2-layer transformer (hidden 128, time-agnostic; {repeats} repeats) and a lookup table "
        f"(sampler-bound; {3 * repeats} repeats). Variants interleaved; medians of this process's CPU time "
        f"(the machine is shared, so wall-clock also counts time spent waiting for a core)"
    )
    _print_rich(rows, results, setup, machine(), why)
    if not args.no_write and (not args.quick or args.write):
        _write_markdown(rows, results, setup, machine(), command, why)
    return results


PEER = "flow_matching MixtureDiscreteEulerSolver"
HEADER = (
    "denoiser",
    "variant",
    "kernel",
    "records log-probs",
    "tokens / CPU-s",
    "CPU ms / rollout",
    "min-max CPU ms",
    "wall ms",
    "x peer speed",
)


def _summary_lines(results: dict[str, dict[str, float]], why: str) -> list[str]:
    lines = []
    for label, res in results.items():
        line = (
            f"{label}: recording costs {res['overhead_euler_pct']:+.1f}% (euler), "
            f"{res['overhead_exact_pct']:+.1f}% (exact) (target <= 3%)"
        )
        if "dflow_euler_vs_peer" in res:
            line += (
                f"; dflow with recording runs at {res['dflow_euler_vs_peer']:.3f}x (euler) and "
                f"{res['dflow_exact_vs_peer']:.3f}x (exact) the peer's throughput without recording (target >= 1)"
            )
        lines.append(line)
    if {"transformer", "lookup table"} <= set(results):
        # Recording does the same work whatever the denoiser (one logsumexp and one argmax over the
        # logits, a gather, the stored states), so its absolute cost, measured where the sampler is
        # all there is, divided by a transformer rollout is a low-noise estimate of its share there.
        look, tf = results["lookup table"], results["transformer"]
        share = {d: 100 * look[f"overhead_{d}_ms"] / tf[f"bare_{d}_ms"] for d in ("euler", "exact")}
        lines.append(
            f"recording's absolute cost from the lookup-table run ({look['overhead_euler_ms']:.1f} / "
            f"{look['overhead_exact_ms']:.1f} ms per rollout) is {share['euler']:.1f}% (euler) / {share['exact']:.1f}% "
            f"(exact) of a transformer rollout without recording"
        )
    if why:
        lines.append(f"peer skipped: {why}")
    return lines


def _print_rich(rows, results, setup, where, why) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dflow dependency, but keep the numbers visible without it
        print("\n".join(" | ".join(r) for r in [HEADER, *rows]))
        print("\n".join(_summary_lines(results, why)))
        return
    table = Table(title="dflow sampler throughput", caption=setup)
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i < 4 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console(width=150)
    console.print(table)
    console.print(f"machine: {where}")
    for line in _summary_lines(results, why):
        console.print(line)


def _write_markdown(rows, results, setup, where, command, why) -> None:
    out = [
        BEGIN,
        "## Sampler throughput (`benchmarks/sampler_speed.py`)",
        "",
        f"Command: `{command}` (`make bench` runs it after installing the optional peer).",
        "",
        f"Machine: {where}.",
        "",
        f"Setup: {setup}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += [""] + [f"- {line}" for line in _summary_lines(results, why)] + [END]
    block = "\n".join(out)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
