"""Helpers the benchmark scripts share: the tensor-memory meter and the writer of their docs/benchmarks.md block.

Each script puts its own folder on ``sys.path`` and imports these (the scripts are run as files, and the
tests load them with ``importlib``, so ``benchmarks`` is not a package)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def cpu_peak(fn: Callable[[], None]) -> int:
    """Peak bytes held by CPU tensors allocated while ``fn`` runs (torch.profiler's allocator events)."""
    from torch._C._profiler import _EventType  # the event tree's tags: private, but stable since torch 2.0
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))  # > 0 allocated, < 0 freed
    held = peak = 0
    for _, size in sorted(events):
        held += size
        peak = max(peak, held)
    return peak


def write_block(doc_path: Path, begin: str, end: str, text: str) -> None:
    """Replace the block between ``begin`` and ``end`` in ``doc_path`` with ``text`` (which carries both
    markers), or append it when the document has no such block yet."""
    doc = doc_path.read_text()
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    doc_path.write_text(doc)
