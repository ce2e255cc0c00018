"""Evaluate a causal LM in PyTorch under our protocol: the same token stream, windows and loss summary.

    chimera-eval-hf --hf gpt2|PATH|FILE.gguf|smollm2|RUN_DIR [--data wikitext-2] [--split test]
        [--seq-len 512] [--stride 512] [--max-windows 16] [--batch-size 8] [--repeats 3] [--device cuda]
        [--dtype float32] [--json out.json]
    python scripts/eval_hf.py --hf smollm2 --data wikitext-2 --split test --seq-len 512 --max-windows 16

``--hf`` (named as in ``chimera-compare`` and ``chimera-lm-eval``) takes a hub name, an HF folder, a ``.gguf``
file, ``smollm2`` (packaged) or one of our run directories, exported to its HF equivalent on the fly (it
scores the very stream ``chimera-eval`` does).
Defaults: WikiText-2 test at seq-len 512. Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chimera_jax.cli.args import PROTOCOL_ALIASES, BaselineProtocol, protocol_of
from chimera_jax.flags import parse


@dataclass(kw_only=True)
class EvalHFArgs(BaselineProtocol):
    hf: str  # hub name, HF folder, .gguf file, 'smollm2', or a chimera run directory
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def format_result(r: dict) -> str:
    tps = "tok/s not measured"
    if r["tokens_per_s"]:
        tps = f"{r['tokens_per_s']:,.0f} tok/s at batch {r['throughput_batch']}"
    p = r["protocol"]
    return (f"{r['model']} on {r['corpus']}/{r['split']}: {r['tokens_scored']:,} tokens  loss {r['loss']:.4f}  "
            f"ppl {r['perplexity']:.3f}  bpb {r['bits_per_byte']:.4f}\n"
            f"  params {r['params_total']:,}  {tps}  memory {r['memory_mb']:,.0f} MiB ({r['memory_kind']}, "
            f"{r['device']})\n"
            f"  protocol: tokenizer {p['tokenizer']}, seq-len {p['seq_len']}, stride {p['stride']}, "
            f"max windows {p['max_windows']}; {p['normalisation']}; byte check {r['byte_check']:.6f}")


def main(argv: Sequence[str]) -> dict:
    args = parse(EvalHFArgs, argv, aliases=PROTOCOL_ALIASES)
    from chimera_jax.bridge.hf_eval import evaluate_hf  # torch loads only once the arguments are known good

    result = evaluate_hf(args.hf, protocol_of(args), device=args.device, dtype=args.dtype, repeats=args.repeats,
                         progress=True)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result
