"""``python scripts/finetune.py ARGS`` = ``chimera-finetune ARGS`` (usage: chimera_jax/cli/finetune.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("finetune")
