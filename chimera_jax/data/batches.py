"""Deterministic, fixed-shape training batches drawn from a token array."""

from __future__ import annotations

import numpy as np

from chimera_jax.config import ConfigError


def check_split_length(tokens: np.ndarray, seq_len: int, name: str) -> None:
    """Fail before training, with one line (a ``ConfigError``), when a split cannot fill even one window of
    seq_len + 1 tokens."""
    have = len(tokens)
    if have < seq_len + 1:
        fix = f"lower data.seq_len to at most {have - 1} or use a larger corpus" if have > 1 else "use a larger corpus"
        raise ConfigError(f"data.seq_len={seq_len}: {name} has {have} tokens, fewer than seq_len + 1 = {seq_len + 1} "
                          f"needed for one training window; {fix}")


def get_batch(
    tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, name: str = "tokens",
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of a run seeded ``seed``: (inputs, targets), int32 [batch_size, seq_len].

    Windows of seq_len + 1 tokens start at positions drawn from ``default_rng([seed, step])``, so a
    batch is a pure function of (seed, step): a resumed run sees exactly the batches it would have.
    Targets are the inputs shifted left by one. ``rows`` reads only those rows of the batch (a process's share).
    """
    check_split_length(tokens, seq_len, name)
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)[slice(None) if rows is None else rows]
    windows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return windows[:, :-1], windows[:, 1:]
