"""Fine-tune a trained run or an imported HF model: supervised fine-tuning (sft) or DPO on local JSONL records or
an HF dataset (a hub name, or a local folder or file that ``datasets.load_dataset`` reads).

    chimera-finetune --checkpoint RUN|MODEL --stage sft|dpo --data FILE.jsonl|DATASET [--out RUN2] [--a.b value ...]
    python scripts/finetune.py --checkpoint checkpoints/nano_gpt2 --stage sft --data alpaca.jsonl --train.steps 200
    python scripts/finetune.py --checkpoint smollm2 --stage sft --data alpaca.jsonl --data.seq_len 256

The run starts from RUN's newest checkpoint (its model weights; its tokenizer, model and other settings
unless overridden), or from an HF MODEL (hub name, folder with config.json and weights, .gguf file, smollm2)
imported with its own tokenizer, and writes RUN2 (default RUN-sft / RUN-dpo, checkpoints/MODEL-sft for a
model) like training does: metrics.jsonl, tb/, Orbax checkpoints; re-running the same command resumes it.
Dotted flags override any field of the run's config: --train.steps, --optim.lr, --train.batch-size,
--data.seq-len, --finetune.beta (DPO, default 0.1), --finetune.prompt-field / response-field / chosen-field /
rejected-field (defaults prompt, response, chosen, rejected), --finetune.val-fraction (held-out records,
default 0.1), --finetune.split (the dataset's split, default train), --finetune.subset (its configuration, as
ai2_arc's ARC-Easy, when it has several). The template, the masks and what is
logged: docs/finetune.md. A checkpoint that is neither a run nor an HF model, a bad value or a data source
without one usable record stops with one line before anything compiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from chimera_jax.config import ConfigError
from chimera_jax.flags import parse_known


@dataclass(kw_only=True)
class FinetuneArgs:
    checkpoint: str | None = None  # the trained run directory or HF model to start from
    stage: Literal["sft", "dpo"] | None = None
    data: str | None = None  # JSONL file, or HF dataset name, folder or file
    out: str | None = None  # the fine-tuning run's directory; None: CHECKPOINT-STAGE (checkpoints/MODEL-STAGE)


def format_summary(s: dict) -> str:
    val = "  ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in s.items() if k.startswith("val_") and v is not None)
    if s["start_step"] == s["steps"]:
        return (f"{s['name']} already complete at step {s['steps']} (train.steps={s['steps']}): nothing to do | "
                f"val {val or 'n/a'} | {s['run_dir']}")
    return f"done {s['name']}: {s['steps']} steps | {s['data']} | val {val or 'n/a'} | {s['run_dir']}"


def main(argv: Sequence[str]) -> dict:
    args, overrides = parse_known(FinetuneArgs, argv)
    for name in ("checkpoint", "stage", "data"):
        if getattr(args, name) is None:
            raise ConfigError(f"{name}: required (--checkpoint RUN|MODEL --stage sft|dpo --data FILE.jsonl)")
    from chimera_jax.finetune.stage import finetune, finetune_config  # JAX loads once the arguments are known good
    from chimera_jax.train.distributed import is_primary

    cfg = finetune_config(args.checkpoint, args.stage, args.data, args.out, overrides)
    summary = finetune(cfg)
    if is_primary():
        print(format_summary(summary))
    return summary
