"""Evaluate a checkpoint: tokens scored, mean loss, perplexity and bits per byte under a stated protocol.

    python scripts/eval.py --checkpoint RUN_DIR [--data NAME] [--split test] [--seq-len 512] [--stride 512]

The model and its config come from the checkpoint. stride == seq-len gives non-overlapping windows
(seed 000's protocol); stride < seq-len gives sliding windows that score only the new tokens.
"""

from __future__ import annotations

from chimera_jax.malloc import reexec_with_tuned_malloc

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up, so before anything else: see the module

import argparse
import dataclasses
import json
import sys

from chimera_jax import data
from chimera_jax.eval.perplexity import evaluate, token_byte_lengths
from chimera_jax.tokenizer import get_tokenizer
from chimera_jax.train.checkpoint import load_model


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory (holds checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest readable)")
    p.add_argument("--data", default=None, help="corpus name (default: the one the run trained on)")
    p.add_argument("--data-dir", default=None, help="local copy of a hub corpus")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the training seq_len)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: seq-len)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--depth", type=int, default=None, help="time-indexed models: run the shared block L' times")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)

    model, cfg = load_model(args.checkpoint, args.step)
    if args.depth is not None:
        from chimera_jax.models.time_indexed import with_depth

        model = with_depth(model, args.depth)
    data_cfg = dataclasses.replace(cfg.data, corpus=args.data or cfg.data.corpus,
                                   data_dir=args.data_dir or cfg.data.data_dir)
    seq_len = args.seq_len or cfg.data.seq_len
    if cfg.model.positions == "learned" and seq_len > cfg.model.max_seq_len:
        raise SystemExit(f"--seq-len {seq_len} exceeds the model's learned positions ({cfg.model.max_seq_len})")
    tokens = data.load_tokens(data_cfg, args.split)
    data.check_split_length(tokens, seq_len, f"{data_cfg.corpus}/{args.split}")
    tokenizer = get_tokenizer(data_cfg.tokenizer)
    result = evaluate(model, tokens, seq_len=seq_len, stride=args.stride or seq_len, batch_size=args.batch_size,
                      token_bytes=token_byte_lengths(tokenizer), max_windows=args.max_windows, progress=True,
                      tokenizer=data_cfg.tokenizer)
    result.update({"checkpoint": str(args.checkpoint), "corpus": data_cfg.corpus, "split": args.split,
                   "depth": args.depth})
    print(f"{data_cfg.corpus}/{args.split}: {result['tokens_scored']:,} tokens  loss {result['loss']:.4f}  "
          f"ppl {result['perplexity']:.3f}  bpb {result['bits_per_byte']:.4f}  "
          f"(tokenizer {data_cfg.tokenizer}, seq-len {seq_len}, stride {args.stride or seq_len})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
