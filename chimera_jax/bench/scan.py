"""``chimera-bench scan``: the selective scan alone, forward + backward, every way it can run, in one process.

    chimera-bench scan [--batch 8] [--seq-len 128] [--d-inner 512] [--state 16] [--head-dim 64]
        [--chunks 4 8 16 32 64] [--repeats 5] [--json FILE]
    python scripts/bench.py scan   # ti_ssm's shape: batch 8, seq 128, d_model 256 expanded 2x, state 16

The defaults are the ti_ssm preset's scan: ``[batch, seq, d_inner, state]``. Each row times the gradient of
a loss of the scan's outputs with respect to every input (u, Δ, A, B, C), jitted: ``associative`` (the
default before the chunked scan), ``sequential`` (the reference), ``chunked`` at each of ``--chunks``, and
kind ``ssd`` (one Δ and A per head of ``--head-dim`` channels, models/ssd.py) at each chunk size. The
``x associative`` column is the associative scan's time over the row's; ``max abs diff`` the distance of
the row's output from the sequential scan's of the same kind.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.config import ConfigError
from chimera_jax.flags import parse
from chimera_jax.markdown import table
from chimera_jax.timing import time_ms

log = logging.getLogger(__name__)


@dataclass
class ScanBenchArgs:
    batch: int = 8
    seq_len: int = 128
    d_inner: int = 512  # expand * d_model
    state: int = 16
    head_dim: int = 64  # channels per head, for kind ssd
    chunks: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    repeats: int = 5  # timings per row (the median is reported)
    json: str | None = None  # also write every figure to this JSON file


def main(argv: Sequence[str]) -> dict:
    args = parse(ScanBenchArgs, argv)
    sizes = (args.batch, args.seq_len, args.d_inner, args.state, args.head_dim, args.repeats, *args.chunks)
    if min(sizes) < 1 or args.d_inner % args.head_dim:
        raise ConfigError("every size must be >= 1, and --head-dim must divide --d-inner")
    import jax
    import jax.numpy as jnp

    from chimera_jax.models.ssd import diagonal, ssd_scan
    from chimera_jax.models.ssm import selective_scan

    k = jax.random.split(jax.random.PRNGKey(0), 7)
    B, T, Di, N, H = args.batch, args.seq_len, args.d_inner, args.state, args.d_inner // args.head_dim
    u = jax.random.normal(k[0], (B, T, Di))
    Bm, C = jax.random.normal(k[1], (B, T, N)), jax.random.normal(k[2], (B, T, N))
    h0 = jnp.zeros((B, Di, N))
    # Δ in the init's range [1e-3, 1e-1]; A as each kind's init (S4D-real, or uniform in [1, 16] per head)
    inputs = {"mamba": (jnp.exp(jax.random.uniform(k[3], (B, T, Di), minval=-6.9, maxval=-2.3)),
                        -jnp.broadcast_to(jnp.arange(1.0, N + 1), (Di, N))),
              "ssd": (jnp.exp(jax.random.uniform(k[4], (B, T, H), minval=-6.9, maxval=-2.3)),
                      -jax.random.uniform(k[5], (H,), minval=1.0, maxval=16.0))}

    def run(kind: str, method: str, chunk: int):
        if kind == "mamba":
            return lambda u, dt, A, B, C: selective_scan(u, dt, A, B, C, method, h0, chunk)
        if method == "chunked":
            return lambda u, dt, A, B, C: ssd_scan(u, dt, A, B, C, h0, chunk)
        return lambda u, dt, A, B, C: selective_scan(u, *diagonal(dt, A, Di, N), B, C, method, h0)

    rows = [("mamba", "sequential", 0), ("mamba", "associative", 0), *(("mamba", "chunked", c) for c in args.chunks),
            ("ssd", "sequential", 0), *(("ssd", "chunked", c) for c in args.chunks)]
    result: dict = {"shape": {"batch": B, "seq_len": T, "d_inner": Di, "state": N, "heads": H},
                    "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "jax": jax.__version__,
                    "rows": []}
    reference = {}
    for kind, method, chunk in rows:
        log.info("%s %s%s", kind, method, f" {chunk}" if chunk else "")
        f = run(kind, method, chunk)
        dt, A = inputs[kind]
        loss = lambda *a, f=f: jnp.sum(jnp.sin(f(*a)[0]))  # noqa: E731 - every gradient path is exercised
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
        y = jax.jit(f)(u, dt, A, Bm, C)[0]
        reference.setdefault(kind, y)  # each kind's first row is its sequential scan
        ms = statistics.median(time_ms(lambda grad=grad, dt=dt, A=A: jax.block_until_ready(grad(u, dt, A, Bm, C)),
                                       args.repeats))
        result["rows"].append({"kind": kind, "method": method, "chunk": chunk or None, "fwd_bwd_ms": ms,
                               "max_abs_diff": float(jnp.max(jnp.abs(y - reference[kind])))})
    base = result["rows"][1]["fwd_bwd_ms"]  # mamba's associative scan
    figures = table(["kind", "scan", "chunk", "fwd + bwd ms", "x associative", "max abs diff"],
                    [[r["kind"], r["method"], r["chunk"] or "", r["fwd_bwd_ms"], base / r["fwd_bwd_ms"],
                      f"{r['max_abs_diff']:.1e}"] for r in result["rows"]])
    s = result["shape"]
    print(f"# Selective scan, forward + backward\n\ndevice: {result['device']}, {result['cpus']} CPUs, jax "
          f"{result['jax']}; shape: batch {B}, seq {T}, d_inner {Di}, state {N} (ssd: {s['heads']} heads); median of "
          f"{args.repeats}; ref: the sequential scan of the same kind\n\n{figures}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result
