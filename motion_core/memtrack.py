"""Peak memory of a piece of work on the CPU, from torch's own allocation records.

    peak, out = cpu_peak_bytes(lambda: step())

Method: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of torch's CPU allocator,
each with the allocator's running total of live bytes. The peak is the largest running total seen during ``fn``
minus the total when ``fn`` started (weights and anything else alive before are not counted). Unlike sampling
the process's RSS it sees short-lived peaks, and kernels' internal buffers too, since they come from the same
allocator. Not counted: memory outside torch's allocator (oneDNN's own caches, Python objects). GPU kernels
choose other algorithms and workspaces, so a CPU peak predicts a GPU one only approximately (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

R = TypeVar("R")


def cpu_peak_bytes(fn: Callable[[], R]) -> tuple[int, R]:
    """Run ``fn`` once; return (peak live bytes of torch's CPU allocator above the start, ``fn``'s result)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    allocs: list[tuple[int, int, int]] = []  # (time, bytes of this event, live total after it)
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            allocs.append((e.start_time_ns, e.extra_fields.alloc_size, e.extra_fields.total_allocated))
    if not allocs:
        return 0, out
    allocs.sort()
    start = allocs[0][2] - allocs[0][1]  # live total just before the first event
    return max(0, max(a[2] for a in allocs) - start), out
