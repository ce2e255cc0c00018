"""``python scripts/experiment.py ARGS`` = ``chimera-experiment ARGS`` (usage: chimera_jax/cli/experiment.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("experiment")
