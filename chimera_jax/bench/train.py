"""``chimera-bench train``: training speed of presets, with MFU and a torch reference, in one process.

    chimera-bench train [--quick] [--presets standard ti_ssm standard_bpe dense_d512] [--repeats 3] [--steps 1]
        [--json FILE] [--torch false] [--torch-compile false] [--torch-threads N] [--matmul-size 2048]
        [--model.KEY VALUE ...]   # dotted overrides, applied to every row
    python scripts/bench.py train --quick --json /tmp/train.json   # tiny shapes: a smoke run
    python scripts/bench.py train --presets dense_d512 --repeats 2 --torch-compile false

The default rows:
- ``standard`` and ``ti_ssm``: the presets as their YAML has them (d_model 256, 6 layers, seq 128, batch 8,
  byte tokenizer; ti_ssm's SSM of kind ssd: one Δ and A per head, its scan as matmuls);
  ``ti_ssm_mamba``: ti_ssm with the per-channel (Mamba-1) SSM and its chunked scan, and
  ``ti_ssm_mamba_associative`` with the associative scan (the preset before the chunked scan and ssd);
  ``x standard``: a row's step time over the ``standard`` row's, when it runs;
- ``standard_bpe``: ``standard`` with GPT-2's BPE vocabulary padded to 50,304 (nanoGPT's multiple of 64);
- ``dense_d512``: configs/dwr_moe.yaml without its experts: d_model 512, 6 layers, 8 heads, d_ff 2048,
  seq 512, batch 8, vocabulary 50,304, learned positions, biases, with GPT-2's tied embeddings and in f32
  (the preset trains in bf16).
Any other row is a preset of configs/ with its own overrides: ``NAME`` or ``NAME:model.d_model=128,...``.
``--quick`` shrinks every row alike (d_model 64, 2 layers, d_ff 256, seq 32, batch 2, vocabulary 512).

Each row builds the real train step (train/step.py's ``make_train_step`` with train/optimizer.py's AdamW
and clipping, ``donate=True`` as the training loop has it) on a model with random weights, fed one random
token batch of the row's shape (speed does not depend on the text). The step is jitted once more around
it, donating the state as the loop does, so it can be compiled ahead of time: ``compile s`` is that
lower + compile (tracing, lowering and XLA compilation), ``peak MiB`` the compiled step's own
``memory_analysis``: arguments + outputs - donated (aliased) buffers + temporaries. Step time: after one
untimed step, ``--repeats`` timings of ``--steps`` consecutive steps each (ms per step, median).
FLOPs per token: chimera_jax/bench/flops.py (matrix products only, forward + backward = 3x forward);
MFU = achieved FLOP/s / the peak, a jitted f32 ``--matmul-size`` square matmul timed in the same run
(median of 5).

Torch reference, for the rows GPT-2 can express (attention, GELU MLP, LayerNorm, biases, no experts):
transformers' ``GPT2LMHeadModel`` (SDPA attention, dropout 0) at the row's d_model, layers, heads, d_ff,
vocabulary and positions (n_positions = the row's max_seq_len), tied as the row is; torch.optim.AdamW with
the row's lr, betas, eps and weight decay (on the 2-D parameters), clip_grad_norm_ to the same norm, the
same batch and sequence; timed as ours, in eager mode and under ``torch.compile`` (the model; the
optimizer step stays eager), whose failure is reported as n/a with its reason. ``torch / JAX`` is the
torch step time over ours: above 1, JAX is faster.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.bench.flops import PEAK_REPEATS, matmul_peak, utilisation
from chimera_jax.config import ConfigError, ModelConfig, RunConfig, load_config, preset_path, presets, resolve_config
from chimera_jax.flags import parse_known
from chimera_jax.markdown import table
from chimera_jax.timing import time_ms
from chimera_jax.tokenizer import VOCAB_SIZES

log = logging.getLogger(__name__)

# label -> (preset, overrides): the default rows (the module docstring says what each is)
ROWS = {
    "standard": ("standard", ()),
    "ti_ssm": ("ti_ssm", ()),
    "ti_ssm_mamba": ("ti_ssm", ("model.ssm.kind=mamba",)),
    "ti_ssm_mamba_associative": ("ti_ssm", ("model.ssm.kind=mamba", "model.ssm.scan=associative")),
    "standard_bpe": ("standard", ("data.tokenizer=gpt2", "model.vocab_size=50304")),
    "dense_d512": ("dwr_moe", ("model.moe.enabled=false", "model.tie_embeddings=true", "train.precision=f32")),
}
QUICK = ("model.d_model=64", "model.n_layers=2", "model.d_ff=256", "data.seq_len=32", "model.max_seq_len=32",
         "train.batch_size=2", "data.tokenizer=byte", "model.vocab_size=512")


@dataclass
class TrainBenchArgs:
    quick: bool = False  # tiny shapes and few steps: a smoke run
    presets: list[str] = field(default_factory=lambda: list(ROWS))  # row labels, or NAME[:key=value,...]
    repeats: int | None = None  # timings per figure (the median is reported); None: 3, or 2 with --quick
    steps: int = 1  # consecutive steps per timing
    torch: bool = True  # time GPT2LMHeadModel for the rows GPT-2 can express
    torch_compile: bool = True  # also under torch.compile (slow to compile on a small CPU)
    torch_threads: int | None = None  # torch's intra-op threads; None: torch's default (one per core)
    matmul_size: int = 2048  # the square matmul whose f32 FLOP/s is the peak MFU divides by
    json: str | None = None  # also write every figure to this JSON file


# ---------------------------------------------------------------------------------------------------------
# Rows


def row_config(spec: str, quick: bool, overrides: Sequence[str]) -> RunConfig:
    """A row's resolved config: a label of ``ROWS`` or ``NAME[:key=value,...]``, then ``--quick``'s shapes,
    then the command line's overrides (``--model.remat block``: every row)."""
    preset, own = ROWS.get(spec) or (spec.partition(":")[0], tuple(filter(None, spec.partition(":")[2].split(","))))
    if preset not in presets():
        raise ConfigError(f"presets: {spec!r} is neither a row ({', '.join(ROWS)}) nor a preset of configs/ "
                          f"({', '.join(presets())}), as NAME or NAME:key=value,...")
    flags = []
    for item in (*own, *(QUICK if quick else ())):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"presets: {spec!r}: override {item!r} is not key=value")
        flags += [f"--{key}", value]
    cfg = load_config(preset_path(preset), [*flags, *overrides])
    return resolve_config(cfg, VOCAB_SIZES[cfg.data.tokenizer])


def gpt2_mismatch(m: ModelConfig) -> str | None:
    """Why GPT2LMHeadModel cannot be this model, or None when it can (positions aside: GPT-2's are learned)."""
    checks = [(m.mixer == "attention", "GPT-2 has no SSM mixer"), (not m.time.enabled, "GPT-2 shares no weights"),
              (not m.moe.enabled, "GPT-2 has no experts"), (m.ffn == "gelu", "GPT-2's MLP is GELU"),
              (m.norm == "layernorm" and m.bias, "GPT-2 has LayerNorm and biases"),
              ((m.n_kv_heads or m.n_heads) == m.n_heads, "GPT-2 has no grouped-query attention"),
              (m.positions in ("learned", "sinusoidal"), "GPT-2 has absolute positions"),
              (not m.attention_sinks, "GPT-2 has no attention sinks")]
    return next((reason for ok, reason in checks if not ok), None)


def random_batch(cfg: RunConfig, seed: int = 0):
    """``(inputs, targets)`` of the step's shape, int32, drawn from the tokenizer's vocabulary."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (cfg.train.batch_size * cfg.train.grad_accum, cfg.data.seq_len)
    high = VOCAB_SIZES[cfg.data.tokenizer]
    return rng.integers(0, high, shape, dtype=np.int32), rng.integers(0, high, shape, dtype=np.int32)


# ---------------------------------------------------------------------------------------------------------
# Timing: ms per step, one untimed step, then --repeats timings of --steps consecutive steps


def compiled_step(cfg: RunConfig):
    """``(compiled, state, batch, compile_s)``: the row's train step compiled ahead of time, its initial state and
    a random batch. Compiled through one more jit that donates the state as the step does (XLA inlines the inner
    one), so the compile is timed on its own and the executable reports its memory; ``compiled(batch, state)``
    returns ``(state, metrics)``."""
    import equinox as eqx
    import jax.numpy as jnp

    from chimera_jax.train.optimizer import lr_schedule, make_optimizer
    from chimera_jax.train.state import init_state
    from chimera_jax.train.step import make_train_step

    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    state = init_state(cfg, optimizer)
    step = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), donate=True)
    program = eqx.filter_jit(lambda batch, s: step(s, *batch), donate="all-except-first")
    batch = tuple(map(jnp.asarray, random_batch(cfg)))
    start = time.perf_counter()
    compiled = program.lower(batch, state).compile()
    return compiled, state, batch, time.perf_counter() - start


def jax_row(cfg: RunConfig, repeats: int, steps: int) -> dict:
    """Our train step on the row: parameters, compile time, step time and the compiled step's memory."""
    import jax

    from chimera_jax.models.params import param_report

    compiled, state, batch, compile_s = compiled_step(cfg)
    params = param_report(state.model)["total"]
    memory = compiled.compiled.memory_analysis()
    mem = {name: getattr(memory, f"{name}_size_in_bytes") / 2**20
           for name in ("argument", "output", "alias", "temp", "generated_code")}

    def run() -> None:
        nonlocal state
        state, metrics = compiled(batch, state)
        jax.block_until_ready((state, metrics))

    times = time_ms(run, repeats, calls=steps)
    return {"params": params, "compile_s": compile_s, "step_ms": statistics.median(times), "step_ms_all": times,
            "peak_mib": mem["argument"] + mem["output"] - mem["alias"] + mem["temp"], "memory_mib": mem}


def gpt2_model(m: ModelConfig):
    """GPT2LMHeadModel at the shape of ``m`` (dropout 0, SDPA attention), in training mode."""
    from chimera_jax.optional import require

    transformers = require("transformers")
    config = transformers.GPT2Config(
        vocab_size=m.vocab_size, n_positions=m.max_seq_len, n_embd=m.d_model, n_layer=m.n_layers, n_head=m.n_heads,
        n_inner=m.resolved_d_ff(), activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=m.norm_eps, tie_word_embeddings=m.tie_embeddings, bos_token_id=None, eos_token_id=None,
        attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(config).train()


def torch_row(cfg: RunConfig, repeats: int, steps: int, compile_too: bool) -> dict:
    """GPT2LMHeadModel's step time in eager mode and under torch.compile (or why it is n/a)."""
    from chimera_jax.optional import require

    torch = require("torch")
    F = torch.nn.functional
    model = gpt2_model(cfg.model)
    o = cfg.optim
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": o.weight_decay},
                                   {"params": vectors, "weight_decay": 0.0}], lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    inputs, targets = (torch.from_numpy(a).long() for a in random_batch(cfg))

    def step(forward: Callable) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            logits = forward(input_ids=inputs).logits
            F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
        return run

    out: dict = {"torch_params": sum(p.numel() for p in model.parameters())}
    log.info("  torch eager")
    times = time_ms(step(model), repeats, calls=steps)
    out["torch_eager_ms"], out["torch_eager_ms_all"] = statistics.median(times), times
    out["torch_compile_ms"] = out["torch_compile_error"] = None
    if compile_too:
        log.info("  torch.compile")
        run = step(torch.compile(model))
        try:
            start = time.perf_counter()
            run()  # compiles
            first = time.perf_counter() - start
            times = time_ms(run, repeats, calls=steps)
            out["torch_compile_ms"], out["torch_compile_ms_all"] = statistics.median(times), times
            out["torch_compile_s"] = first - out["torch_compile_ms"] / 1000
        except Exception as err:  # noqa: BLE001 - any failure of the compiler stack is reported, not raised
            out["torch_compile_error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    else:
        out["torch_compile_error"] = "skipped (--torch-compile false)"
    return out


def param_note(m: ModelConfig, ours: int, theirs: int) -> str:
    """Whether our parameter count is GPT2LMHeadModel's, and why not where it differs."""
    if ours == theirs:
        return f"{ours:,} parameters, as GPT2LMHeadModel"
    wpe = m.max_seq_len * m.d_model
    why = (f"GPT-2's learned positions ({m.max_seq_len} x {m.d_model}); ours are {m.positions}"
           if m.positions != "learned" and theirs - ours == wpe else "unexplained")
    return f"{ours:,} parameters, GPT2LMHeadModel {theirs:,}: {theirs - ours:+,} = {why}"


# ---------------------------------------------------------------------------------------------------------
# The train bench


def header(torch_threads: int | None) -> dict:
    """Device, CPUs, versions and load: what every timing depends on."""
    import equinox
    import jax
    import jaxlib

    out = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
           "load_average": os.getloadavg()[0], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "equinox": equinox.__version__}
    try:
        import torch
        import transformers

        out.update(torch=torch.__version__, transformers=transformers.__version__,
                   torch_threads=torch.get_num_threads())
    except ImportError:
        out.update(torch=None, transformers=None, torch_threads=torch_threads)
    return out


def shape(cfg: RunConfig) -> dict:
    m = cfg.model
    return {"d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads, "d_ff": m.resolved_d_ff(),
            "seq_len": cfg.data.seq_len, "batch": cfg.train.batch_size * cfg.train.grad_accum,
            "vocab": m.vocab_size, "mixer": m.mixer, "positions": m.positions, "tied": m.tie_embeddings,
            "precision": cfg.train.precision}


def main(argv: Sequence[str]) -> dict:
    args, overrides = parse_known(TrainBenchArgs, argv)
    repeats = args.repeats if args.repeats is not None else 2 if args.quick else 3
    if repeats < 1 or args.steps < 1 or args.matmul_size < 1 or (args.torch_threads or 1) < 1:
        raise ConfigError("repeats, steps, matmul-size and torch-threads must be >= 1")
    configs = {spec: row_config(spec, args.quick, overrides) for spec in args.presets}  # bad input fails here
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    result = {"header": header(args.torch_threads), "quick": args.quick, "repeats": repeats, "steps": args.steps,
              "matmul_size": args.matmul_size}
    log.info("peak: %dx%d f32 matmul", args.matmul_size, args.matmul_size)
    result["peak_flops"] = peak = matmul_peak(args.matmul_size)
    rows = []
    for spec, cfg in configs.items():
        log.info("%s: JAX train step", spec)
        row = {"preset": spec, "shape": shape(cfg), "overrides": list(overrides)}
        row.update(jax_row(cfg, repeats, args.steps))
        row["tokens_per_step"] = tokens = row["shape"]["batch"] * cfg.data.seq_len
        row["tokens_per_s"] = tokens / (row["step_ms"] / 1000)
        row.update(utilisation(cfg.model, cfg.data.seq_len, row["tokens_per_s"], peak))
        row["torch_skipped"] = "--torch false" if not args.torch else gpt2_mismatch(cfg.model)
        if row["torch_skipped"] is None:
            log.info("%s: GPT2LMHeadModel in torch", spec)
            row.update(torch_row(cfg, repeats, args.steps, args.torch_compile))
            row["param_note"] = param_note(cfg.model, row["params"], row["torch_params"])
            row["torch_eager_over_jax"] = row["torch_eager_ms"] / row["step_ms"]
            compiled = row["torch_compile_ms"]
            row["torch_compile_over_jax"] = None if compiled is None else compiled / row["step_ms"]
        rows.append(row)
    standard = next((r["step_ms"] for r in rows if r["preset"] == "standard"), None)
    for row in rows:
        row["over_standard"] = None if standard is None else row["step_ms"] / standard
    result["rows"] = rows
    result["load_average_end"] = os.getloadavg()[0]
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def report(result: dict) -> str:
    """Device and versions, the table, and what each figure is."""
    h = result["header"]
    na = "n/a"
    figures = table(
        ["preset", "params", "tokens/step", "compile s", "step ms", "x standard", "tokens/s", "peak MiB", "GFLOP/token",
         "GFLOP/s", "MFU %", "torch eager ms", "torch compile ms", "torch eager / JAX", "torch compile / JAX"],
        [[r["preset"], r["params"], r["tokens_per_step"], r["compile_s"], r["step_ms"],
          na if r["over_standard"] is None else r["over_standard"], r["tokens_per_s"],
          r["peak_mib"], r["flops_per_token"] / 1e9, r["flops_per_s"] / 1e9, 100 * r["mfu"],
          *(na if r.get(k) is None else r[k] for k in ("torch_eager_ms", "torch_compile_ms", "torch_eager_over_jax",
                                                      "torch_compile_over_jax"))]
         for r in result["rows"]])
    notes = []
    for r in result["rows"]:
        s = r["shape"]
        about = (f"{s['mixer']}, d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, "
                 f"d_ff {s['d_ff']}, seq {s['seq_len']}, batch {s['batch']}, vocab {s['vocab']}, "
                 f"positions {s['positions']}, {'tied' if s['tied'] else 'untied'}, {s['precision']}")
        torch = (f"torch: {r['param_note']}" + (f"; torch.compile n/a: {r['torch_compile_error']}"
                                                if r["torch_compile_error"] else "")
                 if r["torch_skipped"] is None else f"no torch reference: {r['torch_skipped']}")
        notes.append(f"- {r['preset']}: {about}. {torch}")
    return "\n".join([
        "# Training benchmark" + (" (--quick: tiny shapes, not the presets' sizes)" if result["quick"] else ""), "",
        f"device: {h['platform']} ({h['device']}), {h['cpus']} CPUs, load average {h['load_average']:.2f} at start, "
        f"{result['load_average_end']:.2f} at end; jax {h['jax']}, jaxlib {h['jaxlib']}, equinox {h['equinox']}, "
        f"torch {h['torch']} ({h['torch_threads']} threads), transformers {h['transformers']}",
        f"peak: a jitted {result['matmul_size']}x{result['matmul_size']} f32 matmul, median of {PEAK_REPEATS}: "
        f"{result['peak_flops'] / 1e9:,.1f} GFLOP/s; MFU = GFLOP/s / peak",
        f"step ms: median of {result['repeats']} timings of {result['steps']} step(s) after one untimed step; "
        "compile s: ahead-of-time lower + compile of the train step; peak MiB: the compiled step's memory "
        "(arguments + outputs - donated + temporaries); GFLOP/token: chimera_jax/bench/flops.py (3x the forward "
        "matrix products); torch / JAX: torch's step time over ours (> 1: JAX faster)", "", figures, "", *notes])
