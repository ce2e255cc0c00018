"""Export a trained run to a Hugging Face checkpoint folder (config, safetensors, tokenizer).

    python scripts/export_hf.py --checkpoint checkpoints/dense --out hf/dense [--step 1000] [--arch gpt2|llama]

The family is picked from the model config (GPT-2 for learned or sinusoidal positions with LayerNorm and
GELU, Llama for RoPE, RMSNorm and SwiGLU); models with no exact HF equivalent (MoE, SSM, time-indexed)
are refused with the reasons. The folder loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``, and ``scripts/eval_hf.py --model FOLDER`` scores it in torch.
Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chimera_jax.bridge.convert import LAYOUTS, export_run


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    p.add_argument("--arch", choices=sorted(LAYOUTS), default=None, help="HF family (default: from the config)")
    args = p.parse_args(argv)
    folder = export_run(args.checkpoint, args.out, step=args.step, arch=args.arch)
    print(f"exported {args.checkpoint} to {folder}: AutoModelForCausalLM.from_pretrained({str(folder)!r})")
    return folder


if __name__ == "__main__":
    main(sys.argv[1:])
