"""Seed 000's table: our checkpoints and HF baselines on one corpus and split, under one protocol.

    python scripts/compare.py checkpoints/dense checkpoints/dwr_moe --hf gpt2 EleutherAI/pythia-70m smollm2 \\
        --data wikitext-103 --split validation --seq-len 512 --stride 512 [--max-windows 32] [--json table.json]

Positional arguments are our run directories (evaluated in JAX); ``--hf`` takes hub names, HF folders,
``.gguf`` files or ``smollm2`` (evaluated in torch). The protocol is printed above the table; models
are ranked by bits per byte. Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

from chimera_jax.malloc import reexec_with_tuned_malloc

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up, so before anything else: see the module

import argparse
import json
import sys

from chimera_jax.bridge.compare import Protocol, evaluate_isolated, report


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="our run directories (hold checkpoints/)")
    p.add_argument("--hf", nargs="*", default=["smollm2"], help="HF baselines (default: smollm2, packaged offline)")
    p.add_argument("--data", default="wikitext-2", help="corpus name (see chimera_jax/data.py)")
    p.add_argument("--data-dir", default=None, help="local copy of a hub corpus")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--stride", type=int, default=None, help="window stride (default: seq-len, no overlap)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows (CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes for tokens/s (0: skip)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--json", default=None, help="also write protocol and results to this JSON file")
    args = p.parse_args(argv)

    protocol = Protocol(corpus=args.data, split=args.split, seq_len=args.seq_len, stride=args.stride,
                        batch_size=args.batch_size, max_windows=args.max_windows, data_dir=args.data_dir,
                        repeats=args.repeats, device=args.device)
    results = []
    for spec in [*args.runs, *args.hf]:
        print(f"evaluating {spec} ...", file=sys.stderr, flush=True)
        results.append(evaluate_isolated(spec, protocol))
    print(report(results, protocol))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"protocol": protocol.describe(), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
