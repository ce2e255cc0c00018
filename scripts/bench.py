"""``python scripts/bench.py BENCH ARGS`` = ``chimera-bench BENCH ARGS`` (usage: chimera_jax/bench/__init__.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("bench")
