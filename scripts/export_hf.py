"""``python scripts/export_hf.py ARGS`` = ``chimera-export-hf ARGS`` (usage: chimera_jax/cli/export_hf.py)."""

from chimera_jax.cli.entry import launch

if __name__ == "__main__":
    launch("export_hf")
