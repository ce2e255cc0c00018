"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


@dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 is greedy (argmax); otherwise softmax(logits / temperature) restricted to the
    ``top_k`` most likely tokens (None: all) and then to the smallest set holding ``top_p`` of the mass."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def restrict(logits: Float[Array, "B V"], top_k: int | None, top_p: float) -> Float[Array, "B V"]:
    """``logits`` with every token outside the top-k and the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        mass_before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1) - jax.nn.softmax(ordered, axis=-1)
        # the smallest logit still kept: the last whose preceding mass is below top_p (the first always is)
        cutoff = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def next_tokens(logits: Float[Array, "B V"], key: PRNGKeyArray, sampling: Sampling) -> Int[Array, " B"]:
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = restrict(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
