"""Benchmarks; the first word says which (``chimera-bench NAME --help`` for its flags).

    chimera-bench inference [--quick] [--presets dense moe ti_ssm] [--json FILE] ...
        decoding: prefill and decode tokens/s, cached and recomputed, against transformers' generate()
        (chimera_jax/cli/bench_inference.py)
    chimera-bench train [--quick] [--presets standard ti_ssm ...] [--repeats N] [--steps N] [--json FILE] ...
        training: compile time, step time, tokens/s, memory, FLOPs and MFU, against GPT2LMHeadModel in torch
        (chimera_jax/cli/bench_train.py)
    chimera-bench scan [--batch 8 --seq-len 128 --d-inner 512 --state 16] [--chunks 4 8 16 32 64] [--json FILE]
        the selective scan alone, forward + backward, every way it runs (chimera_jax/cli/bench_scan.py)
    python scripts/bench.py train --quick --json /tmp/train.json   # the same, as a script
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from chimera_jax.cli.bench_inference import inference
from chimera_jax.cli.bench_scan import scan
from chimera_jax.cli.bench_train import train
from chimera_jax.config import ConfigError

BENCHES = {"inference": inference, "train": train, "scan": scan}  # the first word of the command line picks one


def main(argv: Sequence[str]) -> dict:
    if not argv or argv[0] in ("-h", "--help"):  # each bench's own flags: chimera-bench NAME --help
        print(__doc__)
        return {}
    if argv[0] not in BENCHES:
        raise ConfigError(f"which bench? The first argument is one of: {', '.join(BENCHES)} (got {' '.join(argv)!r})")
    bench = BENCHES[argv[0]]
    if "--help" in argv or "-h" in argv:  # the bench's own usage, above the flags its parser lists
        print(sys.modules[bench.__module__].__doc__)
    return bench(argv[1:])
