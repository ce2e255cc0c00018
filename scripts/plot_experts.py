"""``python scripts/plot_experts.py ARGS`` = ``chimera-plot-experts ARGS`` (usage: chimera_jax/cli/plot_experts.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("plot_experts")
