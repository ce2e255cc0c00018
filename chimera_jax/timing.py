"""Milliseconds per call, measured one way for every benchmark and throughput figure.

A call is timed only after untimed warm-up calls (JIT compilation, allocator and cache warm-up), and only
once its work is done: JAX dispatches asynchronously, so the callable must block
(``jax.block_until_ready``, ``torch.cuda.synchronize``) before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def time_ms(fn: Callable[[], object], repeats: int, *, warmup: int = 1, calls: int = 1,
            clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """``repeats`` timings of ``fn`` in ms per call, each over ``calls`` consecutive calls, after ``warmup``
    untimed ones; ``clock`` is wall time unless given (``time.process_time``: CPU time of every thread)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - start) * 1000 / calls)
    return times
