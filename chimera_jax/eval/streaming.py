"""Scoring a window through the decoding state, chunk by chunk: evaluation past the training context.

``EvalProtocol.window`` asks for attention through a rolling KV cache (``CacheLayout(window, sinks)``,
StreamingLLM's layout) instead of over the whole window: each protocol window of N tokens runs through
``Decoder.extend`` a chunk at a time, one ``lax.scan`` carrying the state, so memory is that of the cache
and one chunk whatever N is. The SSM's state ignores the layout: it is already constant in size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from chimera_jax.models.kv_cache import CacheLayout
from chimera_jax.models.loss import token_nll

MAX_CHUNK = 128  # tokens per extend call: the attention of one chunk is chunk x (cache + chunk)

Readout = Callable[[Float[Array, "B C V"], Any], Any]  # (a chunk's logits, its slice of `per_token`) -> per token


def default_chunk(layout: CacheLayout) -> int:
    return min(layout.window, MAX_CHUNK)


def _logits(logits: Float[Array, "B C V"], _: Any) -> Float[Array, "B C V"]:
    return logits


@eqx.filter_jit
def stream(model: eqx.Module, tokens: Int[Array, "B N"], layout: CacheLayout, chunk: int,
           readout: Readout = _logits, per_token: Any = None) -> tuple[Any, Any]:
    """``readout`` of every token's logits, computed ``chunk`` tokens at a time through ``model.extend``
    from an empty state in ``layout``, and the final state.

    ``per_token`` (arrays [B, N, ...], e.g. targets) is handed to ``readout`` chunk by chunk with the
    logits; outputs come back as [B, N, ...]. N need not divide by ``chunk``: the tail is padded with
    position -1, which the state never takes in.
    """
    B, N = tokens.shape
    n_chunks = -(-N // chunk)
    pad = n_chunks * chunk - N

    def chunked(a: Array) -> Array:  # [B, N, ...] -> [n_chunks, B, chunk, ...]
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(B, n_chunks, chunk, *a.shape[2:]), 1, 0)

    positions = jnp.broadcast_to(jnp.where(jnp.arange(N + pad) < N, jnp.arange(N + pad), -1), (B, N + pad))
    xs = (chunked(tokens), jnp.moveaxis(positions.reshape(B, n_chunks, chunk), 1, 0),
          jax.tree_util.tree_map(chunked, per_token))

    def body(state, x):
        chunk_tokens, chunk_positions, chunk_extra = x
        logits, state = model.extend(chunk_tokens, state, chunk_positions)
        return state, readout(logits, chunk_extra)

    def unchunked(a: Array) -> Array:  # [n_chunks, B, chunk, ...] -> [B, N, ...]
        return jnp.moveaxis(a, 0, 1).reshape(B, n_chunks * chunk, *a.shape[3:])[:, :N]

    state, out = jax.lax.scan(body, model.init_state(B, layout), xs)
    return jax.tree_util.tree_map(unchunked, out), state


def _weighted_nll(logits: Float[Array, "B C V"], targets_weights: tuple[Array, Array]) -> Float[Array, "B C"]:
    targets, weights = targets_weights
    return token_nll(logits, targets) * weights


def streaming_nll(model: eqx.Module, layout: CacheLayout,
                  chunk: int | None = None) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    """A ``BatchNLL`` for ``evaluate``: the weighted nats of a window batch scored through the rolling cache."""
    chunk = chunk or default_chunk(layout)

    def batch_nll(inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
        nll, _ = stream(model, inputs, layout, chunk, _weighted_nll, (targets, weights))
        return float(nll.sum())

    return batch_nll
