"""Continue prompts with a trained checkpoint: greedy, or sampled reproducibly from a seed.

    chimera-generate --checkpoint RUN_DIR [--prompt TEXT ... | --prompts FILE] [--max-new-tokens 64]
        [--temperature 0] [--top-k K] [--top-p 1] [--seed 0] [--stop TEXT ...] [--no-cache] [--ignore-eos]
        [--step N] [--depth L] [--window W --sink-tokens S] [--decode-chunk 16] [--json out.json]
    python scripts/generate.py --checkpoint checkpoints/dense --prompt "The government said" --max-new-tokens 40
    python scripts/generate.py --checkpoint checkpoints/dense --prompts prompts.txt --temperature 0.8 --top-p 0.9

Temperature 0 (the default) is greedy; otherwise token i is drawn with (seed, i), so a seed gives the same
text again, alone or in a batch. ``--prompts FILE`` reads one prompt per line (blank lines skipped); the
prompts, of any lengths, run as one batch. One prompt streams its text to stdout as it is produced;
several are printed, labelled, when all are done. Each stops at ``--max-new-tokens``, at EOS (unless
``--ignore-eos``) or before the first ``--stop`` text. A summary (tokens, prefill, first-token latency,
decode tokens/s, compile time) goes to stderr; ``--json`` writes it with the texts and the settings.

``--no-cache`` re-runs the whole sequence for every token (the reference the cache is tested against).
``--decode-chunk N`` runs N cached decoding steps per call from the host (the text is the same for any N;
the stream then arrives N tokens at a time).
``--window W --sink-tokens S`` keeps only the first S and the last W tokens in each attention layer's
cache (StreamingLLM), to run past the training context in constant memory; without it, a generation past the
run's ``model.max_seq_len`` logs a warning first (the text may degrade there). ``--depth`` runs a
time-indexed model's shared block L times. In a notebook, the same call is
``Generator.from_run(run_dir).generate(prompts, ...)`` (chimera_jax/generate/engine.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chimera_jax.cli.args import check_depth, check_run_dir
from chimera_jax.config import ConfigError
from chimera_jax.flags import parse

if TYPE_CHECKING:
    from chimera_jax.generate.engine import Generation


@dataclass(kw_only=True)
class GenerateArgs:
    checkpoint: str  # run directory (holds checkpoints/)
    prompt: list[str] = field(default_factory=list)  # one or more prompts
    prompts: str | None = None  # a file of prompts, one per line (instead of --prompt)
    max_new_tokens: int = 64  # new tokens per prompt at most
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None  # sample among the k most likely tokens (None: all)
    top_p: float = 1.0  # then among the smallest set holding this much probability
    seed: int = 0  # sampling seed
    stop: list[str] = field(default_factory=list)  # texts that end a continuation (cut before them)
    no_cache: bool = False  # re-run the whole sequence for every token
    ignore_eos: bool = False  # keep going past the end-of-text token
    step: int | None = None  # checkpoint step; None: the newest readable
    depth: int | None = None  # time-indexed models: run the shared block this many times
    window: int | None = None  # rolling KV cache: keep the last W tokens (None: a full cache)
    sink_tokens: int = 0  # with --window: also keep the first S tokens for good
    decode_chunk: int = 16  # cached decoding steps per host call (engine.DECODE_CHUNK)
    json: str | None = None  # also write the texts, timings and settings to this JSON file


def read_prompts(args: GenerateArgs) -> list[str]:
    """The prompts the arguments give, each non-empty; a one-line ``ConfigError`` otherwise."""
    if args.prompt and args.prompts:
        raise ConfigError("prompt: give --prompt or --prompts FILE, not both")
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise ConfigError(f"prompts: no such file {args.prompts}")
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    else:
        prompts = args.prompt
    if not prompts:
        raise ConfigError("prompt: no prompt given (--prompt TEXT or --prompts FILE)")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ConfigError(f"prompt: prompt {i + 1} is empty: generation needs at least one token to continue")
    return prompts


def summary(generation: Generation, cache: str) -> str:
    """The stderr line: sizes, then the timings (rates exclude compile time)."""
    return (f"prompt tokens {', '.join(map(str, generation.prompt_tokens))}  "
            f"new tokens {', '.join(map(str, generation.new_tokens))}  prefill {generation.prefill_ms:.1f} ms  "
            f"first token {generation.first_token_ms:.1f} ms  decode {generation.decode_tokens_per_s or 0:.1f} tok/s  "
            f"compile {generation.compile_s:.2f} s  ({cache})")


def main(argv: Sequence[str]) -> Generation:
    """Run the command; returns the ``Generation``."""
    args = parse(GenerateArgs, argv)
    check_run_dir(args.checkpoint, "checkpoint")
    check_depth(args.checkpoint, args.depth)
    prompts = read_prompts(args)
    if args.window is None and args.sink_tokens:
        raise ConfigError("sink_tokens: --sink-tokens needs --window (a full cache keeps every token anyway)")
    if args.window is not None and args.no_cache:
        raise ConfigError("window: --no-cache keeps no cache to roll; drop --window or --no-cache")
    if args.decode_chunk < 1:
        raise ConfigError(f"decode_chunk: --decode-chunk {args.decode_chunk} must be >= 1")
    from chimera_jax.generate.engine import Generator  # JAX loads only once the arguments are known good
    from chimera_jax.generate.sampling import Sampling
    from chimera_jax.models.kv_cache import CacheLayout

    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
        layout = None if args.window is None else CacheLayout(args.window, args.sink_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    generator = Generator.from_run(args.checkpoint, step=args.step, depth=args.depth, layout=layout)
    try:  # the engine checks these again inside generate; here they stop with one line before it compiles
        generator.check_lengths([len(row) for row in generator.encode(prompts)], args.max_new_tokens)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    single = len(prompts) == 1
    generation = generator.generate(
        prompts[0] if single else prompts, args.max_new_tokens, sampling, seed=args.seed, stop=args.stop,
        cache=not args.no_cache, ignore_eos=args.ignore_eos, decode_chunk=args.decode_chunk,
        on_text=(lambda text: print(text, end="", flush=True)) if single else None)
    if single:
        print()
    else:
        for i, (prompt, text) in enumerate(zip(prompts, generation.texts, strict=True)):
            print(f"--- {i + 1}: {prompt!r}\n{text}")
    cache = ("no cache" if args.no_cache else "full cache" if layout is None
             else f"rolling cache: {layout.sinks} sink + {layout.window} window tokens")
    print(summary(generation, cache), file=sys.stderr)
    if args.json:
        settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "json"}
        record = {"prompt": prompts[0] if single else prompts, **generation.as_json(), "settings": settings}
        Path(args.json).write_text(json.dumps(record, indent=2))
    return generation
