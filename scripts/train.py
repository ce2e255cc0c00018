"""Train a model: ``python scripts/train.py --model NAME [--config FILE] [--train.steps 200 ...]``.

``--model NAME`` loads configs/NAME.yaml; dotted flags override any field. Re-running the same run
directory (``--resume`` says so explicitly) continues from its newest checkpoint.
"""

from __future__ import annotations

from chimera_jax.malloc import reexec_with_tuned_malloc

if __name__ == "__main__":
    reexec_with_tuned_malloc()  # glibc reads its settings at start-up, so before anything else: see the module

import logging
import sys

from chimera_jax.config import parse_args
from chimera_jax.train.loop import format_summary, train


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, _ = parse_args(argv)  # --resume is accepted: resuming is the default when checkpoints exist
    print(format_summary(train(cfg)))


if __name__ == "__main__":
    main(sys.argv[1:])
