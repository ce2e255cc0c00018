"""``chimera-bench NAME ARGS``: ``chimera_jax.bench.NAME.main(ARGS)``; the overview is chimera_jax/bench/__init__.py."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from chimera_jax import bench
from chimera_jax.bench import BENCHES
from chimera_jax.config import ConfigError


def bench_module(name: str) -> ModuleType:
    """Imported only when its bench runs: the MoE bench loads JAX on import, the others check their flags first."""
    return importlib.import_module(f"chimera_jax.bench.{name}")


def usage(argv: Sequence[str]) -> str:
    """What ``--help`` prints (cli/entry.py): the named bench's own usage, or without one the overview."""
    return bench_module(argv[0]).__doc__ if argv and argv[0] in BENCHES else bench.__doc__


def main(argv: Sequence[str]) -> dict:
    if argv and argv[0] in ("-h", "--help"):  # cli/entry.py printed the overview
        return {}
    if not argv or argv[0] not in BENCHES:
        got = repr(argv[0]) if argv else "none"
        raise ConfigError(f"which bench? The first argument is one of: {', '.join(BENCHES)} (got {got}; "
                          "chimera-bench --help says what each measures)")
    return bench_module(argv[0]).main(argv[1:])
