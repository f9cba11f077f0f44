"""Peak activation memory of one training step of a ``DFlowTransformer``, with and without gradient
checkpointing, measured in the same run.

One step = forward, cross-entropy, backward, on a time-conditioned transformer with a prompt prefix.
Both variants run the same model, inputs and seed; gradients are compared (they must be equal).

How memory is measured (CPU): ``torch.profiler`` with ``profile_memory=True`` records every
allocation and free of the CPU allocator made while it runs, each with the running total of bytes
live from allocations made under the profiler. The peak of that total over the step is the largest
amount of tensor storage the step held on top of what existed before it (parameters, and gradient
buffers allocated by a warm-up step). It counts tensor storage bytes, not the process's resident
memory (which the allocator's caching and the OS's page handling blur). The events are read from
the profiler's event tree (``prof.profiler.kineto_results.experimental_event_tree()``, the data that
``torch.profiler``'s own memory timeline is built from). "Kept after forward" is the total live just
before ``backward`` starts: the activations saved for backward plus the logits and loss.

Cross-check, without the profiler: for the variant without checkpointing, the bytes of the distinct
storages that autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``; parameters
and inputs left out) must be the profiler's "kept after forward" less the logits and loss. (With
checkpointing, the checkpoint's own hooks hide the saves from an outer hook, so only the plain
variant can be checked this way.)

Usage::

    python benchmarks/checkpoint_memory.py           # default sizes; writes its block into docs/benchmarks.md
    python benchmarks/checkpoint_memory.py --quick   # small sizes; prints only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dflow.models import DFlowConfig, DFlowTransformer, disable_gradient_checkpointing, enable_gradient_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- checkpoint_memory:begin -->", "<!-- checkpoint_memory:end -->"
MIB = 2**20


@dataclass
class StepMemory:
    """Tensor bytes of one forward + backward, above what was allocated before it."""

    peak: int  # largest total live during forward and backward
    after_forward: int  # live just before backward: saved activations + logits + loss
    cpu_s: float  # median CPU seconds of the step (outside the profiler)


BACKWARD = "checkpoint_memory::backward"  # a record_function range around loss.backward()


def _allocations(prof: profile) -> tuple[list[tuple[int, int, int]], int]:
    """``(time ns, bytes allocated (+) or freed (-), bytes live)`` of every CPU allocator event, in time
    order, and the time the backward pass starts (same clock: both come from the profiler's event tree).
    Bytes live are the running sum of the sizes from the start of the profile, not the profiler's own
    ``total_allocated``: that counter keeps an offset from tensors that an earlier profiler session saw
    allocated and that were freed after it stopped, so a benchmark run after another in one process
    read too much."""
    from torch._C._profiler import _EventType

    found: list[tuple[int, int, int]] = []
    backward_start = None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            fields = node.extra_fields
            found.append((node.start_time_ns, fields.alloc_size))
        elif node.name == BACKWARD:
            backward_start = node.start_time_ns
        stack.extend(node.children)
    if backward_start is None:
        raise RuntimeError(f"the profile has no {BACKWARD!r} range")
    events, live = [], 0
    for when, size in sorted(found):
        live += size
        events.append((when, size, live))
    return events, backward_start


def build(args: argparse.Namespace) -> tuple[DFlowTransformer, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    config = DFlowConfig(
        vocab_size=args.vocab,
        mask_id=args.vocab,
        seq_len=args.seq_len,
        prompt_len=args.prompt_len,
        prompt_vocab_size=64,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        time_conditioning=True,
    )
    model = DFlowTransformer(config).train()
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randint(0, args.vocab + 1, (args.batch, args.seq_len), generator=gen)  # [B, L]
    t = torch.rand(args.batch, generator=gen)  # [B]
    cond = torch.randint(1, 64, (args.batch, args.prompt_len), generator=gen)  # [B, Lc]
    target = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)  # [B, L]
    return model, (x_t, t, cond, target)


def measure(model: DFlowTransformer, inputs: tuple[torch.Tensor, ...], repeats: int) -> StepMemory:
    x_t, t, cond, target = inputs

    def step() -> None:
        torch.manual_seed(2)
        logits = model(x_t, t, cond)  # [B, L, V]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        with torch.profiler.record_function(BACKWARD):
            loss.backward()

    model.zero_grad(set_to_none=True)
    step()  # warm-up: allocates the gradient buffers, so the profiled step counts activations
    times = []
    for _ in range(repeats):
        tic = time.process_time()
        step()
        times.append(time.process_time() - tic)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, backward_start = _allocations(prof)
    before_backward = [total for when, _, total in events if when < backward_start]
    return StepMemory(
        peak=max(total for _, _, total in events),
        after_forward=before_backward[-1] if before_backward else 0,
        cpu_s=statistics.median(times),
    )


def saved_for_backward(model: DFlowTransformer, inputs: tuple[torch.Tensor, ...]) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass (no profiler)."""
    x_t, t, cond, target = inputs
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(x_t, t, cond)  # [B, L, V]
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    owned |= {x.untyped_storage().data_ptr() for x in inputs}
    return sum(n for ptr, n in storages.items() if ptr not in owned)


def gradients(model: DFlowTransformer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run(args: argparse.Namespace) -> dict:
    model, inputs = build(args)
    disable_gradient_checkpointing(model)
    plain = measure(model, inputs, args.repeats)
    saved = saved_for_backward(model, inputs)
    grads_plain = gradients(model)
    enable_gradient_checkpointing(model)
    checkpointed = measure(model, inputs, args.repeats)
    grads_ckpt = gradients(model)
    # each variant accumulated the same identical steps (1 warm-up + repeats + 1 profiled) from zero
    diff = max((grads_plain[n] - grads_ckpt[n]).abs().max().item() for n in grads_plain)
    tokens = args.prompt_len + args.seq_len
    return {
        "plain": plain,
        "checkpointed": checkpointed,
        "max_grad_diff": diff,
        "saved_for_backward": saved,
        "hidden_state_mib": args.batch * tokens * args.hidden * 4 / MIB,  # one [B, Lc + L, D] float32 tensor
        "sizes": (
            f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, batch {args.batch} x "
            f"({args.prompt_len} prompt + {args.seq_len} state tokens), V={args.vocab}, time-conditioned, "
            "float32, train mode"
        ),
    }


def render(result: dict, command: str) -> str:
    plain, ckpt = result["plain"], result["checkpointed"]
    cpu = platform.processor() or platform.machine()
    rows = [
        ("peak during forward + backward", plain.peak, ckpt.peak),
        ("kept after forward (saved for backward)", plain.after_forward, ckpt.after_forward),
    ]
    lines = [
        BEGIN,
        "## Gradient checkpointing: activation memory (`benchmarks/checkpoint_memory.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores visible, no GPU; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s).",
        "",
        f"One training step (forward, cross-entropy, backward) of a `DFlowTransformer`: {result['sizes']}. "
        "Tensor bytes above the parameters and gradient buffers, from `torch.profiler` "
        "(`profile_memory=True`): the CPU allocator's running total of live bytes at every allocation "
        f"and free. One `[B, Lc + L, D]` hidden state is {result['hidden_state_mib']:.1f} MiB.",
        "",
        "| tensor memory (MiB) | no checkpointing | checkpointing | ratio |",
        "|---|---|---|---|",
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {a / MIB:.1f} | {b / MIB:.1f} | {b / a:.2f} |")
    lines += [
        "",
        f"CPU time of the step (median, outside the profiler): {plain.cpu_s:.2f} s without, "
        f"{ckpt.cpu_s:.2f} s with checkpointing ({ckpt.cpu_s / plain.cpu_s:.2f}x). Largest gradient "
        f"difference between the two: {result['max_grad_diff']:.1e}.",
        "",
        "Cross-check without the profiler (no checkpointing): the storages autograd saves for backward "
        f"(`saved_tensors_hooks`) hold {result['saved_for_backward'] / MIB:.1f} MiB; the profiler's "
        f"{plain.after_forward / MIB:.1f} MiB also holds the logits and the loss.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256, help="state tokens L (default 256)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant (default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one timed step; prints only")
    ap.add_argument("--write", action="store_true", help="with --quick: write the block anyway")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.seq_len, args.batch, args.repeats = 2, 64, 64, 2, 1
    # one intra-op thread, as the other benchmarks: the machine is shared
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = run(args)
    text = render(result, "python benchmarks/checkpoint_memory.py" + (" --quick" if args.quick else ""))
    print(text)
    if not args.quick or args.write:
        write_block(DOC, BEGIN, END, text)
    return result


if __name__ == "__main__":
    main()
