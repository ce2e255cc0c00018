"""``python scripts/experiment_ti.py ARGS`` = ``chimera-experiment-ti ARGS`` (chimera_jax/cli/experiment_ti.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("experiment_ti")
