"""Tokens per second and peak memory, measured the same way for a JAX and a torch model.

Throughput: forward passes (logits only) over one fixed ``[batch, seq_len]`` batch, after one untimed
warm-up pass (JIT compilation, CUDA context, allocator caches), ``repeats`` times; tokens/s counts every
input position. Memory: the accelerator's peak allocation when there is one, else the process's peak
resident set (which includes the framework's own runtime, so run one model per process to compare).
"""

from __future__ import annotations

import resource
import statistics
import sys
from collections.abc import Callable

import numpy as np

from chimera_jax.timing import time_ms


def tokens_per_second(run: Callable[[], object], n_tokens: int, repeats: int = 3) -> float:
    """``n_tokens`` over the mean time of ``run`` (which blocks until done), after one untimed call."""
    return n_tokens / (statistics.mean(time_ms(run, repeats)) / 1000)


def torch_forward(model, batch: np.ndarray) -> Callable[[], object]:
    """One synchronised forward pass of a torch model over ``batch``."""
    import torch

    device = next(model.parameters()).device
    inputs = torch.from_numpy(batch).long().to(device)

    def run():
        with torch.inference_mode():
            logits = model(input_ids=inputs).logits
        if device.type == "cuda":
            torch.cuda.synchronize()
        return logits

    return run


def jax_forward(model, batch: np.ndarray) -> Callable[[], object]:
    """One jitted, blocking forward pass of our Decoder over ``batch``."""
    import equinox as eqx
    import jax

    forward = eqx.filter_jit(lambda m, x: m(x, inference=True)[0])
    inputs = jax.numpy.asarray(batch)
    return lambda: jax.block_until_ready(forward(model, inputs))


def peak_memory(framework: str) -> tuple[float, str]:
    """``(MiB, what was measured)``; ``framework`` is ``"torch"`` or ``"jax"``."""
    if framework == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20, "CUDA peak allocated"
    else:
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20, f"{device.platform.upper()} peak in use"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return rss_kib / 1024, "peak process RSS"
