"""``chimera-bench moe``: the MoE dispatches and an MoE train step against dense, in one process.

    chimera-bench moe [--quick] [--repeats 7] [--blocks 32 64 ...] [--skip-train] [--skip-layers] [--cpu-time]
        [--trace DIR] [--train-layers 2] [--train-vocab 256] [--train-seq 512] [--train-batch 8] [--json FILE]
    python scripts/bench.py moe                 # all three sections
    python scripts/bench.py moe --skip-train    # sections 1 and 2
    python scripts/bench.py moe --skip-layers --train-seq 128   # section 3 at another shape
    python scripts/bench.py moe --cpu-time      # process CPU time instead of wall time (busy machines)
    python scripts/bench.py moe --trace /tmp/moe_trace   # where the dropless layer's time goes
    python scripts/bench.py moe --quick --repeats 1 --train-seq 16 --train-batch 2   # tiny widths: a smoke run

1. One MoE FFN layer, forward + backward (gradients of every parameter and of the input), for each
   dispatch, at dwr_moe's layer shape (E=16, k=2, d_model 512, d_ff 2048) on 8x128 tokens and a small one.
2. The grouped FFN inside ``dropless`` on the same sorted rows: ``jax.lax.ragged_dot``, the CPU
   default (fair-share buffers + block scan for the rest) and the block scan alone at several block sizes.
3. A full train step of the dwr_moe preset (depth, vocabulary, sequence and batch scaled by flags)
   against the dense model with the same active FFN parameters (d_ff = k * expert d_ff): tokens/s,
   with the layer scan (model.scan_unroll 1) and unrolled (scan_unroll = layers); with one layer the two
   are the same program, timed once.

``--quick`` shrinks the widths alike: sections 1 and 2 on one tiny shape (E=4, k=2, d_model 16, d_ff 32,
2x8 tokens), section 3 at d_model 32, 2 heads, 4 experts of d_ff 32; the ``--train-*`` flags still apply.

Each figure is the median of ``--repeats`` calls after compile and one warm-up. The load average is
printed: other jobs on the machine slow everything, ``--cpu-time`` less so.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from chimera_jax.config import ConfigError, ModelConfig, MoEConfig, RunConfig, load_config, preset_path, resolve_config
from chimera_jax.flags import parse
from chimera_jax.models.builder import make_ffn
from chimera_jax.models.grouped import grouped_blocks, grouped_fair_share, grouped_ragged
from chimera_jax.models.moe import MoE
from chimera_jax.timing import time_ms
from chimera_jax.train.optimizer import lr_schedule, make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import make_train_step

SHAPES = {
    "dwr_moe E16 k2 512/2048 8x128": dict(experts=16, top_k=2, d_model=512, d_ff=2048, batch=8, seq=128),
    "small E8 k2 128/512 16x128": dict(experts=8, top_k=2, d_model=128, d_ff=512, batch=16, seq=128),
}
QUICK_SHAPES = {"tiny E4 k2 16/32 2x8": dict(experts=4, top_k=2, d_model=16, d_ff=32, batch=2, seq=8)}


@dataclass
class MoEBenchArgs:
    quick: bool = False  # tiny widths: a smoke run
    repeats: int = 7  # timed calls per figure (the median is reported)
    blocks: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # CPU block sizes to try
    skip_train: bool = False  # sections 1 and 2 only
    skip_layers: bool = False  # section 3 only
    cpu_time: bool = False  # process CPU time (all threads) instead of wall time
    trace: str | None = None  # only trace the first shape's dropless layer into this folder, print its top ops
    train_layers: int = 2  # dwr_moe has 6
    train_vocab: int = 256  # at least the byte tokenizer's 256; dwr_moe has 50304
    train_seq: int = 512  # dwr_moe's context
    train_batch: int = 8  # sequences per step
    json: str | None = None  # also write every figure to this JSON file


def jitted_ms(fn: Callable, *args, repeats: int, clock: Callable[[], float]) -> float:
    """The median ms of ``fn(*args)``, a jitted call, after two untimed calls: its compile and a warm-up."""
    return statistics.median(time_ms(lambda: jax.block_until_ready(fn(*args)), repeats, warmup=2, clock=clock))


def make_layer(shape: dict, dispatch: str) -> MoE:
    moe = MoEConfig(enabled=True, num_experts=shape["experts"], top_k=shape["top_k"], d_ff=shape["d_ff"],
                    dispatch=dispatch, bias=True)
    return make_ffn(ModelConfig(d_model=shape["d_model"], n_layers=6, moe=moe), jax.random.PRNGKey(0), moe=True)


def time_layer(shape: dict, **timing) -> dict[str, float]:
    x = jax.random.normal(jax.random.PRNGKey(1), (shape["batch"], shape["seq"], shape["d_model"]))

    def loss(layer, h):
        y, aux = layer(h, inference=True)
        return jnp.mean(y * y) + aux["aux_loss"]

    grad = eqx.filter_jit(jax.grad(loss, argnums=(0, 1)))
    out = {d: jitted_ms(grad, make_layer(shape, d), x, **timing) for d in ("dense", "capacity", "dropless")}
    # The FLOP floor: one dense FFN of width k * d_ff over the same tokens, no routing.
    cfg = ModelConfig(d_model=shape["d_model"], d_ff=shape["top_k"] * shape["d_ff"], bias=True)
    ffn = make_ffn(cfg, jax.random.PRNGKey(0), moe=False)
    out["ffn"] = jitted_ms(eqx.filter_jit(jax.grad(lambda f, h: jnp.mean(f(h)[0] ** 2), argnums=(0, 1))), ffn, x,
                           **timing)
    return out


def time_grouped(shape: dict, blocks: list[int], **timing) -> dict[str, float]:
    """The grouped FFN alone on the expert-sorted rows a fresh router produces."""
    layer = make_layer(shape, "dropless")
    x = jax.random.normal(jax.random.PRNGKey(1), (shape["batch"] * shape["seq"], shape["d_model"]))
    flat = layer.router(x, key=None, inference=True).experts.reshape(-1)
    rows, sizes = x[jnp.argsort(flat, stable=True) // shape["top_k"]], jnp.bincount(flat, length=shape["experts"])
    variants = {"ragged_dot": grouped_ragged, "fair share (CPU default)": grouped_fair_share} | {
        f"blocks {b}": (lambda e, r, g, b=b: grouped_blocks(e, r, g, block=b)) for b in blocks}
    out = {}
    for name, grouped in variants.items():
        grad = eqx.filter_jit(eqx.filter_grad(lambda e, r, grouped=grouped: jnp.mean(grouped(e, r, sizes) ** 2)))
        out[name] = jitted_ms(grad, layer.experts, rows, **timing)
    return out


def profile_layer(shape: dict, dispatch: str, directory: str, top: int = 30) -> None:
    """Trace three calls of one layer's forward + backward and print the XLA ops that took longest."""
    x = jax.random.normal(jax.random.PRNGKey(1), (shape["batch"], shape["seq"], shape["d_model"]))
    grad = eqx.filter_jit(jax.grad(lambda layer, h: jnp.mean(layer(h, inference=True)[0] ** 2), argnums=(0, 1)))
    layer = make_layer(shape, dispatch)
    for _ in range(2):  # compile and warm up outside the trace
        jax.block_until_ready(grad(layer, x))
    jax.profiler.start_trace(directory)
    for _ in range(3):
        jax.block_until_ready(grad(layer, x))
    jax.profiler.stop_trace()
    trace = max(Path(directory).rglob("*.trace.json.gz"), key=lambda f: f.stat().st_mtime)
    total, calls = collections.Counter(), collections.Counter()
    for event in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]:
        if event.get("ph") == "X" and not event["name"].startswith(("$", "ThunkExecutor", "Pjit")):
            total[event["name"]] += event["dur"] / 3000  # us over 3 calls -> ms per call
            calls[event["name"]] += 1
    print(f"\nprofile: {dispatch} layer, fwd + bwd, ms per call (nested ops count in their parents too); "
          f"trace in {trace}")
    for name, ms in total.most_common(top):
        print(f"  {ms:8.2f}  x{calls[name] // 3:<4d} {name}")


def time_train_step(cfg: RunConfig, *, repeats: int, clock: Callable[[], float]) -> float:
    """Milliseconds per optimizer step on random tokens, state donated as in the training loop."""
    cfg = resolve_config(cfg, cfg.model.vocab_size)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    step = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), donate=True)
    state = init_state(cfg, optimizer)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (cfg.train.batch_size, cfg.data.seq_len + 1), 0,
                                cfg.model.vocab_size)

    def run() -> None:
        nonlocal state
        state, metrics = step(state, tokens[:, :-1], tokens[:, 1:])
        jax.block_until_ready(metrics["loss"])

    return statistics.median(time_ms(run, repeats, warmup=2, clock=clock))  # after the compile and a warm-up


def train_configs(args: MoEBenchArgs) -> tuple[RunConfig, RunConfig]:
    """dwr_moe scaled by the flags (f32), and the dense model with the same active FFN width. The steps read
    random token ids, so the data section names the byte tokenizer: the smallest vocabulary a config allows."""
    base = load_config(preset_path("dwr_moe"))
    model = dataclasses.replace(base.model, n_layers=args.train_layers, vocab_size=args.train_vocab,
                                max_seq_len=args.train_seq)
    if args.quick:
        model = dataclasses.replace(model, d_model=32, n_heads=2,
                                    moe=dataclasses.replace(model.moe, num_experts=4, d_ff=32))
    data = dataclasses.replace(base.data, seq_len=args.train_seq, tokenizer="byte")
    moe_cfg = dataclasses.replace(base, model=model, data=data,
                                  train=dataclasses.replace(base.train, batch_size=args.train_batch, precision="f32"))
    dense_model = dataclasses.replace(model, d_ff=model.moe.top_k * model.moe.d_ff,
                                      moe=dataclasses.replace(model.moe, enabled=False))
    return moe_cfg, dataclasses.replace(moe_cfg, model=dense_model)


def with_unroll(cfg: RunConfig, unroll: int) -> RunConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_unroll=unroll))


def main(argv: Sequence[str]) -> dict:
    args = parse(MoEBenchArgs, argv)
    if min(args.repeats, args.train_layers, args.train_vocab, args.train_seq, args.train_batch, *args.blocks) < 1:
        raise ConfigError("repeats, blocks and the train-* sizes must be >= 1")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    timing = dict(repeats=args.repeats, clock=time.process_time if args.cpu_time else time.perf_counter)
    unit = "CPU ms" if args.cpu_time else "ms"
    result: dict = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
                    "quick": args.quick, "repeats": args.repeats, "unit": unit,
                    "load_average_start": os.getloadavg()[0]}

    print(f"jax {result['jax']} on {result['platform']}, {result['cpus']} CPUs, "
          f"load average {result['load_average_start']:.2f} at start")
    if args.trace:
        profile_layer(next(iter(shapes.values())), "dropless", args.trace)
        return result
    if not args.skip_layers:
        print(f"\n1. one MoE layer, forward + backward, {unit} (median of {args.repeats})")
        print("   (ffn: a dense FFN of width k * d_ff on the same tokens, the same FLOPs as ideal routing)")
        print(f"{'shape':<31} {'dense':>8} {'capacity':>9} {'dropless':>9} {'ffn':>7}   dense/dropless   "
              "capacity/dropless   dropless/ffn")
        result["layer"] = {}
        for name, shape in shapes.items():
            result["layer"][name] = t = time_layer(shape, **timing)
            print(f"{name:<31} {t['dense']:8.1f} {t['capacity']:9.1f} {t['dropless']:9.1f} {t['ffn']:7.1f}   "
                  f"{t['dense'] / t['dropless']:14.2f}   {t['capacity'] / t['dropless']:17.2f}   "
                  f"{t['dropless'] / t['ffn']:12.2f}", flush=True)

        print(f"\n2. dropless grouped FFN alone (sorted rows), forward + backward, {unit}")
        result["grouped"] = {}
        for name, shape in shapes.items():
            result["grouped"][name] = t = time_grouped(shape, args.blocks, **timing)
            print(f"{name:<31} " + "  ".join(f"{k}: {v:.1f}" for k, v in t.items()), flush=True)

    if not args.skip_train:
        moe_cfg, dense_cfg = train_configs(args)
        m = moe_cfg.model
        tokens = args.train_batch * args.train_seq
        print(f"\n3. train step, dwr_moe with {args.train_layers} layer{'s' * (args.train_layers > 1)}, d_model "
              f"{m.d_model}, vocab {args.train_vocab}, batch {args.train_batch}x{args.train_seq}, f32 "
              f"({unit}, tokens/s)")
        # The layer scan slices each layer's weights out of the stacked arrays every step; unrolled
        # (model.scan_unroll = n_layers), each layer reads them in place. With one layer both are scan_unroll 1.
        ways = {"scan": 1, "unrolled": args.train_layers} if args.train_layers > 1 else {"scan = unrolled": 1}
        result["train"] = {}
        for label, unroll in ways.items():
            moe_ms = time_train_step(with_unroll(moe_cfg, unroll), **timing)
            dense_ms = time_train_step(with_unroll(dense_cfg, unroll), **timing)
            result["train"][label] = {"moe_ms": moe_ms, "dense_ms": dense_ms, "moe_over_dense": dense_ms / moe_ms}
            rows = [(f"moe E{m.moe.num_experts} k{m.moe.top_k} d_ff {m.moe.d_ff} ({m.moe.dispatch}, {label})", moe_ms),
                    (f"dense d_ff {dense_cfg.model.d_ff} ({label})", dense_ms)]
            for name, ms in rows:
                print(f"  {name:<40} {ms:9.1f} {1000 * tokens / ms:10.0f} tok/s")
            print(f"  moe/dense tokens/s ({label}): {dense_ms / moe_ms:.2f}", flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    print(f"\nload average {result['load_average_end']:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result
