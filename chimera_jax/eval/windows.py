"""Evaluation windows over a token stream, shared by the JAX evaluation and the PyTorch bridge.

Target positions are 1..N-1 (token 0 is never predicted). A window starting at ``begin`` feeds
``tokens[begin : begin + L]`` and predicts ``tokens[begin + 1 : begin + L + 1]``. With stride == L the
windows do not overlap. With stride < L each window after the first scores only
the targets no earlier window scored, so every target is scored exactly once, with up to L-1 tokens of
context. The last window may be short: it is padded to L with zero weights, so shapes stay fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    begin: int  # first input token
    length: int  # valid inputs (== targets) in this window, <= seq_len
    n_score: int  # the last n_score targets are scored


def make_windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {n_tokens}")
    windows, scored_until = [], 0  # targets with index <= scored_until are done
    for begin in range(0, n_tokens - 1, stride):
        length = min(seq_len, n_tokens - 1 - begin)
        end = begin + length  # index of the last target
        windows.append(Window(begin, length, end - scored_until))
        scored_until = end
        if end == n_tokens - 1:
            break
    return windows


def window_batches(tokens: np.ndarray, seq_len: int, stride: int, batch_size: int,
                   max_windows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(inputs, targets, weights)`` of shape [batch_size, seq_len]; padding has weight 0."""
    windows = make_windows(len(tokens), seq_len, stride)[:max_windows]
    for i in range(0, len(windows), batch_size):
        inputs = np.zeros((batch_size, seq_len), np.int32)
        targets = np.zeros((batch_size, seq_len), np.int32)
        weights = np.zeros((batch_size, seq_len), np.float32)
        for row, w in enumerate(windows[i:i + batch_size]):
            inputs[row, :w.length] = tokens[w.begin:w.begin + w.length]
            targets[row, :w.length] = tokens[w.begin + 1:w.begin + w.length + 1]
            weights[row, w.length - w.n_score:w.length] = 1.0
        yield inputs, targets, weights


def num_batches(n_tokens: int, seq_len: int, stride: int, batch_size: int, max_windows: int | None = None) -> int:
    n = len(make_windows(n_tokens, seq_len, stride)[:max_windows])
    return -(-n // batch_size)
