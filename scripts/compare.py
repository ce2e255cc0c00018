"""``python scripts/compare.py ARGS`` = ``chimera-compare ARGS`` (usage: chimera_jax/cli/compare.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("compare")
