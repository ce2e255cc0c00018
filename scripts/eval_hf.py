"""``python scripts/eval_hf.py ARGS`` = ``chimera-eval-hf ARGS`` (usage: chimera_jax/cli/eval_hf.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("eval_hf")
