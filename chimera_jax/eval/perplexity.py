"""Perplexity and bits per byte of a model over a token stream: the one evaluation loop of the project.

The loop is framework-agnostic: a ``batch_nll(inputs, targets, weights)`` callable computes the weighted
nats of one window batch (JAX here, PyTorch in the bridge), and everything else (the windows, the
tokens and bytes counted, the summary) is this code, so two frameworks scoring one stream differ only
in their logits. Bytes come from the stream (``TokenStream.token_bytes``): what each scored target
stands for in the text, a document separator counting as the separator text it replaces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.eval.streaming import streaming_nll
from chimera_jax.eval.windows import num_batches, window_batches
from chimera_jax.models.kv_cache import CacheLayout
from chimera_jax.models.loss import token_nll

if TYPE_CHECKING:
    from chimera_jax.data import TokenStream

BatchNLL = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (inputs, targets, weights) -> summed nats


def evaluate(batch_nll: BatchNLL, stream: TokenStream, protocol: EvalProtocol, progress: bool = False) -> dict:
    """Score every target the protocol's windows over ``stream`` score; ``protocol`` must be resolved.

    Returns ``tokens_scored``, ``bytes_scored``, ``loss`` (mean nats per scored token), ``perplexity``,
    ``bits_per_byte`` and ``protocol`` (its settings, with the normalisation in words).
    """
    if not protocol.is_resolved:
        raise ValueError("resolve the protocol for the model first (EvalProtocol.resolved_for / resolved)")
    p = protocol
    total, n_tokens, n_bytes = 0.0, 0, 0
    batches = window_batches(stream.tokens, p.seq_len, p.stride, p.batch_size, p.max_windows)
    n = num_batches(len(stream.tokens), p.seq_len, p.stride, p.batch_size, p.max_windows)
    for inputs, targets, weights in tqdm(batches, total=n, disable=not progress, desc="eval", leave=False):
        total += float(batch_nll(inputs, targets, weights))
        n_tokens += int(weights.sum())
        n_bytes += int((stream.token_bytes[targets] * weights).sum())
    loss = total / n_tokens
    return {"tokens_scored": n_tokens, "bytes_scored": n_bytes, "loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": total / math.log(2) / n_bytes, "protocol": p.as_dict()}


@eqx.filter_jit
def model_batch_nll(model, inputs, targets, weights):
    logits, _ = model(inputs, inference=True)
    return jnp.sum(token_nll(logits, targets) * weights)


def evaluate_model(model: eqx.Module, stream: TokenStream, protocol: EvalProtocol, progress: bool = False) -> dict:
    """``evaluate`` for one of our models, in JAX: one forward pass per window batch, or, when the protocol
    sets a ``window``, decoding through a rolling KV cache (eval/streaming.py)."""
    if protocol.window is None:
        batch_nll = functools.partial(model_batch_nll, model)
    else:
        batch_nll = streaming_nll(model, CacheLayout(protocol.window, protocol.sink_tokens))
    return evaluate(batch_nll, stream, protocol, progress)
