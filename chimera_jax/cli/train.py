"""Train a model.

    chimera-train --model NAME [--config FILE] [--resume] [--train.steps 200 --optim.lr 3e-4 ...]
    python scripts/train.py --model ti_ssm

``--model NAME`` loads configs/NAME.yaml, ``--config FILE`` any file; dotted flags override any field
(``--train.batch-size`` is ``--train.batch_size``). Re-running the same run directory continues from its
newest checkpoint (``--resume`` says so explicitly, and stops if there is none: a mistyped directory); a run
already complete says so. Ctrl-C (or SIGTERM) saves the last completed step and exits 130 (143): the same
command resumes from it. A bad value, combination or corpus name stops with one line (exit status 2) before any
data is read or JAX is loaded; an empty ``text:`` file, or a split shorter than ``--data.seq_len`` + 1 tokens, with
one line before anything compiles. A step whose loss is not finite (training diverged) stops the run with one line
and exit status 3, after saving the last good state.

Every device is used: ``--mesh.data/fsdp/expert`` say how they split the work. Several processes (hosts)
run the same command with their own id, and only process 0 prints and writes the metrics
(docs/distributed.md):

    chimera-train --model dwr_moe --mesh.fsdp 8 --distributed.coordinator HOST:PORT \
        --distributed.num_processes 2 --distributed.process_id 0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chimera_jax import data
from chimera_jax.config import ConfigError, parse_args
from chimera_jax.flags import normalise


def check_resumable(run_dir: Path) -> None:
    """``--resume`` of a directory without a checkpoint (mistyped, or killed before its first) is an error, not
    a new run: Orbax names each saved step's folder by its number."""
    folder = run_dir / "checkpoints"
    if not (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
        raise ConfigError(f"--resume: no checkpoint in {folder} to resume from (train.run_dir); without --resume "
                          "a new run starts there")


def main(argv: Sequence[str]) -> dict:
    cfg, extra = parse_args([normalise(arg) for arg in argv])
    if "--resume" in extra:  # resuming is the default anyway: the flag asks for a checkpoint to be there
        check_resumable(cfg.run_dir)
    data.check_corpora(cfg.data)
    from chimera_jax.train.distributed import is_primary  # JAX loads only once the config is known good
    from chimera_jax.train.loop import format_summary, train

    summary = train(cfg)
    if is_primary():
        print(format_summary(summary))
    return summary
