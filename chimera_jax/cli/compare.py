"""The comparison table: our checkpoints and HF baselines on one corpus and split, under one protocol (bits/byte,
perplexity, tokens/s, memory).

    chimera-compare RUN_DIR ... [--hf gpt2 EleutherAI/pythia-70m smollm2 ...] [--data wikitext-2]
        [--split test] [--seq-len 512] [--stride 512] [--max-windows 32] [--batch-size 8] [--repeats 3]
        [--device cuda] [--json table.json]
    python scripts/compare.py checkpoints/dense checkpoints/dwr_moe --hf gpt2 smollm2 --data wikitext-103

Positional arguments are our run directories (evaluated in JAX); ``--hf`` takes hub names, HF folders,
``.gguf`` files or ``smollm2`` (evaluated in torch; default: smollm2, packaged offline). Each model runs
in its own process. The protocol is printed above the table; models are ranked by bits per byte.
Defaults: WikiText-2 test at seq-len 512. Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.cli.args import PROTOCOL_ALIASES, BaselineProtocol, check_run_dir, protocol_of
from chimera_jax.errors import UserError
from chimera_jax.flags import parse


@dataclass(kw_only=True)
class CompareArgs(BaselineProtocol):
    runs: list[str] = field(default_factory=list)  # our run directories (positional)
    hf: list[str] = field(default_factory=lambda: ["smollm2"])  # HF baselines


def main(argv: Sequence[str]) -> list[dict]:
    args = parse(CompareArgs, argv, positional="runs", aliases=PROTOCOL_ALIASES)
    for run in args.runs:
        check_run_dir(run, "runs")
    from chimera_jax.bridge.compare import evaluate_isolated, report

    protocol = protocol_of(args)
    results = []
    for spec in [*args.runs, *args.hf]:
        print(f"evaluating {spec} ...", file=sys.stderr, flush=True)
        results.append(evaluate_isolated(spec, protocol, repeats=args.repeats, device=args.device))
    print(report(results, protocol))
    if args.json:
        Path(args.json).write_text(json.dumps({"protocol": protocol.as_dict(), "results": results}, indent=2))
    if results and all("error" in r for r in results):
        raise UserError(f"none of the {len(results)} models could be evaluated (Not evaluated, above)")
    return results
