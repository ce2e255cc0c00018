"""Perplexity and bits per byte of a model over a token stream, under an explicit window protocol."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from chimera_jax.eval.windows import num_batches, window_batches
from chimera_jax.train.step import token_nll


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 length of every token id: bytes scored = sum over scored targets (bits/byte's denominator).

    GPT-2's ``<|endoftext|>`` separators between documents count as their 13 characters.
    """
    if tokenizer.name == "byte":
        return np.ones(256, np.int64)
    encoding = tokenizer.encoding
    return np.array([len(encoding.decode_single_token_bytes(i)) for i in range(encoding.n_vocab)], np.int64)


NORMALISATION = "mean nats per scored target token; bits/byte = total nats / ln2 / UTF-8 bytes of scored tokens"


def summarize(total_nll: float, n_tokens: int, n_bytes: int | None, protocol: dict) -> dict:
    """The one place a loss sum becomes reported figures (the bridge uses it too)."""
    loss = total_nll / n_tokens
    return {
        "tokens_scored": int(n_tokens),
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nll / math.log(2) / n_bytes if n_bytes else None,
        "bytes_scored": int(n_bytes) if n_bytes else None,
        "protocol": protocol,
    }


@eqx.filter_jit
def _batch_nll(model, inputs, targets, weights):
    logits, _ = model(inputs, inference=True)
    return jnp.sum(token_nll(logits, targets) * weights)


def evaluate_with(batch_nll: Callable[[np.ndarray, np.ndarray, np.ndarray], float], tokens: np.ndarray, *,
                  seq_len: int, stride: int | None = None, batch_size: int = 8, token_bytes: np.ndarray | None = None,
                  max_windows: int | None = None, progress: bool = False, tokenizer: str = "?") -> dict:
    """The evaluation loop for any framework: ``batch_nll(inputs, targets, weights)`` returns the
    weighted sum of per-token nats of one [batch, seq_len] batch (JAX here, PyTorch in the bridge)."""
    stride = stride or seq_len
    total, count, n_bytes = 0.0, 0, 0
    batches = window_batches(tokens, seq_len, stride, batch_size, max_windows)
    n = num_batches(len(tokens), seq_len, stride, batch_size, max_windows)
    for inputs, targets, weights in tqdm(batches, total=n, disable=not progress, desc="eval", leave=False):
        total += float(batch_nll(inputs, targets, weights))
        count += int(weights.sum())
        if token_bytes is not None:
            n_bytes += int((token_bytes[targets] * weights).sum())
    protocol = {"tokenizer": tokenizer, "seq_len": seq_len, "stride": stride, "max_windows": max_windows,
                "normalisation": NORMALISATION}
    return summarize(total, count, n_bytes or None, protocol)


def evaluate(model, tokens: np.ndarray, **protocol) -> dict:
    """Mean loss of a chimera model over every target the windows score (see ``evaluate_with``);
    ``token_bytes[id]`` (UTF-8 length) gives bits/byte."""
    return evaluate_with(lambda x, y, w: _batch_nll(model, x, y, w), tokens, **protocol)
