"""Causal self-attention with grouped-query heads, rotary positions and a key-padding mask.

Two cores compute the same softmax attention: ``jax.nn.dot_product_attention`` (the fused XLA / cuDNN
kernel, used whenever attention dropout is off) and ``reference_attention``, written with Haliax named
axes so every contraction says what it sums. The reference is what the fused core is tested against, and
it runs in training with attention dropout, which the fused core has no place for.
"""

from __future__ import annotations

import math

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from chimera_jax.models.layers import INIT_STD, Linear, dropout


def rope_tables(positions: Int[Array, " T"], head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos / sin tables [T, head_dim/2] for rotary embeddings (the rotate-half / HF Llama layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[:, None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Float[Array, "... T H hd"], cos: Array, sin: Array) -> Float[Array, "... T H hd"]:
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def reference_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                        key_mask: Bool[Array, "B T"] | None, dropout_rate: float = 0.0,
                        key: PRNGKeyArray | None = None, inference: bool = True) -> Float[Array, "B T H hd"]:
    """Causal softmax attention over named axes, with dropout on the attention probabilities.

    The H query heads are grouped over the G key/value heads (grouped-query attention; G == H is
    ordinary multi-head attention). Scores and softmax are computed in f32.
    """
    B, T, H, hd = q.shape
    G = k.shape[2]
    Batch, Pos, KvHead, QPerKv, HeadDim = (hax.Axis("batch", B), hax.Axis("position", T), hax.Axis("kv_head", G),
                                           hax.Axis("q_per_kv", H // G), hax.Axis("head_dim", hd))
    KeyPos = Pos.alias("key_position")
    q = hax.named(q.reshape(B, T, G, H // G, hd), (Batch, Pos, KvHead, QPerKv, HeadDim))
    k = hax.named(k, (Batch, KeyPos, KvHead, HeadDim))
    v = hax.named(v, (Batch, KeyPos, KvHead, HeadDim))
    scores = hax.dot(q, k, axis=HeadDim, preferred_element_type=jnp.float32) / math.sqrt(hd)
    allowed = hax.arange(Pos) >= hax.arange(KeyPos).broadcast_axis(Pos)
    if key_mask is not None:
        # Haliax broadcasts only explicitly: give both masks the [batch, position, key_position] axes.
        allowed = allowed.broadcast_axis(Batch) & hax.named(key_mask, (Batch, KeyPos)).broadcast_axis(Pos)
    scores = hax.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = hax.nn.softmax(scores, axis=KeyPos).astype(v.dtype)
    probs = hax.named(dropout(probs.array, dropout_rate, key, inference), probs.axes)
    out = hax.dot(probs, v, axis=KeyPos)
    return out.rearrange((Batch, Pos, KvHead, QPerKv, HeadDim)).array.reshape(B, T, H, hd)


def fused_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                    key_mask: Bool[Array, "B T"] | None) -> Float[Array, "B T H hd"]:
    """The same attention as ``reference_attention`` without dropout, as ``jax.nn.dot_product_attention``
    (it takes the G < H key/value heads as they are)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, heads, queries, keys]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=None)


class Attention(eqx.Module):
    """Causal multi-head self-attention with grouped-query heads, optional RoPE and key-padding mask."""

    w_q: Linear
    w_k: Linear
    w_v: Linear
    w_o: Linear
    n_heads: int = eqx.field(static=True)
    n_kv_heads: int = eqx.field(static=True)
    rope_theta: float | None = eqx.field(static=True)  # None: no rotary positions
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, key: PRNGKeyArray, bias: bool = True,
                 rope_theta: float | None = None, dropout_rate: float = 0.0, out_std: float = INIT_STD):
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"d_model {d_model} must divide by n_heads {n_heads}, "
                             f"and n_heads by n_kv_heads {n_kv_heads}")
        hd = d_model // n_heads
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.w_q = Linear(d_model, n_heads * hd, key=kq, bias=bias)
        self.w_k = Linear(d_model, n_kv_heads * hd, key=kk, bias=bias)
        self.w_v = Linear(d_model, n_kv_heads * hd, key=kv, bias=bias)
        self.w_o = Linear(n_heads * hd, d_model, key=ko, bias=bias, std=out_std)
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.rope_theta, self.dropout_rate = rope_theta, dropout_rate

    def __call__(self, x: Float[Array, "B T D"], *, key_mask: Bool[Array, "B T"] | None = None,
                 positions: Int[Array, " T"] | None = None, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "B T D"]:
        """``positions`` (default ``arange(T)``) are the tokens' positions for the rotary embedding."""
        with jax.named_scope("attention"):
            B, T, _ = x.shape
            q = self.w_q(x).reshape(B, T, self.n_heads, -1)
            k = self.w_k(x).reshape(B, T, self.n_kv_heads, -1)
            v = self.w_v(x).reshape(B, T, self.n_kv_heads, -1)
            if self.rope_theta is not None:
                cos, sin = rope_tables(jnp.arange(T) if positions is None else positions, q.shape[-1], self.rope_theta)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if inference or self.dropout_rate == 0.0 or key is None:
                out = fused_attention(q, k, v, key_mask)
            else:
                out = reference_attention(q, k, v, key_mask, self.dropout_rate, key, inference)
            return self.w_o(out.reshape(B, T, -1))
