"""Shared building blocks for every model family: linear maps, embeddings, norms, positions,
attention and feed-forward layers.

Every layer acts on arrays with any number of leading axes (``[..., T, D]``), so the same modules
serve batched training, per-example evaluation and the MoE token dispatch.

Naming convention the optimizer relies on: a parameter whose attribute is ``weight`` or starts with
``w_`` is a matrix and gets weight decay; everything else (biases, norm scales, gates) does not.
"""

from __future__ import annotations

import math

import equinox as eqx
import haliax as hax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

INIT_STD = 0.02


def dropout(x: Array, rate: float, key: PRNGKeyArray | None, inference: bool) -> Array:
    """Inverted dropout; identity at inference, with rate 0, or when no key is given."""
    if inference or rate == 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Linear(eqx.Module):
    """``y = x @ weight + bias`` with ``weight`` stored as [in, out] (the HF Conv1D / JAX layout)."""

    weight: Float[Array, "d_in d_out"]
    bias: Float[Array, " d_out"] | None

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, bias: bool = True, std: float = INIT_STD):
        self.weight = std * jax.random.normal(key, (d_in, d_out))
        self.bias = jnp.zeros((d_out,)) if bias else None

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        y = x @ self.weight.astype(x.dtype)
        return y if self.bias is None else y + self.bias.astype(x.dtype)


class Embedding(eqx.Module):
    weight: Float[Array, "vocab d_model"]

    def __init__(self, vocab: int, d_model: int, *, key: PRNGKeyArray):
        self.weight = INIT_STD * jax.random.normal(key, (vocab, d_model))

    def __call__(self, ids: Int[Array, "..."]) -> Float[Array, "... d_model"]:
        return jnp.take(self.weight, ids, axis=0)

    def attend(self, x: Float[Array, "... d_model"]) -> Float[Array, "... vocab"]:
        """The tied output head: logits against the embedding table."""
        return x @ self.weight.T.astype(x.dtype)


class Norm(eqx.Module):
    """LayerNorm (mean-centred, optional bias) or RMSNorm; statistics always in f32."""

    scale: Float[Array, " d"]
    bias: Float[Array, " d"] | None
    kind: str = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, d: int, kind: str = "layernorm", eps: float = 1e-5, bias: bool = True):
        if kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {kind!r}: expected 'layernorm' or 'rmsnorm'")
        self.scale = jnp.ones((d,))
        self.bias = jnp.zeros((d,)) if (bias and kind == "layernorm") else None
        self.kind = kind
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        h = x.astype(jnp.float32)
        if self.kind == "layernorm":
            h = h - h.mean(-1, keepdims=True)
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + self.eps)
        h = h * self.scale
        if self.bias is not None:
            h = h + self.bias
        return h.astype(x.dtype)


def sinusoidal_embedding(t: Float[Array, "..."], dim: int, max_period: float = 10000.0) -> Float[Array, "... dim"]:
    """Transformer sinusoids of a (possibly fractional) position or time ``t``: [sin | cos] halves."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sinusoidal_positions(seq_len: int, dim: int) -> Float[Array, "seq_len dim"]:
    """Fixed position table added to token embeddings, scaled to their init std (``INIT_STD``).

    At amplitude 1 the table swamps embeddings of std 0.02 and a byte-level model learns no more than
    the byte frequencies (measured: val loss stuck at 3.20 nats/byte over 400 steps).
    """
    return INIT_STD * sinusoidal_embedding(jnp.arange(seq_len), dim)


def rope_tables(positions: Int[Array, " T"], head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos / sin tables [T, head_dim/2] for rotary embeddings (the rotate-half / HF Llama layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[:, None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Float[Array, "... T H hd"], cos: Array, sin: Array) -> Float[Array, "... T H hd"]:
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def grouped_attention(q: Float[Array, "B T H hd"], k: Float[Array, "B T G hd"], v: Float[Array, "B T G hd"],
                      key_mask: Bool[Array, "B T"] | None, dropout_rate: float = 0.0,
                      key: PRNGKeyArray | None = None, inference: bool = True) -> Float[Array, "B T H*hd"]:
    """Causal softmax attention, written with Haliax named axes so every contraction says what it sums.

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
    return out.rearrange((Batch, Pos, KvHead, QPerKv, HeadDim)).array.reshape(B, T, H * hd)


class Attention(eqx.Module):
    """Causal multi-head self-attention with grouped-query heads and an optional key-padding mask."""

    w_q: Linear
    w_k: Linear
    w_v: Linear
    w_o: Linear
    n_heads: int = eqx.field(static=True)
    n_kv_heads: int = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, key: PRNGKeyArray, bias: bool = True,
                 dropout_rate: float = 0.0, out_std: float = INIT_STD):
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"d_model {d_model} must divide by n_heads {n_heads}, "
                             f"and n_heads by n_kv_heads {n_kv_heads}")
        hd = d_model // n_heads
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.w_q = Linear(d_model, n_heads * hd, key=kq, bias=bias)
        self.w_k = Linear(d_model, n_kv_heads * hd, key=kk, bias=bias)
        self.w_v = Linear(d_model, n_kv_heads * hd, key=kv, bias=bias)
        self.w_o = Linear(n_heads * hd, d_model, key=ko, bias=bias, std=out_std)
        self.n_heads, self.n_kv_heads, self.dropout_rate = n_heads, n_kv_heads, dropout_rate

    def __call__(self, x: Float[Array, "B T D"], *, key_mask: Bool[Array, "B T"] | None = None,
                 rope: tuple[Array, Array] | None = None, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> Float[Array, "B T D"]:
        B, T, _ = x.shape
        H, G = self.n_heads, self.n_kv_heads
        q = self.w_q(x).reshape(B, T, H, -1)
        k = self.w_k(x).reshape(B, T, G, -1)
        v = self.w_v(x).reshape(B, T, G, -1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = grouped_attention(q, k, v, key_mask, self.dropout_rate, key, inference)
        return self.w_o(out)


class MLP(eqx.Module):
    """Position-wise feed-forward: GELU (``w_in -> gelu -> w_out``) or SwiGLU (``silu(gate) * up -> down``)."""

    w_in: Linear
    w_gate: Linear | None
    w_out: Linear
    activation: str = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, d_model: int, d_ff: int, *, key: PRNGKeyArray, activation: str = "gelu", bias: bool = True,
                 dropout_rate: float = 0.0, out_std: float = INIT_STD):
        if activation not in ("gelu", "swiglu"):
            raise ValueError(f"unknown ffn activation {activation!r}: expected 'gelu' or 'swiglu'")
        k1, k2, k3 = jax.random.split(key, 3)
        self.w_in = Linear(d_model, d_ff, key=k1, bias=bias)
        self.w_gate = Linear(d_model, d_ff, key=k3, bias=bias) if activation == "swiglu" else None
        self.w_out = Linear(d_ff, d_model, key=k2, bias=bias, std=out_std)
        self.activation, self.dropout_rate = activation, dropout_rate

    def __call__(self, x: Float[Array, "... D"], *, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> tuple[Float[Array, "... D"], dict]:
        if self.w_gate is None:
            h = jax.nn.gelu(self.w_in(x), approximate=True)
        else:
            h = jax.nn.silu(self.w_gate(x)) * self.w_in(x)
        return dropout(self.w_out(h), self.dropout_rate, key, inference), {}
