"""Evaluate a checkpoint in JAX: tokens scored, mean loss, perplexity and bits per byte under a stated protocol.

    chimera-eval --checkpoint RUN_DIR [--step N] [--data NAME] [--split validation] [--seq-len 512]
        [--stride 512] [--max-windows N] [--batch-size 8] [--window W [--sink-tokens S]] [--depth L] [--json out.json]
    python scripts/eval.py --checkpoint checkpoints/dense --split test --seq-len 128 --stride 64
    python scripts/eval.py --checkpoint runs/modern --data wikitext-2 --split test --seq-len 2048 --window 124 \
        --sink-tokens 4

The model comes from the checkpoint; every protocol flag left out is the run's own (its corpus,
tokenizer and seq_len). stride == seq-len gives non-overlapping windows; stride <
seq-len gives sliding windows that score only the new tokens. ``--window W`` scores each window through a
rolling KV cache of its last W tokens, plus its first S with ``--sink-tokens S`` (StreamingLLM), at constant
memory: how seq-len goes past the training context (docs/long_context.md). ``--depth`` runs a time-indexed
model's shared block L times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chimera_jax.cli.args import PROTOCOL_ALIASES, check_depth, check_run_dir, protocol_of
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.flags import parse


@dataclass(kw_only=True)
class EvalArgs(EvalProtocol):
    checkpoint: str  # run directory (holds checkpoints/)
    step: int | None = None  # checkpoint step; None: the newest readable
    depth: int | None = None  # time-indexed models: run the shared block this many times
    json: str | None = None  # also write the result to this JSON file


def cache_of(protocol: dict) -> str:
    """The rolling cache a result was scored through, in the result line's words ("": full attention)."""
    if protocol["window"] is None:
        return ""
    sinks = f" + {protocol['sink_tokens']} sink tokens" if protocol["sink_tokens"] else ""
    return f", window {protocol['window']}{sinks}"


def main(argv: Sequence[str]) -> dict:
    args = parse(EvalArgs, argv, aliases=PROTOCOL_ALIASES)
    check_run_dir(args.checkpoint, "checkpoint")
    check_depth(args.checkpoint, args.depth)
    from chimera_jax.runs.evaluate import evaluate_checkpoint  # JAX loads only once the arguments are known good

    result = evaluate_checkpoint(args.checkpoint, protocol_of(args), step=args.step, depth=args.depth, progress=True)
    p = result["protocol"]
    print(f"{p['corpus']}/{p['split']}: {result['tokens_scored']:,} tokens  loss {result['loss']:.4f}  "
          f"ppl {result['perplexity']:.3f}  bpb {result['bits_per_byte']:.4f}  "
          f"(tokenizer {p['tokenizer']}, seq-len {p['seq_len']}, stride {p['stride']}{cache_of(p)}"
          f"{'' if args.depth is None else f', depth {args.depth}'})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result
