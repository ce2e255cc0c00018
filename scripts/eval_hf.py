"""Evaluate an HF causal LM in PyTorch under exactly our protocol (same windows, same loss summary).

    python scripts/eval_hf.py --model gpt2|PATH|FILE.gguf|smollm2|RUN_DIR --data wikitext-2 --split test \\
        --seq-len 512 --stride 512 [--max-windows 16] [--json out.json]

Each model reads the text of ``chimera_jax.data.load_text`` with its own tokenizer. A chimera run
directory is exported to its HF equivalent on the fly, so our checkpoints can be checked in torch.
Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

from chimera_jax.malloc import reexec_with_tuned_malloc

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up, so before anything else: see the module

import argparse
import json
import sys

from chimera_jax.config import DataConfig


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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub name, HF folder, .gguf file, 'smollm2', or a chimera run dir")
    p.add_argument("--data", default="wikitext-2", help="corpus name (see chimera_jax/data.py)")
    p.add_argument("--data-dir", default=None, help="local copy of a hub corpus")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--stride", type=int, default=None, help="window stride (default: seq-len, no overlap)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass, also for tokens/s")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows (CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed forward passes for tokens/s (0: skip)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)

    from chimera_jax.bridge.hf_eval import evaluate_hf

    result = evaluate_hf(args.model, args.data, args.split, seq_len=args.seq_len, stride=args.stride,
                         batch_size=args.batch_size, max_windows=args.max_windows,
                         data_cfg=DataConfig(corpus=args.data, data_dir=args.data_dir), device=args.device,
                         dtype=args.dtype, repeats=args.repeats, progress=True)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
