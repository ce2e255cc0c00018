"""Seed 004's comparison: the standard transformer, ti_mlp and ti_ssm trained on the same data with the
same budget, then one table: parameters, ms/step and validation loss at every evaluation.

    python scripts/experiment_ti.py                                  # the presets' 3000 steps
    python scripts/experiment_ti.py --steps 300 --eval-every 100     # a budget a CPU can afford
    python scripts/experiment_ti.py --steps 300 --data.corpus wikitext-2   # dotted overrides apply to all

Each model trains in OUT/<preset> (default checkpoints/experiment_ti). A run directory that already holds
checkpoints is continued by the loop, not restarted: use a fresh --out for a new comparison. The table is
also written to OUT/results.json.
"""

from __future__ import annotations

from chimera_jax.malloc import reexec_with_tuned_malloc

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up, so before anything else: see the module

import argparse
import json
import logging
import sys
from pathlib import Path

from chimera_jax.config import load_config, preset_path, replace
from chimera_jax.train.loop import format_summary, train
from chimera_jax.train.metrics import read_metrics

PRESETS = ("standard", "ti_mlp", "ti_ssm")


def run(name: str, steps: int | None, eval_every: int | None, out: Path, overrides: list[str]) -> dict:
    """Train one preset under the shared budget; its summary plus ``val_curve`` ``{step: loss}``."""
    cfg = load_config(preset_path(name), [*overrides, "--train.run_dir", str(out / name)])
    steps = steps or cfg.train.steps
    every = min(eval_every or cfg.train.eval_every, steps)
    cfg = replace(cfg, train=replace(cfg.train, steps=steps, eval_every=every, checkpoint_every=every))
    summary = train(cfg)
    print(format_summary(summary), flush=True)
    summary["val_curve"] = {line["step"]: line["loss"] for line in read_metrics(cfg.run_dir, split="validation")}
    return {**summary, "tokenizer": cfg.data.tokenizer, "seq_len": cfg.data.seq_len}


def table(results: list[dict]) -> str:
    """A markdown table: one row per model, one validation-loss column per evaluation step."""
    steps = sorted({s for r in results for s in r["val_curve"]})
    head = ["model", "params", "active", "ms/step", *(f"val@{s}" for s in steps)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ms = "n/a" if r["ms_per_step"] is None else f"{r['ms_per_step']:.1f}"
        losses = [f"{r['val_curve'][s]:.4f}" if s in r["val_curve"] else "" for s in steps]
        rows.append("| " + " | ".join([r["name"], f"{r['params']:,}", f"{r['active_params']:,}", ms, *losses]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="training steps for every model (default: the presets')")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate and checkpoint every N steps (default: the presets', at most --steps)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/experiment_ti"), help="parent of the run dirs")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="which presets to compare")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = [run(name, args.steps, args.eval_every, args.out, overrides) for name in args.presets]
    first = results[0]
    print(f"\nvalidation loss: mean nats per token ({first['tokenizer']} tokenizer, {first['corpus']} validation, "
          f"the loop's first eval_batches x batch_size non-overlapping {first['seq_len']}-token windows); "
          "ms/step excludes the first, compiling, step\n")
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
