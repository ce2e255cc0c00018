"""``python scripts/bench_moe.py ARGS`` = ``chimera-bench-moe ARGS`` (usage: chimera_jax/cli/bench_moe.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("bench_moe")
