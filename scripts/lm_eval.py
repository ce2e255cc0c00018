"""``python scripts/lm_eval.py ARGS`` = ``chimera-lm-eval ARGS`` (usage: chimera_jax/cli/lm_eval.py)."""

import sys
from pathlib import Path

# Python puts this file's folder first on sys.path, and this file's name is the harness's: without this,
# ``import lm_eval`` would import this script instead of lm-evaluation-harness.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from chimera_jax.cli.entry import launch  # noqa: E402

if __name__ == "__main__":
    launch("lm_eval")
