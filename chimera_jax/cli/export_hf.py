"""Export a trained run to a Hugging Face checkpoint folder (config, safetensors, tokenizer).

    chimera-export-hf --checkpoint RUN_DIR --out FOLDER [--step N] [--arch gpt2|llama]
    python scripts/export_hf.py --checkpoint checkpoints/dense --out hf/dense

The family is picked from the model config (GPT-2 for learned or sinusoidal positions with LayerNorm and
GELU, Llama for RoPE, RMSNorm and SwiGLU); models with no exact HF equivalent (MoE, SSM, time-indexed)
are refused with the reasons. The folder loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``, and ``chimera-eval-hf --hf FOLDER`` scores it in torch.
Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chimera_jax.flags import parse


@dataclass
class ExportArgs:
    checkpoint: str  # run directory (holds checkpoints/)
    out: str  # folder to write (created)
    step: int | None = None  # checkpoint step; None: the newest readable
    arch: Literal["gpt2", "llama"] | None = None  # HF family; None: from the model config


def main(argv: Sequence[str]) -> Path:
    args = parse(ExportArgs, argv)
    from chimera_jax.bridge.convert import export_run

    folder = export_run(args.checkpoint, args.out, step=args.step, arch=args.arch)
    print(f"exported {args.checkpoint} to {folder}: AutoModelForCausalLM.from_pretrained({str(folder)!r})")
    return folder
