"""Attention's incremental decoding state: a key/value cache in StreamingLLM's layout.

The cache has ``sinks`` slots that keep the first tokens of a sequence for good and ``window`` slots
that keep the most recent ones as a ring buffer. A full cache (no sinks, a window as long as the longest
sequence) keeps every token; a rolling one (Xiao et al. 2023, "attention sinks") runs past the training
context in constant memory. Every slot records the position of the token it holds (-1: empty), so
visibility is decided by positions alone: a query at ``q`` sees the key at ``p`` when

    0 <= p <= q  and  (p < sinks  or  p > q - window)

which is also the rule for the keys of the chunk being added, so a chunk of several tokens (a prompt)
attends exactly as one token at a time would.

Rotary positions are StreamingLLM's "positions within the cache": keys are stored rotated at their own
position, so a window key sits at its true distance from the query, and a sink key at its distance from a
query placed at most at the cache's last slot (``Attention.extend`` rotates the query twice for that).
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


@dataclass(frozen=True)
class CacheLayout:
    """How many slots keep the first tokens (``sinks``) and how many the latest (``window``)."""

    window: int
    sinks: int = 0

    def __post_init__(self):
        if self.window < 1 or self.sinks < 0:
            raise ValueError(f"a KV cache needs window >= 1 and sinks >= 0, got window={self.window}, "
                             f"sinks={self.sinks}")

    @property
    def size(self) -> int:
        return self.sinks + self.window

    @property
    def last_slot(self) -> int:
        """The farthest position a sink key is seen from (StreamingLLM's query position in a full cache)."""
        return self.size - 1

    def slots(self, positions: Int[Array, "B C"]) -> Int[Array, "B C"]:
        """The slot each position is written to: its own while a sink, else its place in the ring."""
        ring = self.sinks + (positions - self.sinks) % self.window
        return jnp.where(positions < self.sinks, positions, ring)

    def visible(self, queries: Int[Array, "B Tq"], keys: Int[Array, "B Tk"]) -> Bool[Array, "B Tq Tk"]:
        """Which keys each query attends to (the rule in the module docstring); -1 marks no token."""
        q, k = queries[:, :, None], keys[:, None, :]
        return (k >= 0) & (q >= 0) & (k <= q) & ((k < self.sinks) | (k > q - self.window))


class KVCache(eqx.Module):
    """Keys (rotated, when the model uses RoPE) and values of one attention layer, with their positions.

    Laid out as XLA:CPU's dot wants its operands, so neither contraction of a decoding step copies the
    cache first: keys as ``[B, G, S, hd]``, values as ``[B, G, hd, S]``. One slot
    past the layout's takes the writes of padding tokens, so every write is in bounds (no masked
    scatter, which would copy the cache); its position stays -1, so no query ever sees it.
    """

    k: Float[Array, "B G S1 hd"]
    v: Float[Array, "B G hd S1"]
    positions: Int[Array, "B S1"]
    layout: CacheLayout = eqx.field(static=True)

    @classmethod
    def empty(cls, batch: int, layout: CacheLayout, n_kv_heads: int, head_dim: int, dtype) -> KVCache:
        slots = layout.size + 1
        return cls(jnp.zeros((batch, n_kv_heads, slots, head_dim), dtype),
                   jnp.zeros((batch, n_kv_heads, head_dim, slots), dtype),
                   jnp.full((batch, slots), -1, jnp.int32), layout)

    def write(self, k: Float[Array, "B C G hd"], v: Float[Array, "B C G hd"], positions: Int[Array, "B C"]) -> KVCache:
        """The cache after a chunk: tokens at ``positions`` (-1: padding, not kept) enter their slots.

        Only the chunk's last ``window`` non-sink tokens are kept, so no two of them share a slot and
        padding never evicts a key that later queries still see.
        """
        layout = self.layout
        latest = positions.max(axis=1, keepdims=True)
        kept = (positions >= 0) & ((positions < layout.sinks) | (positions > latest - layout.window))
        slots = jnp.where(kept, layout.slots(positions), layout.size)  # the spare slot
        rows = jnp.arange(positions.shape[0])[:, None]
        # [rows, :, slots] and [rows, :, :, slots] both index [B, C, G, hd]: the chunk's own layout
        return KVCache(self.k.at[rows, :, slots].set(k.astype(self.k.dtype), mode="promise_in_bounds"),
                       self.v.at[rows, :, :, slots].set(v.astype(self.v.dtype), mode="promise_in_bounds"),
                       self.positions.at[rows, slots].set(jnp.where(kept, positions, -1), mode="promise_in_bounds"),
                       layout)

    def chunk_block(self, k: Float[Array, "B C G hd"],
                    v: Float[Array, "B C G hd"]) -> tuple[Float[Array, "B G C hd"], Float[Array, "B G hd C"]]:
        """A chunk's own keys and values in the cache's layout (attended beside the cache, not copied into it)."""
        return k.swapaxes(1, 2).astype(self.k.dtype), v.transpose(0, 2, 3, 1).astype(self.v.dtype)
