"""Causal self-attention with grouped-query heads, rotary positions, a key-padding mask, optional learned
sink logits, and incremental decoding through a KV cache (kv_cache.py).

Two cores compute the same softmax attention: ``jax.nn.dot_product_attention`` (the fused XLA / cuDNN
kernel, used whenever attention dropout and sink logits are off) and ``masked_attention``, written with
Haliax named axes so every contraction says what it sums. The named core is what the fused one is tested
against; it also serves what the fused core has no place for: attention dropout, sink logits, and the
arbitrary query/key visibility of a cache.

Sink logits (as in gpt-oss): one learned logit per head joins every query's logits in the softmax and is
dropped after it, so a head can put weight on "nothing" instead of on some token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from chimera_jax.models.kv_cache import CacheLayout, KVCache
from chimera_jax.models.layers import INIT_STD, Linear, dropout


def rope_tables(positions: Int[Array, "*b T"], head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos / sin tables [*b, T, head_dim/2] for rotary embeddings (the rotate-half / HF Llama layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Float[Array, "... T H hd"], cos: Array, sin: Array) -> Float[Array, "... T H hd"]:
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[..., None, :], sin[..., None, :]  # one table per position, shared by the heads
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


KVBlock = tuple[Float[Array, "B G _ hd"], Float[Array, "B G hd _"]]  # keys and values, the KV cache's layout


def masked_attention(q: Float[Array, "B Tq H hd"], blocks: Sequence[KVBlock], allowed: Bool[Array, "B Tq Tk"],
                     sink_logits: Float[Array, " H"] | None = None, *,
                     q_for_sinks: Float[Array, "B Tq H hd"] | None = None, sink_keys: Bool[Array, "B Tk"] | None = None,
                     dropout_rate: float = 0.0, key: PRNGKeyArray | None = None,
                     inference: bool = True) -> Float[Array, "B Tq H hd"]:
    """Softmax attention over named axes where query i sees key j iff ``allowed[b, i, j]``.

    The keys come in blocks (a KV cache, then the chunk being added), scored block by block and
    normalised together, so no block is copied into a concatenation of them. The H query heads are
    grouped over the G key/value heads (grouped-query attention; G == H is ordinary multi-head
    attention); keys and values are in the KV cache's layout (kv_cache.py). Scores and softmax are in
    f32. ``q_for_sinks`` (the queries rotated to another position) scores the keys marked ``sink_keys``
    instead of ``q``: the rolling cache's re-positioned sinks. Dropout acts on the attention probabilities.
    """
    B, Tq, H, hd = q.shape
    G = blocks[0][0].shape[1]
    Batch, Pos, KvHead, QPerKv, HeadDim = (hax.Axis("batch", B), hax.Axis("position", Tq), hax.Axis("kv_head", G),
                                           hax.Axis("q_per_kv", H // G), hax.Axis("head_dim", hd))

    def key_pos(n: int) -> hax.Axis:
        return hax.Axis("key_position", n)

    def scores_of(queries: Array) -> hax.NamedArray:
        named = hax.named(queries.reshape(B, Tq, G, H // G, hd), (Batch, Pos, KvHead, QPerKv, HeadDim))
        return hax.concatenate("key_position", [
            hax.dot(named, hax.named(k, (Batch, KvHead, key_pos(k.shape[2]), HeadDim)), axis=HeadDim,
                    preferred_element_type=jnp.float32) for k, _ in blocks]) / math.sqrt(hd)

    scores = scores_of(q)
    KeyPos = scores.resolve_axis("key_position")
    if q_for_sinks is not None:
        scores = hax.where(hax.named(sink_keys, (Batch, KeyPos)), scores_of(q_for_sinks), scores)
    scores = hax.where(hax.named(allowed, (Batch, Pos, KeyPos)), scores, jnp.finfo(jnp.float32).min)
    if sink_logits is None:
        probs = hax.nn.softmax(scores, axis=KeyPos)
    else:  # the sink joins the normalisation and takes no value
        sink = hax.named(sink_logits.astype(jnp.float32).reshape(G, H // G), (KvHead, QPerKv))
        top = hax.maximum(hax.max(scores, axis=KeyPos), sink)
        weights = hax.exp(scores - top)
        probs = weights / (hax.sum(weights, axis=KeyPos) + hax.exp(sink - top))
    dtype = blocks[0][1].dtype
    probs = hax.named(dropout(probs.astype(dtype).array, dropout_rate, key, inference), probs.axes)
    out, start = None, 0
    for _, v in blocks:
        n = v.shape[-1]
        part = hax.dot(probs["key_position", start:start + n], hax.named(v, (Batch, KvHead, HeadDim, key_pos(n))),
                       axis="key_position")
        out, start = part if out is None else out + part, start + n
    return out.rearrange((Batch, Pos, KvHead, QPerKv, HeadDim)).array.reshape(B, Tq, H, hd)


def causal_mask(key_mask: Bool[Array, "B T"] | None, length: int) -> Bool[Array, "b T T"]:
    """Query i sees keys 0..i that are not padding (batch axis of 1 without a key mask)."""
    allowed = jnp.tril(jnp.ones((length, length), bool))[None]
    return allowed if key_mask is None else allowed & key_mask[:, None, :]


def reference_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                        key_mask: Bool[Array, "B T"] | None, dropout_rate: float = 0.0,
                        key: PRNGKeyArray | None = None, inference: bool = True,
                        sink_logits: Float[Array, " H"] | None = None) -> Float[Array, "B T H hd"]:
    """Causal ``masked_attention`` over one sequence, keys masked by ``key_mask`` (False: padding)."""
    B, T = q.shape[:2]
    allowed = jnp.broadcast_to(causal_mask(key_mask, T), (B, T, T))
    return masked_attention(q, [(k.swapaxes(1, 2), v.transpose(0, 2, 3, 1))], allowed, sink_logits,
                            dropout_rate=dropout_rate, key=key, inference=inference)


# Query rows per block of the CPU's block-causal attention (``block_causal_attention``).
CAUSAL_BLOCK = 128


def block_causal_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                           key_mask: Bool[Array, "B T"] | None, block: int) -> Float[Array, "B T H hd"]:
    """Causal ``jax.nn.dot_product_attention`` run as blocks of ``block`` queries, each scoring only the keys
    up to its last query: the score blocks above the diagonal, half of them for long sequences, are never
    computed, and each block's scores are small enough to stay in cache. A query that sees no key at all
    (left padding) averages the values it scored, as the unblocked kernel does over all of them."""
    T = q.shape[1]
    out = []
    for start in range(0, T, block):
        end = min(start + block, T)
        visible = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])[None, None]  # [1, 1, queries, keys]
        mask = visible if key_mask is None else visible & key_mask[:, None, None, :end]
        out.append(jax.nn.dot_product_attention(q[:, start:end], k[:, :end], v[:, :end], mask=mask))
    return jnp.concatenate(out, axis=1)


def whole_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                    key_mask: Bool[Array, "B T"] | None) -> Float[Array, "B T H hd"]:
    """Causal ``jax.nn.dot_product_attention`` in one call (it takes the G < H key/value heads as they are)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, heads, queries, keys]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=None)


@jax.checkpoint
def cpu_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                  key_mask: Bool[Array, "B T"] | None) -> Float[Array, "B T H hd"]:
    """CPU attention, in causal blocks past ``CAUSAL_BLOCK`` tokens; its backward pass recomputes the scores and
    probabilities from ``q, k, v``: cheaper on CPU than the layer scan storing them, [layers, B, H, T, T] each,
    and reading them back (docs/speed.md)."""
    if q.shape[1] > CAUSAL_BLOCK:
        return block_causal_attention(q, k, v, key_mask, CAUSAL_BLOCK)
    return whole_attention(q, k, v, key_mask)


def fused_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                    key_mask: Bool[Array, "B T"] | None) -> Float[Array, "B T H hd"]:
    """The same attention as ``reference_attention`` without dropout: ``cpu_attention`` on CPU, elsewhere
    ``whole_attention``, one call to the platform's kernel (cuDNN's on GPU where it applies)."""
    # Chosen when tracing, as ssm.py's scan: lax.platform_dependent would keep both branches under autodiff.
    if jax.default_backend() == "cpu":
        return cpu_attention(q, k, v, key_mask)
    return whole_attention(q, k, v, key_mask)


class Attention(eqx.Module):
    """Causal multi-head self-attention with grouped-query heads, optional RoPE, key-padding mask and sink
    logits; ``extend`` runs it incrementally over a ``KVCache``."""

    w_q: Linear
    w_k: Linear
    w_v: Linear
    w_o: Linear
    sink_logits: Float[Array, " H"] | None  # None: no attention sinks
    n_heads: int = eqx.field(static=True)
    n_kv_heads: int = eqx.field(static=True)
    rope_theta: float | None = eqx.field(static=True)  # None: no rotary positions
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, key: PRNGKeyArray, bias: bool = True,
                 rope_theta: float | None = None, dropout_rate: float = 0.0, out_std: float = INIT_STD,
                 sinks: bool = False):
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"d_model {d_model} must divide by n_heads {n_heads}, "
                             f"and n_heads by n_kv_heads {n_kv_heads}")
        hd = d_model // n_heads
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.w_q = Linear(d_model, n_heads * hd, key=kq, bias=bias)
        self.w_k = Linear(d_model, n_kv_heads * hd, key=kk, bias=bias)
        self.w_v = Linear(d_model, n_kv_heads * hd, key=kv, bias=bias)
        self.w_o = Linear(n_heads * hd, d_model, key=ko, bias=bias, std=out_std)
        # Logit 0: at init the sink weighs as much as one key with score 0 (gpt-oss also starts at 0).
        self.sink_logits = jnp.zeros((n_heads,)) if sinks else None
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.rope_theta, self.dropout_rate = rope_theta, dropout_rate

    @property
    def head_dim(self) -> int:
        return self.w_q.weight.shape[-1] // self.n_heads

    def _project(self, x: Float[Array, "B T D"]) -> tuple[Array, Array, Array]:
        B, T, _ = x.shape
        return (self.w_q(x).reshape(B, T, self.n_heads, -1), self.w_k(x).reshape(B, T, self.n_kv_heads, -1),
                self.w_v(x).reshape(B, T, self.n_kv_heads, -1))

    def _rotate(self, x: Array, positions: Int[Array, "*b T"]) -> Array:
        """``x`` rotated at ``positions`` under RoPE; unchanged without it."""
        if self.rope_theta is None:
            return x
        return apply_rope(x, *rope_tables(positions, x.shape[-1], self.rope_theta))

    def __call__(self, x: Float[Array, "B T D"], *, key_mask: Bool[Array, "B T"] | None = None,
                 positions: Int[Array, " T"] | None = None, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "B T D"]:
        """``positions`` (default ``arange(T)``) are the tokens' positions for the rotary embedding."""
        with jax.named_scope("attention"):
            B, T, _ = x.shape
            q, k, v = self._project(x)
            positions = jnp.arange(T) if positions is None else positions
            q, k = self._rotate(q, positions), self._rotate(k, positions)
            if self.sink_logits is None and (inference or self.dropout_rate == 0.0 or key is None):
                out = fused_attention(q, k, v, key_mask)
            else:
                out = reference_attention(q, k, v, key_mask, self.dropout_rate, key, inference, self.sink_logits)
            return self.w_o(out.reshape(B, T, -1))

    def init_state(self, batch: int, layout: CacheLayout, dtype) -> KVCache:
        return KVCache.empty(batch, layout, self.n_kv_heads, self.head_dim, dtype)

    def extend(self, x: Float[Array, "B C D"], cache: KVCache,
               positions: Int[Array, "B C"]) -> tuple[Float[Array, "B C D"], KVCache]:
        """Attend ``C`` new tokens at ``positions`` (-1: padding) to the cache and to each other, then add
        them to the cache. Equal to ``__call__`` over the whole sequence while the cache keeps every token."""
        with jax.named_scope("attention"):
            B, C, _ = x.shape
            layout = cache.layout
            q_raw, k, v = self._project(x)
            q, k = self._rotate(q_raw, jnp.maximum(positions, 0)), self._rotate(k, jnp.maximum(positions, 0))
            # Attend to the cache as it was and to the chunk beside it, then write: a chunk's later tokens may
            # evict keys its earlier ones see, and a write after the cache's last read can update it in place.
            blocks = [(cache.k, cache.v), cache.chunk_block(k, v)]
            key_positions = jnp.concatenate([cache.positions, positions], axis=1)
            q_for_sinks = sink_keys = None
            if self.rope_theta is not None and layout.sinks:  # sinks seen from at most the cache's last slot
                q_for_sinks = self._rotate(q_raw, jnp.clip(positions, 0, layout.last_slot))
                sink_keys = (key_positions >= 0) & (key_positions < layout.sinks)
            out = masked_attention(q, blocks, layout.visible(positions, key_positions), self.sink_logits,
                                   q_for_sinks=q_for_sinks, sink_keys=sink_keys)
            return self.w_o(out.reshape(B, C, -1)), cache.write(k, v, positions)
