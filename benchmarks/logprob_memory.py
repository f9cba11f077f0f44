"""Peak memory of scoring logits: the full log-softmax against dflow's chunked log-probs.

One forward + backward pass from logits ``[B, L, V]`` (a leaf tensor, as a denoiser's output is to
the scoring code) of two terms:

- **log-prob**: ``log p(x_1)`` per token, summed. Full: ``log_softmax(logits).gather`` (what
  ``token_scores`` did before chunking). Chunked: ``dflow.logprobs.log_softmax_gather``.
- **ELBO term**: ``MixturePath.generalized_kl`` (uniform source, ``t = 0.5``), summed. Full: the same
  formula from a full ``[B, L, V]`` log-softmax (the code before chunking, copied below). Chunked:
  ``MixturePath.generalized_kl`` as it is now.

For bf16 logits the full variants are measured twice: with the float32 upcast that scoring in float32
needs (``logits.float()``, what the sampler and the pretraining losses did), and in bf16 (what
``token_scores`` did with a bf16 model's logits, rounding the log-probs to bf16). Both variants of a
case run in the same process, back to back.

**What is measured.** The peak of the bytes allocated by tensors during the pass, above what was
allocated before it (the logits and targets themselves are not counted; the logits' gradient, which
every variant must produce, is). On CPU: ``torch.profiler`` with ``profile_memory=True`` records every
allocation and free of the CPU allocator; the peak is the largest running sum of their sizes in time
order (the meter is checked on known allocations at start-up). This is the
tensors' own accounting, not the process's resident memory, so allocator caching and the
interpreter do not blur it. On a GPU: ``torch.cuda.max_memory_allocated`` above the allocation before.
Times are CPU seconds of one extra unprofiled pass per variant (information only).

Usage::

    python benchmarks/logprob_memory.py            # writes its block into docs/benchmarks.md
    python benchmarks/logprob_memory.py --quick    # small sizes, prints only (add --write to write)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dflow.logprobs import CHUNK_ELEMENTS, log_softmax_gather, resolve_chunk_size, set_chunk_elements
from dflow.paths import LinearScheduler, MixturePath, UniformSource

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_peak, write_block  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- logprob_memory:begin -->", "<!-- logprob_memory:end -->"
MIB = 2**20


# ---------------------------------------------------------------------------------------------- meter
def _cuda_peak(fn: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    return _cuda_peak(fn) if device.type == "cuda" else cpu_peak(fn)


def check_meter(device: torch.device) -> None:
    """4 MiB and 2 MiB alive together, then 1 MiB after the first is freed: the meter must read 6 MiB."""

    def known() -> None:
        a = torch.empty(MIB, dtype=torch.float32, device=device)
        b = torch.empty(MIB // 2, dtype=torch.float32, device=device)
        del a
        c = torch.empty(MIB // 4, dtype=torch.float32, device=device)
        del b, c

    got = peak_bytes(known, device)
    if abs(got - 6 * MIB) > 64 * 1024:
        raise RuntimeError(f"memory meter reads {got} bytes for a known 6 MiB peak; do not trust it here")


# ---------------------------------------------------------------------------------------------- terms
def full_generalized_kl(path: MixturePath, logits: Tensor, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """``MixturePath.generalized_kl`` before chunking: a full ``[B, L, V]`` log-softmax in the logits' dtype."""
    V = path.vocab_size
    log_p = torch.log_softmax(logits, dim=-1)  # [B, L, V]
    lp_x1 = log_p.gather(-1, x1[..., None]).squeeze(-1)
    p_xt = log_p.gather(-1, x_t.clamp_max(V - 1)[..., None]).squeeze(-1).exp().masked_fill(x_t >= V, 0.0)
    same = (x_t == x1).to(log_p.dtype)
    bracket = p_xt - same + (1.0 - same) * lp_x1
    tt = t.to(log_p.dtype)
    coef = path.scheduler.d_kappa(tt) / (1.0 - path.scheduler.kappa(tt)).clamp_min(1e-6)
    return -coef[:, None] * bracket


def variants(term: str, path: MixturePath, x1: Tensor, x_t: Tensor, t: Tensor, half: bool):
    """``{name: logits -> scalar}`` for one term; the full variant in the logits' dtype only for bf16."""
    if term == "log-prob":
        out = {
            "full f32": lambda z: torch.log_softmax(z.float(), -1).gather(-1, x1[..., None]).sum(),
            "chunked": lambda z: log_softmax_gather(z, x1[..., None]).sum(),
        }
        if half:
            out["full bf16"] = lambda z: torch.log_softmax(z, -1).gather(-1, x1[..., None]).float().sum()
        return out
    out = {
        "full f32": lambda z: full_generalized_kl(path, z.float(), x1, x_t, t).sum(),
        "chunked": lambda z: path.generalized_kl(z, x1, x_t, t).sum(),
    }
    if half:
        out["full bf16"] = lambda z: full_generalized_kl(path, z, x1, x_t, t).float().sum()
    return out


def measure(term: str, B: int, L: int, V: int, dtype: torch.dtype, device: torch.device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    path = MixturePath(UniformSource(V), LinearScheduler())
    x1 = torch.randint(0, V, (B, L), generator=g, device=device)
    t = torch.full((B,), 0.5, device=device)
    x_t = path.sample_xt(x1, t, generator=g)
    logits = torch.randn(B, L, V, generator=g, device=device).to(dtype).requires_grad_(True)
    row = {"term": term, "B": B, "L": L, "V": V, "dtype": str(dtype).removeprefix("torch.")}
    row["logits_mib"] = logits.numel() * logits.element_size() / MIB
    row["chunk_tokens"] = resolve_chunk_size(None, V)
    for name, fn in variants(term, path, x1, x_t, t, dtype != torch.float32).items():

        def step(fn=fn) -> None:
            fn(logits).backward()  # logits.grad: the gradient every variant must produce

        logits.grad = None
        row[name] = peak_bytes(step, device) / MIB
        logits.grad = None
        tic = time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        row[name + " s"] = time.process_time() - tic
        logits.grad = None
    row["grad_mib"] = row["logits_mib"]  # the gradient has the logits' shape and dtype
    return row


# ---------------------------------------------------------------------------------------------- report
def render(rows: list[dict], command: str, device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    meter = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events"
    lines = [
        BEGIN,
        "## Chunked log-probs: peak memory (`benchmarks/logprob_memory.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores visible, {gpu}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s). Meter: {meter}. Default chunk: "
        f"{CHUNK_ELEMENTS:,} float32 elements ({CHUNK_ELEMENTS * 4 // MIB} MiB).",
        "",
        "One forward + backward pass from leaf logits `[B, L, V]`; MiB = peak of tensor allocations during "
        "the pass above the allocations before it (the logits are not counted; their gradient, the size of "
        "the logits, is). `full f32`: `log_softmax(logits.float())` then gather (the ELBO term: the generalized "
        "KL from that full log-softmax); `chunked`: dflow's chunked op with the default chunk. x = full f32 MiB "
        "/ chunked MiB. For bf16 logits, `full bf16` is the log-softmax in bf16 (log-probs rounded to bf16).",
        "",
        "| term | V | B x L | logits | chunk (tokens) | logits MiB | full f32 MiB | chunked MiB | x | "
        "full bf16 MiB | x vs bf16 | time chunked / full f32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["full f32"] / r["chunked"]
        bf16 = f"{r['full bf16']:.0f} | {r['full bf16'] / r['chunked']:.1f}" if "full bf16" in r else "- | -"
        lines.append(
            f"| {r['term']} | {r['V']:,} | {r['B']} x {r['L']} | {r['dtype']} | {r['chunk_tokens']} "
            f"| {r['logits_mib']:.0f} | {r['full f32']:.0f} | {r['chunked']:.0f} | {ratio:.1f} | {bf16} "
            f"| {r['chunked s'] / max(r['full f32 s'], 1e-9):.2f} |"
        )
    lines.append("")
    largest = max(r["V"] for r in rows)
    for term in ("log-prob", "ELBO term"):
        for dtype in ("bfloat16", "float32"):
            sel = [r for r in rows if r["term"] == term and r["dtype"] == dtype and r["V"] == largest]
            if not sel:
                continue
            ratios = ", ".join(f"{r['full f32'] / r['chunked']:.1f}x at {r['B']} x {r['L']}" for r in sel)
            full = ", ".join(f"{r['full f32'] - r['grad_mib']:.0f}" for r in sel)
            chunked = ", ".join(f"{max(r['chunked'] - r['grad_mib'], 0):.0f}" for r in sel)
            lines.append(
                f"- {term}, {dtype} logits, V = {largest:,}: chunked peak smaller by {ratios} (target >= 4x); "
                f"beyond the logits' gradient, which every variant writes: full f32 {full} MiB, chunked {chunked} MiB"
            )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; prints only")
    ap.add_argument("--write", action="store_true", help="with --quick: write the block anyway")
    ap.add_argument("--batch", type=int, default=4, help="B (default 4)")
    ap.add_argument("--chunk-elements", type=int, default=None, help="default chunk size in float32 elements")
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; memory does not depend on it
    if opts.chunk_elements is not None:
        set_chunk_elements(opts.chunk_elements)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_meter(device)
    vocabs, lengths = ((1024, 8192), (64, 256)) if opts.quick else ((8192, 65536), (256, 1024))
    rows = []
    for term in ("log-prob", "ELBO term"):
        for dtype in (torch.bfloat16, torch.float32):
            for V in vocabs:
                for L in lengths:
                    print(f"{term} {dtype} V={V} L={L}", file=sys.stderr, flush=True)
                    rows.append(measure(term, opts.batch, L, V, dtype, device))
    command = "python benchmarks/logprob_memory.py" + (" --quick" if opts.quick else "")
    if opts.chunk_elements is not None:
        command += f" --chunk-elements {opts.chunk_elements}"
    text = render(rows, command, device)
    print(text)
    if not opts.quick or opts.write:
        write_block(DOC, BEGIN, END, text)
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
