"""What several commands share on top of the one argument style (chimera_jax/flags.py): the evaluation protocol's
flags and the checks that a folder is a training run and that a run can run at another depth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from chimera_jax.config import ConfigError, from_yaml
from chimera_jax.eval.protocol import EvalProtocol

PROTOCOL_ALIASES = {"data": "corpus"}  # the protocol's corpus, as eval, eval_hf and compare have always spelt it


@dataclass(kw_only=True)
class BaselineProtocol(EvalProtocol):
    """The protocol for commands that score HF models too, which have no training corpus or length of their
    own to default to: WikiText-2's test split in non-overlapping 512-token windows."""

    corpus: str | None = "wikitext-2"  # corpus name (also --data NAME)
    split: str = "test"  # train, validation or test
    seq_len: int | None = 512  # window length
    repeats: int = 3  # timed forward passes for tokens/s (0: skip)
    device: str | None = None  # torch device; None: cuda when available
    json: str | None = None  # also write the results to this JSON file


def protocol_of(args: EvalProtocol) -> EvalProtocol:
    """The protocol fields of a command's arguments, as the plain protocol evaluation takes."""
    return EvalProtocol(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalProtocol)})


def check_run_dir(path: str | Path, field: str) -> None:
    """A one-line error, before JAX loads, for a ``field`` naming a folder that is not a training run."""
    if not (Path(path) / "checkpoints").is_dir():
        raise ConfigError(f"{field}: {path} is not a run directory (no checkpoints/ in it)")


def check_depth(run_dir: str | Path, depth: int | None) -> None:
    """A one-line error, before JAX loads, for a ``--depth`` the run cannot take (from its config.yaml)."""
    if depth is None:
        return
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    config = Path(run_dir) / "config.yaml"
    if config.is_file() and not from_yaml(config.read_text()).model.time.enabled:
        raise ConfigError(f"depth: {run_dir} is not time-indexed (model.time.enabled=false): only a shared block "
                          "runs at another depth")
