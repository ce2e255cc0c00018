"""``python scripts/train.py ARGS`` = ``chimera-train ARGS`` (usage: chimera_jax/cli/train.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("train")
