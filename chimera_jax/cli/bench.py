"""Benchmarks; the first word says which (``chimera-bench NAME --help`` for its flags).

    chimera-bench inference [--quick] [--presets dense moe moe_e4 ti_ssm] [--json FILE] ...
        decoding: prefill and decode tokens/s, cached and recomputed, against transformers' generate()
        (chimera_jax/cli/bench_inference.py)
    chimera-bench train [--quick] [--presets standard ti_ssm ...] [--repeats N] [--steps N] [--json FILE] ...
        training: compile time, step time, tokens/s, memory, FLOPs and MFU, against GPT2LMHeadModel in torch
        (chimera_jax/cli/bench_train.py)
    chimera-bench scan [--batch 8 --seq-len 128 --d-inner 512 --state 16] [--chunks 4 8 16 32 64] [--json FILE]
        the selective scan alone, forward + backward, every way it runs (chimera_jax/cli/bench_scan.py)
    chimera-bench moe [--quick] [--skip-train] [--skip-layers] [--cpu-time] [--trace DIR] [--json FILE] ...
        the MoE dispatches, one layer forward + backward, and an MoE train step against dense
        (chimera_jax/cli/bench_moe.py)
    python scripts/bench.py train --quick --json /tmp/train.json   # the same, as a script
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from chimera_jax.config import ConfigError

BENCHES = ("inference", "train", "scan", "moe")  # bench NAME: the function NAME in chimera_jax/cli/bench_NAME.py


def bench_module(name: str) -> ModuleType:
    """Imported only when its bench runs: the MoE bench loads JAX on import, the others check their flags first."""
    return importlib.import_module(f"chimera_jax.cli.bench_{name}")


def usage(argv: Sequence[str]) -> str:
    """What ``--help`` prints (cli/entry.py): the named bench's own usage, or without one this overview."""
    return bench_module(argv[0]).__doc__ if argv and argv[0] in BENCHES else __doc__


def main(argv: Sequence[str]) -> dict:
    if argv and argv[0] in ("-h", "--help"):  # cli/entry.py printed the overview
        return {}
    if not argv or argv[0] not in BENCHES:
        got = repr(argv[0]) if argv else "none"
        raise ConfigError(f"which bench? The first argument is one of: {', '.join(BENCHES)} (got {got}; "
                          "chimera-bench --help says what each measures)")
    return getattr(bench_module(argv[0]), argv[0])(argv[1:])
