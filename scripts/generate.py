"""``python scripts/generate.py ARGS`` = ``chimera-generate ARGS`` (usage: chimera_jax/cli/generate.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("generate")
