"""Evaluating a run directory's checkpoint: the protocol resolved from the run's own config, then ``evaluate``.

``load_run`` is separate from ``evaluate_loaded`` so that callers needing the model too (the comparison
table times it, the bridge exports it) load the checkpoint and its stream once, the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import equinox as eqx

from chimera_jax import data
from chimera_jax.config import RunConfig
from chimera_jax.eval.perplexity import evaluate_model
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.train.checkpoint import load_model, load_run_config


@dataclass(frozen=True)
class LoadedRun:
    """A run's model ready to evaluate, with the protocol resolved for it and the stream that protocol reads."""

    run_dir: str
    step: int | None  # None: the newest readable checkpoint
    depth: int | None  # time-indexed models: the depth it runs at (None: trained depth)
    model: eqx.Module
    config: RunConfig
    protocol: EvalProtocol
    stream: data.TokenStream


def load_run(run_dir: str | Path, protocol: EvalProtocol, *, step: int | None = None,
             depth: int | None = None) -> LoadedRun:
    """Resolve ``protocol`` for the run (a bad setting fails before the checkpoint or any data is read),
    then load the model and the token stream, tokenized by the run's own tokenizer."""
    cfg = load_run_config(run_dir, step)
    protocol = protocol.resolved_for(cfg)
    model, cfg = load_model(run_dir, step)
    if depth is not None:
        from chimera_jax.models.time_indexed import with_depth

        model = with_depth(model, depth)
    stream = data.load_stream(protocol.data_config(cfg.data), protocol.split)
    return LoadedRun(str(run_dir), step, depth, model, cfg, protocol, stream)


def evaluate_loaded(run: LoadedRun, progress: bool = False) -> dict:
    """The evaluation figures of a loaded run, with where they come from."""
    result = evaluate_model(run.model, run.stream, run.protocol, progress)
    return {**result, "checkpoint": run.run_dir, "step": run.step, "corpus": run.protocol.corpus,
            "split": run.protocol.split, "depth": run.depth}


def evaluate_checkpoint(run_dir: str | Path, protocol: EvalProtocol, *, step: int | None = None,
                        depth: int | None = None, progress: bool = False) -> dict:
    """A run directory's checkpoint (newest, or ``step``) scored in JAX under ``protocol``; unset protocol
    fields are the run's own (its corpus, tokenizer and seq_len)."""
    return evaluate_loaded(load_run(run_dir, protocol, step=step, depth=depth), progress)
