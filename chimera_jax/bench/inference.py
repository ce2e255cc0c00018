"""``chimera-bench inference``: decoding speed of the presets, cached and recomputed, against transformers'
``generate()``, measured in one process so every ratio compares like with like.

    chimera-bench inference [--quick] [--presets dense moe moe_e4 ti_ssm] [--usd-per-hour X] [--json FILE]
        [--repeats 3] [--batches 1 8] [--torch-threads N] [--decode-chunk 16] [--depths 3 12]
    python scripts/bench.py inference --quick --json /tmp/bench.json   # tiny shapes: a smoke run
    python scripts/bench.py inference --usd-per-hour 3.5 --json bench.json   # the presets' sizes, priced

For each preset (dense; ``moe``: the dense model with each FFN replaced by configs/moe.yaml's experts, each
1/k as wide, so the active parameters per token match; ``moe_e4`` likewise with configs/moe_e4.yaml's 4 experts
instead of 8, and so any MoE preset of configs/; ti_ssm): prefill tokens/s, time to first token,
decode tokens/s at batch 1 and 8 with the cache and by full recompute (``--no-cache``, the baseline), the
decoding state's memory and the cost per 1M generated tokens at ``--usd-per-hour``. Two settings:
``headlines`` (10 prompts, the first BBC News test headlines, 16 new tokens, greedy) and ``ctx256`` (the
same articles cut to 256 tokens of context, 32 new tokens). Then transformers' ``generate()`` on the
dense model's weights exported to HF (torch eager, KV cache), and decode ms/token of ti_ssm and dense from
64 to 1024 tokens of context. Weights are random: decoding speed does not depend on their values.

Batch B groups the 10 prompts B at a time (wrapping round so each batch is full). Each figure is the median
over ``--repeats`` passes of all the batches, after one untimed pass that compiles every shape. Recompute
is timed on the first batch only: its cost per token depends on the shape, not the text, and it is by far
the slowest part of the bench. Cached decoding runs ``--decode-chunk`` steps per host call (the engine's
default); decode tokens/s counts the tokens asked for, not the steps a last chunk runs past them.

Last, the targets: four ratios of this run's figures against the ``--min-*`` / ``--max-*`` thresholds
(docs/generation.md says where the defaults come from); not judged at ``--quick`` shapes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chimera_jax.config import ConfigError, RunConfig, load_config, preset_path, presets, resolve_config
from chimera_jax.flags import parse
from chimera_jax.markdown import table

if TYPE_CHECKING:  # the command parses its arguments before JAX loads
    from chimera_jax.generate.engine import Generator
    from chimera_jax.models.transformer import Decoder
    from chimera_jax.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PRESETS = ("dense", "moe", "moe_e4", "ti_ssm")
SWEEP = (64, 128, 256, 512, 1024)


@dataclass
class InferenceArgs:
    quick: bool = False  # tiny shapes and few tokens: a smoke run (about a minute on 2 busy cores)
    presets: list[str] = field(default_factory=lambda: list(PRESETS))  # dense, ti_ssm or an MoE preset's experts
    # price of the machine, for the cost per 1M generated tokens; the default is about the on-demand price of a
    # 2-vCPU cloud machine (AWS c6i.large, us-east-1), the kind the default run is sized for: pass yours
    usd_per_hour: float = 0.085
    repeats: int | None = None  # timed passes per figure (the median is reported); None: 3, or 1 with --quick
    torch_threads: int | None = None  # torch's intra-op threads; None: torch's default (one per core)
    batches: list[int] = field(default_factory=lambda: [1, 8])  # batch sizes to time
    decode_chunk: int = 16  # cached decoding steps per host call (engine.DECODE_CHUNK)
    depths: list[int] = field(default_factory=list)  # time-indexed presets also run at these depths (rows ti_ssm@L)
    json: str | None = None  # also write every figure to this JSON file
    min_cached_over_recompute: float = 10.0  # target: cached decode over recompute, every row of the longer context
    min_jax_over_torch: float = 1.5  # target: dense decode at batch 1 over transformers generate()'s
    min_moe_over_dense: float = 0.8  # target: each MoE preset's decode over dense's (same setting and batch)
    max_context_slowdown: float = 1.2  # target: ti_ssm's slowest ms/token over the context sweep / its fastest


@dataclass(frozen=True)
class Setting:
    name: str
    prompts: tuple[str, ...]
    new_tokens: int
    about: str


@dataclass
class Timing:
    """Medians over the timed passes; the rates count real (unpadded) prompt tokens and every decoded token."""

    prefill_tokens_per_s: float
    first_token_ms: float
    decode_tokens_per_s: float

    @property
    def ms_per_token(self) -> float:
        """Per token of one sequence: meaningful at batch 1."""
        return 1000 / self.decode_tokens_per_s


# ---------------------------------------------------------------------------------------------------------
# Models and prompts


def preset_config(name: str, quick: bool, vocab_size: int) -> RunConfig:
    """A preset's run config: dense or ti_ssm as their YAML has them; an MoE preset (``moe``, ``moe_e4``, ...)
    is dense with each FFN made that preset's experts, top-k of experts 1/k as wide (equal active parameters up
    to the router); ``quick`` shrinks every preset alike."""
    small = ["--model.d_model", "64", "--model.n_layers", "2"] if quick else []
    if name in ("dense", "ti_ssm"):
        return resolve_config(load_config(preset_path(name), small), vocab_size)
    experts = load_config(preset_path(name)).model.moe if name in presets() else None
    if experts is None or not experts.enabled:
        moes = [p for p in presets() if load_config(preset_path(p)).model.moe.enabled]
        raise ConfigError(f"presets: unknown {name!r}: dense, ti_ssm, or an MoE preset ({', '.join(moes)})")
    dense = load_config(preset_path("dense"), small)
    moe = dataclasses.replace(experts, d_ff=dense.model.resolved_d_ff() // experts.top_k, dispatch="dropless")
    cfg = dataclasses.replace(dense, name=name, model=dataclasses.replace(dense.model, moe=moe))
    return resolve_config(cfg, vocab_size)


def cut(text: str, n: int, tokenizer: Tokenizer) -> str:
    """The longest start of ``text`` that encodes to at most ``n`` tokens and back to itself."""
    ids = tokenizer.encode(text)[:n]
    while tokenizer.encode(tokenizer.decode(ids)) != ids:  # a character or token split at the cut
        ids = ids[:-1]
    return tokenizer.decode(ids)


def articles() -> list[str]:
    """The settings' 10 prompts come from these: the first bbc_news test articles, each headed by its headline."""
    from chimera_jax.data import load_documents

    return load_documents("bbc_news", "test")[:10]


def settings(quick: bool, tokenizer: Tokenizer) -> list[Setting]:
    docs = articles()
    headlines = tuple(d.split("\n", 1)[0].strip() for d in docs)
    context, new = (64, (4, 8)) if quick else (256, (16, 32))
    return [Setting("headlines", headlines, new[0], f"10 prompts (the first bbc_news test headlines, "
                    f"{min(map(len, headlines))}-{max(map(len, headlines))} bytes), {new[0]} new tokens, greedy"),
            Setting(f"ctx{context}", tuple(cut(d, context, tokenizer) for d in docs), new[1],
                    f"the same 10 articles cut to {context} tokens, {new[1]} new tokens, greedy")]


def full_batches(prompts: Sequence, size: int) -> list[list]:
    """``prompts`` in groups of ``size``, the last one filled from the start again."""
    count = math.ceil(len(prompts) / size)
    return [[prompts[(i * size + j) % len(prompts)] for j in range(size)] for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Timing


def timed(run: Callable[[list], object], groups: list[list], new_tokens: int, repeats: int) -> Timing:
    """``run`` (ours or HF's generate on one batch) over every group: one untimed pass, then ``repeats``."""
    for group in groups:
        run(group)
    prefill, first, decode = [], [], []
    for _ in range(repeats):
        gens = [run(group) for group in groups]
        prefill.append(sum(map(sum, (g.prompt_tokens for g in gens))) / sum(g.prefill_ms / 1000 for g in gens))
        first += [g.first_token_ms for g in gens]
        decoded = [len(g.prompt_tokens) * (new_tokens - 1) for g in gens]
        decode.append(sum(decoded) / sum(n / g.decode_tokens_per_s for n, g in zip(decoded, gens, strict=True)))
    return Timing(statistics.median(prefill), statistics.median(first), statistics.median(decode))


def state_mib(model: Decoder, batch: int, length: int) -> float:
    """Decoding-state memory of ``batch`` sequences of ``length`` tokens: KV caches, SSM states (unallocated)."""
    import equinox as eqx
    import jax

    from chimera_jax.models.kv_cache import CacheLayout

    state = eqx.filter_eval_shape(lambda: model.init_state(batch, CacheLayout(window=length)))
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)) / 2**20


def device_header(torch_device: str) -> str:
    """Devices, framework versions and machine load: what every timing depends on."""
    import jax
    import torch
    import transformers

    device = jax.devices()[0]
    kind = "" if device.device_kind == device.platform else f" ({device.device_kind})"
    return (f"devices: jax on {device.platform}{kind}, torch on {torch_device} ({torch.get_num_threads()} threads); "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; jax {jax.__version__}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


# ---------------------------------------------------------------------------------------------------------
# The inference bench


def decoding_rows(generators: dict[str, Generator], cases: list[Setting], batches: list[int], repeats: int,
                  usd_per_hour: float, decode_chunk: int) -> list[dict]:
    """Every preset, setting and batch size: cached decoding, and recompute as the baseline."""
    rows = []
    for setting in cases:
        for name, gen in generators.items():
            longest = max(map(len, gen.tokenizer.encode_batch(setting.prompts))) + setting.new_tokens
            for batch in batches:
                groups = full_batches(setting.prompts, batch)
                timings = {}
                for cache in (True, False):
                    log.info("%s: %s at batch %d, %s", setting.name, name, batch, "cached" if cache else "recompute")
                    timings[cache] = timed(
                        lambda g, gen=gen, s=setting, c=cache: gen.generate(g, s.new_tokens, cache=c, ignore_eos=True,
                                                                           decode_chunk=decode_chunk),
                        groups if cache else groups[:1], setting.new_tokens, repeats)
                cached, recompute = timings[True], timings[False]
                rows.append({"setting": setting.name, "preset": name, "batch": batch, **dataclasses.asdict(cached),
                             "recompute_tokens_per_s": recompute.decode_tokens_per_s,
                             "cached_over_recompute": cached.decode_tokens_per_s / recompute.decode_tokens_per_s,
                             "state_mib": state_mib(gen.model, batch, longest),
                             "usd_per_1m_tokens": usd_per_hour / 3600 / cached.decode_tokens_per_s * 1e6})
    return rows


def torch_rows(hf_model, tokenizer: Tokenizer, cases: list[Setting], batches: list[int], repeats: int,
               ours: list[dict]) -> list[dict]:
    """transformers' ``generate()`` on the dense weights, with our dense rows' decode rate over its own."""
    from chimera_jax.bridge.hf_generate import hf_generate

    dense = {(r["setting"], r["batch"]): r["decode_tokens_per_s"] for r in ours if r["preset"] == "dense"}
    rows = []
    for setting in cases:
        for batch in batches:
            log.info("%s: dense in torch (transformers generate) at batch %d", setting.name, batch)
            groups = full_batches(tokenizer.encode_batch(setting.prompts), batch)
            hf = timed(lambda g, s=setting: hf_generate(hf_model, g, s.new_tokens), groups, setting.new_tokens,
                       repeats)
            rows.append({"setting": setting.name, "batch": batch,
                         **{f"hf_{k}": v for k, v in dataclasses.asdict(hf).items()},
                         "jax_over_torch": dense[setting.name, batch] / hf.decode_tokens_per_s})
    return rows


def context_sweep(generators: dict[str, Generator], contexts: Sequence[int], new_tokens: int,
                  repeats: int, decode_chunk: int) -> list[dict]:
    """Decode ms/token at batch 1 after prompts of each length: ti_ssm's should not grow, dense's may."""
    long_text = "\n\n".join(articles())  # about 20,000 bytes: past the longest context swept
    rows = []
    for context in contexts:
        row = {"context": context}
        for name in ("ti_ssm", "dense"):
            if name in generators:
                log.info("context %d: %s", context, name)
                gen = generators[name]
                prompt = [cut(long_text, context, gen.tokenizer)]
                row[f"{name}_ms_per_token"] = timed(
                    lambda g, gen=gen: gen.generate(g, new_tokens, ignore_eos=True, decode_chunk=decode_chunk),
                    [prompt], new_tokens, repeats).ms_per_token
        rows.append(row)
    return rows


def main(argv: Sequence[str]) -> dict:
    args = parse(InferenceArgs, argv)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else 3
    if min(repeats, *args.batches, args.torch_threads or 1, args.decode_chunk) < 1 or args.usd_per_hour <= 0:
        raise ConfigError("repeats, batches, torch-threads and decode-chunk must be >= 1 and usd-per-hour > 0")
    if args.depths and (min(args.depths) < 1 or "ti_ssm" not in args.presets):
        raise ConfigError(f"depths {args.depths}: each must be >= 1, with the time-indexed preset ti_ssm in --presets")
    import jax

    from chimera_jax.bridge.convert import to_hf
    from chimera_jax.bridge.measure import peak_memory
    from chimera_jax.bridge.torch_utils import default_device
    from chimera_jax.generate.engine import Generator
    from chimera_jax.models.builder import build_model
    from chimera_jax.models.params import param_report
    from chimera_jax.models.time_indexed import with_depth
    from chimera_jax.optional import require
    from chimera_jax.tokenizer import get_tokenizer

    if args.torch_threads:
        require("torch").set_num_threads(args.torch_threads)
    torch_device = default_device()
    tokenizer = get_tokenizer("byte")
    configs = {name: preset_config(name, args.quick, tokenizer.vocab_size) for name in args.presets}
    generators = {name: Generator(build_model(cfg.model, jax.random.PRNGKey(0)), tokenizer)
                  for name, cfg in configs.items()}
    for name, cfg in list(configs.items()):  # the same weights run at other depths: decoding speed against depth
        if cfg.model.time.enabled:
            for depth in args.depths:
                configs[f"{name}@{depth}"] = dataclasses.replace(
                    cfg, model=dataclasses.replace(cfg.model, n_layers=depth))
                generators[f"{name}@{depth}"] = Generator(with_depth(generators[name].model, depth), tokenizer)
    cases = settings(args.quick, tokenizer)
    contexts = SWEEP[:2] if args.quick else SWEEP
    header = device_header(torch_device)
    log.info(header)

    rows = decoding_rows(generators, cases, args.batches, repeats, args.usd_per_hour, args.decode_chunk)
    torch = []
    if "dense" in generators:
        longest = max(contexts[-1], *(max(map(len, tokenizer.encode_batch(s.prompts))) for s in cases))
        hf_model = to_hf(generators["dense"].model, configs["dense"].model, n_positions=longest + 64)
        torch = torch_rows(hf_model.to(torch_device), tokenizer, cases, args.batches, repeats, rows)
    sweep_tokens = 4 * cases[-1].new_tokens  # more tokens per point than the table: a steadier ms/token
    sweep = context_sweep(generators, contexts, sweep_tokens, repeats, args.decode_chunk)

    memory, memory_kind = peak_memory("jax")
    result = {"header": header, "quick": args.quick, "usd_per_hour": args.usd_per_hour, "repeats": repeats,
              "decode_chunk": args.decode_chunk,
              "settings": {s.name: s.about for s in cases},
              "params": {name: param_report(gen.model) for name, gen in generators.items()},
              "configs": {n: dataclasses.asdict(c.model) for n, c in configs.items()}, "rows": rows,
              "torch": torch, "sweep": sweep, "sweep_new_tokens": sweep_tokens, "peak_memory_mib": memory,
              "peak_memory_kind": memory_kind}
    result["targets"] = [] if args.quick else targets(result, args)  # the targets are about the presets' sizes
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def targets(result: dict, args: InferenceArgs) -> list[dict]:
    """The four targets (``args.min_*``, ``args.max_*``) against this run's figures."""
    rows, context = result["rows"], list(result["settings"])[-1]
    out = []

    def add(target: str, pairs: list[tuple[str, float]], ok: Callable[[float], bool]) -> None:
        if pairs:
            out.append({"target": target, "measured": {k: round(v, 2) for k, v in pairs},
                        "met": all(ok(v) for _, v in pairs)})

    add(f"cached decoding >= {args.min_cached_over_recompute:g}x recompute at {context}",
        [(f"{r['preset']} b{r['batch']}", r["cached_over_recompute"]) for r in rows if r["setting"] == context],
        lambda v: v >= args.min_cached_over_recompute)
    add(f"dense decode at batch 1 >= {args.min_jax_over_torch:g}x transformers generate()",
        [(r["setting"], r["jax_over_torch"]) for r in result["torch"] if r["batch"] == 1],
        lambda v: v >= args.min_jax_over_torch)
    by_key = {(r["setting"], r["preset"], r["batch"]): r["decode_tokens_per_s"] for r in rows}
    moes = sorted({p for _, p, _ in by_key if p not in ("dense", "ti_ssm")})
    for moe in moes:
        add(f"{moe} decode >= {args.min_moe_over_dense:g}x dense (same active parameters)",
            [(f"{s} b{b}", v / by_key[s, "dense", b]) for (s, p, b), v in by_key.items()
             if p == moe and (s, "dense", b) in by_key], lambda v: v >= args.min_moe_over_dense)
    ssm = [r["ti_ssm_ms_per_token"] for r in result["sweep"] if "ti_ssm_ms_per_token" in r]
    add(f"ti_ssm ms/token flat over context (slowest / fastest <= {args.max_context_slowdown:g})",
        [(f"{result['sweep'][0]['context']}-{result['sweep'][-1]['context']}", max(ssm) / min(ssm))] if ssm else [],
        lambda v: v <= args.max_context_slowdown)
    return out


def shape(cfg: dict) -> str:
    ffn = (f"{cfg['moe']['num_experts']} experts top-{cfg['moe']['top_k']} x d_ff {cfg['moe']['d_ff']}"
           if cfg["moe"]["enabled"] else f"d_ff {cfg['d_ff'] or 4 * cfg['d_model']}")
    mixer = "time-indexed SSM (one shared block)" if cfg["time"]["enabled"] else cfg["mixer"]
    return f"{mixer}, d_model {cfg['d_model']}, {cfg['n_layers']} layers, {ffn}"


def report(result: dict) -> str:
    """The header (device, versions, settings) above the Markdown tables."""
    lines = ["# Inference benchmark" + (" (--quick: tiny shapes, not the presets' sizes)" if result["quick"] else ""),
             "", result["header"],
             "weights: random init, float32 (decoding speed does not depend on the weights' values); greedy; "
             "byte tokenizer",
             *(f"setting {name}: {about}" for name, about in result["settings"].items()),
             f"batch B: the 10 prompts B at a time (wrapping round to fill the last batch); each figure is the median "
             f"of {result['repeats']} passes after one untimed pass that compiles every shape; recompute: the first "
             "batch only (same shape as the others)",
             f"cached decoding: {result['decode_chunk']} steps per host call; decode tok/s counts the tokens asked "
             "for (new tokens - 1 per row), not the steps the last call runs past them",
             f"cost per 1M generated tokens at ${result['usd_per_hour']}/hour: usd_per_hour / 3600 / decode tokens/s "
             f"x 1e6; state MiB: KV caches or SSM states of the batch at its final length",
             f"process peak memory over the whole run: {result['peak_memory_mib']:,.0f} MiB "
             f"({result['peak_memory_kind']})", "", "## Models", "",
             table(["preset", "total params", "active params", "weights MiB", "shape"],
                   [[n, p["total"], p["active"], p["total"] * 4 / 2**20, shape(result["configs"][n])]
                    for n, p in result["params"].items()]),
             "", "## Decoding (JAX; recompute: the --no-cache baseline re-running the whole sequence per token)", "",
             table(["setting", "preset", "batch", "prefill tok/s", "first token ms", "decode tok/s",
                    "recompute tok/s", "cached/recompute", "state MiB", "$/1M tokens"],
                   [[r["setting"], r["preset"], r["batch"], r["prefill_tokens_per_s"], r["first_token_ms"],
                     r["decode_tokens_per_s"], r["recompute_tokens_per_s"], r["cached_over_recompute"],
                     r["state_mib"], r["usd_per_1m_tokens"]] for r in result["rows"]])]
    if result["torch"]:
        ours = {(r["setting"], r["batch"]): r for r in result["rows"] if r["preset"] == "dense"}
        lines += ["", "## Dense: JAX against transformers generate() on the same weights (torch eager, KV cache)", "",
                  table(["setting", "batch", "JAX decode tok/s", "torch decode tok/s", "JAX/torch",
                         "JAX first token ms", "torch first token ms", "JAX prefill tok/s", "torch prefill tok/s"],
                        [[t["setting"], t["batch"], o["decode_tokens_per_s"], t["hf_decode_tokens_per_s"],
                          t["jax_over_torch"], o["first_token_ms"], t["hf_first_token_ms"],
                          o["prefill_tokens_per_s"], t["hf_prefill_tokens_per_s"]]
                         for t in result["torch"] for o in [ours[t["setting"], t["batch"]]]])]
    if result["sweep"]:
        names = [k.removesuffix("_ms_per_token") for k in result["sweep"][0] if k != "context"]
        title = f"## Decode ms/token against context (batch 1, cached, {result['sweep_new_tokens']} new tokens)"
        lines += ["", title, "",
                  table(["context", *names], [[r["context"], *(r[f"{n}_ms_per_token"] for n in names)]
                                              for r in result["sweep"]])]
    lines += ["", "## Targets", ""]
    if result["quick"]:
        lines.append("Targets not judged at --quick shapes: they are about the presets' sizes.")
    else:
        lines.append(table(["target", "measured", "met"],
                           [[t["target"], ", ".join(f"{k}: {v}" for k, v in t["measured"].items()),
                             "yes" if t["met"] else "no"] for t in result["targets"]]))
    return "\n".join(lines)

