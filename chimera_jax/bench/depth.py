"""``chimera-bench depth``: a time-indexed train step at drawn depths, one masked program against depth buckets.

    chimera-bench depth [--presets ti_ssm ti_mlp] [--low 3] [--high 12] [--steps 40] [--repeats 3] [--quick]
        [--json FILE] [--model.KEY VALUE ...]   # dotted overrides for every row (default: d_model 128)
    python scripts/bench.py depth --quick   # tiny shapes: a smoke run

Training across depths (``model.time.train_depth``) needs a step at a depth ``L'`` that changes every step.
Two ways to compile that:
- ``masked`` (what the model does): one program over ``--high`` layers, layer ``i`` skipped by ``lax.cond``
  once ``i >= L'``; one compilation; timed here over ``--steps`` steps, each at the depth it drew (uniform in
  ``[--low, --high]``), step by step, grouped by depth (median).
- ``buckets``: one program per depth, each a fixed-depth step (what training at ``n_layers = L'`` runs);
  ``--high - --low + 1`` compilations; each timed as the train bench does (one untimed step, then the median
  of ``--repeats`` steps).
A fixed-depth step at ``L'`` is what a bucket costs, and the floor for the masked program at ``L'``: the table
gives both per depth and their ratio; ``per step`` averages over the uniform draw (the arithmetic mean of
the per-depth figures), and ``compile s`` sums each way's compilations.
Rows: the presets (``ti_ssm``, ``ti_mlp``) at the depth study's quick width (d_model 128, seq 128, batch 8)
unless overridden; ``--quick`` shrinks them to d_model 32, seq 32, batch 2.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.bench.train import compiled_step, header, jax_row, row_config
from chimera_jax.config import ConfigError, RunConfig, replace
from chimera_jax.flags import parse_known
from chimera_jax.markdown import table

log = logging.getLogger(__name__)

WIDTH = ("--model.d_model", "128")  # the depth study's quick profile
QUICK = ("--model.d_model", "32", "--data.seq_len", "32", "--train.batch_size", "2")


@dataclass
class DepthBenchArgs:
    presets: list[str] = field(default_factory=lambda: ["ti_ssm", "ti_mlp"])  # time-indexed presets (or NAME:k=v,..)
    low: int = 3  # the drawn depths: uniform in [low, high]
    high: int = 12
    steps: int = 40  # masked steps timed (each at the depth it drew)
    repeats: int = 3  # timings per bucket (the median is reported)
    quick: bool = False  # tiny shapes: a smoke run
    json: str | None = None  # also write every figure to this JSON file


def masked_row(cfg: RunConfig, steps: int) -> dict:
    """The masked program: compile time, and ms per step by the depth each step drew."""
    import jax

    compiled, state, batch, compile_s = compiled_step(cfg)
    state, _ = jax.block_until_ready(compiled(batch, state))  # untimed, as every bucket's first step
    by_depth: dict[int, list[float]] = {}
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled(batch, state))
        by_depth.setdefault(int(metrics["aux"]["depth"]), []).append((time.perf_counter() - start) * 1000)
    return {"compile_s": compile_s, "step_ms": {d: statistics.median(ms) for d, ms in sorted(by_depth.items())},
            "draws": {d: len(ms) for d, ms in sorted(by_depth.items())}}


def preset_rows(spec: str, args: DepthBenchArgs, overrides: Sequence[str]) -> dict:
    shape = [*WIDTH, *(QUICK if args.quick else ()), *overrides]
    base = row_config(spec, False, shape)
    if not base.model.time.enabled:
        raise ConfigError(f"presets: {spec!r} is not time-indexed (model.time.enabled=false)")
    sampled = replace(base, model=replace(base.model, time=replace(base.model.time, train_depth="uniform",
                                                                   depth_min=args.low, depth_max=args.high)))
    log.info("%s: masked program over %d layers", spec, args.high)
    masked = masked_row(sampled, args.steps)
    buckets = {}
    for depth in range(args.low, args.high + 1):
        log.info("%s: bucket %d", spec, depth)
        row = jax_row(replace(base, model=replace(base.model, n_layers=depth)), args.repeats, 1)
        buckets[depth] = {"compile_s": row["compile_s"], "step_ms": row["step_ms"]}
    return {"shape": {"d_model": base.model.d_model, "seq_len": base.data.seq_len,
                      "batch": base.train.batch_size, "scan_unroll": base.model.scan_unroll},
            "masked": masked, "buckets": buckets}


def main(argv: Sequence[str]) -> dict:
    args, overrides = parse_known(DepthBenchArgs, argv)
    if not 1 <= args.low <= args.high or min(args.steps, args.repeats) < 1:
        raise ConfigError(f"need 1 <= --low ({args.low}) <= --high ({args.high}), and --steps, --repeats >= 1")
    result = {"header": header(None), "low": args.low, "high": args.high, "steps": args.steps,
              "rows": {spec: preset_rows(spec, args, overrides) for spec in args.presets}}
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def report(result: dict) -> str:
    h = result["header"]
    lines = [f"# Training across depths: one masked program against depth buckets (uniform {result['low']}-"
             f"{result['high']})", "",
             f"device: {h['device']}, {h['cpus']} CPUs, load {h['load_average']:.2f}, jax {h['jax']}; masked: "
             f"{result['steps']} steps, median per drawn depth; buckets: fixed-depth steps (median)", ""]
    summary = []
    for spec, row in result["rows"].items():
        masked, buckets = row["masked"], row["buckets"]
        drawn = [d for d in buckets if d in masked["step_ms"]]
        lines += [f"## {spec} (d_model {row['shape']['d_model']}, seq {row['shape']['seq_len']}, batch "
                  f"{row['shape']['batch']}, scan_unroll {row['shape']['scan_unroll']})", "",
                  table(["depth", "draws", "masked ms", "bucket ms", "masked / bucket", "bucket compile s"],
                        [[d, masked["draws"].get(d, 0), masked["step_ms"].get(d), b["step_ms"],
                          masked["step_ms"][d] / b["step_ms"] if d in masked["step_ms"] else None, b["compile_s"]]
                         for d, b in buckets.items()]), ""]
        mean_masked = statistics.mean(masked["step_ms"][d] for d in drawn) if drawn else None
        mean_bucket = statistics.mean(buckets[d]["step_ms"] for d in drawn) if drawn else None
        summary.append([spec, mean_masked, mean_bucket, mean_masked / mean_bucket if drawn else None,
                        masked["compile_s"], sum(b["compile_s"] for b in buckets.values())])
    lines += ["## Per step over the drawn depths, and compilation", "",
              table(["preset", "masked ms/step", "buckets ms/step", "masked / buckets", "masked compile s",
                     "buckets compile s (all)"], summary)]
    return "\n".join(lines)
