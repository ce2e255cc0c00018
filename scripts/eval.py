"""``python scripts/eval.py ARGS`` = ``chimera-eval ARGS`` (usage: chimera_jax/cli/eval.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("eval")
