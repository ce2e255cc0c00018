"""Seed 004's comparison: the standard transformer, ti_mlp and ti_ssm trained on the same data with the
same budget, then one table: parameters, ms/step and validation loss at every evaluation.

    chimera-experiment-ti [--steps N] [--eval-every N] [--out DIR] [--presets standard ti_mlp ti_ssm] [--a.b v ...]
    python scripts/experiment_ti.py                                  # the presets' 3000 steps
    python scripts/experiment_ti.py --steps 300 --eval-every 100     # a budget a CPU can afford
    python scripts/experiment_ti.py --steps 300 --data.corpus wikitext-2   # dotted overrides apply to all

Each model trains in OUT/<preset> (default checkpoints/experiment_ti). A run directory that already holds
checkpoints is continued by the loop, not restarted: use a fresh --out for a new comparison. Every
preset's config is checked before the first one trains. The table is also written to OUT/results.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.cli.args import parse_known
from chimera_jax.cli.train import check_corpora
from chimera_jax.config import RunConfig, load_config, preset_path, replace

PRESETS = ("standard", "ti_mlp", "ti_ssm")


@dataclass
class ExperimentArgs:
    steps: int | None = None  # training steps for every model; None: the presets'
    eval_every: int | None = None  # evaluate and checkpoint every N steps; None: the presets' (at most steps)
    out: str = "checkpoints/experiment_ti"  # parent of the run directories
    presets: list[str] = field(default_factory=lambda: list(PRESETS))  # which presets to compare


def config(name: str, args: ExperimentArgs, overrides: list[str]) -> RunConfig:
    """One preset under the shared budget and overrides, in OUT/<preset>."""
    cfg = load_config(preset_path(name), [*overrides, "--train.run_dir", str(Path(args.out) / name)])
    steps = args.steps or cfg.train.steps
    every = min(args.eval_every or cfg.train.eval_every, steps)
    check_corpora(cfg.data)
    return replace(cfg, train=replace(cfg.train, steps=steps, eval_every=every, checkpoint_every=every))


def run(cfg: RunConfig) -> dict:
    """Train one preset; its summary plus ``val_curve`` ``{step: loss}``."""
    from chimera_jax.train.loop import format_summary, train
    from chimera_jax.train.metrics import read_metrics

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


def main(argv: Sequence[str]) -> list[dict]:
    args, overrides = parse_known(ExperimentArgs, argv)
    configs = [config(name, args, overrides) for name in args.presets]

    results = [run(cfg) for cfg in configs]
    first = results[0]
    print(f"\nvalidation loss: mean nats per token ({first['tokenizer']} tokenizer, {first['corpus']} validation, "
          f"the loop's first eval_batches x batch_size non-overlapping {first['seq_len']}-token windows); "
          "ms/step excludes the first, compiling, step\n")
    print(table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
