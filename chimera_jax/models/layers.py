"""Shared building blocks for every model family: linear maps, embeddings, norms, positions and the
feed-forward layer (attention has its own file).

Every layer acts on arrays with any number of leading axes (``[..., T, D]``), so the same modules
serve batched training, per-example evaluation and the MoE token dispatch. Arrays are named by the
convention of roles.py (``weight`` / ``w_*`` are matrices).
"""

from __future__ import annotations

import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Real

INIT_STD = 0.02


def residual_std(n_layers: int) -> float:
    """Init std of the projections that write into the residual stream (GPT-2): the stream sums two
    branches per layer, so each starts at ``INIT_STD / sqrt(2 n_layers)`` and the sum keeps its scale."""
    return INIT_STD / math.sqrt(2 * n_layers)


def dropout(x: Array, rate: float, key: PRNGKeyArray | None, inference: bool) -> Array:
    """Inverted dropout; identity at inference, with rate 0, or when no key is given."""
    if inference or rate == 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


@jax.custom_vjp
def matmul(x: Float[Array, "... d_in"], weight: Float[Array, "d_in d_out"]) -> Float[Array, "... d_out"]:
    """``x @ weight`` whose weight gradient contracts the leading axes of ``x`` and of the output gradient as they
    lie. Differentiated the plain way, XLA:CPU turns that product into one with a transposed copy of the output
    gradient and runs it outside its fast matmul path: the MLP's weight gradients were the train step's slowest
    products (docs/speed.md)."""
    return x @ weight


def _matmul_fwd(x: Array, weight: Array) -> tuple[Array, tuple[Array, Array]]:
    return x @ weight, (x, weight)


def _matmul_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, weight = res
    dx = jax.lax.dot_general(g, weight, (((g.ndim - 1,), (1,)), ((), ())))
    rows = (x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))  # one contracting axis: XLA:CPU's fast path
    return dx, jax.lax.dot_general(*rows, (((0,), (0,)), ((), ())))


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Linear(eqx.Module):
    """``y = x @ weight + bias`` with ``weight`` stored as [in, out] (the HF Conv1D / JAX layout)."""

    weight: Float[Array, "d_in d_out"]
    bias: Float[Array, " d_out"] | None

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, bias: bool = True, std: float = INIT_STD):
        self.weight = std * jax.random.normal(key, (d_in, d_out))
        self.bias = jnp.zeros((d_out,)) if bias else None

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        y = matmul(x, self.weight.astype(x.dtype))
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


def sinusoidal_embedding(t: Real[Array, "..."], dim: int, max_period: float = 10000.0) -> Float[Array, "... dim"]:
    """Transformer sinusoids of a (possibly fractional) position or time ``t``: [sin | cos] halves."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
    angles = jnp.asarray(t, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sinusoidal_positions(positions: Int[Array, "*T"], dim: int) -> Float[Array, "*T dim"]:
    """Fixed position vectors added to token embeddings, scaled to their init std (``INIT_STD``): at
    amplitude 1 they would swamp embeddings of std 0.02 (docs/models.md shows what that costs)."""
    return INIT_STD * sinusoidal_embedding(positions, dim)


# The activations keep only their inputs for the backward pass, which recomputes the rest: saved, each of their
# intermediates is one more [layers, tokens, d_ff] buffer the layer scan writes and reads back (docs/speed.md).
_gelu = jax.checkpoint(partial(jax.nn.gelu, approximate=True))
_swiglu = jax.checkpoint(lambda gate, up: jax.nn.silu(gate) * up)


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
        with jax.named_scope("mlp"):
            h = _gelu(self.w_in(x)) if self.w_gate is None else _swiglu(self.w_gate(x), self.w_in(x))
            return dropout(self.w_out(h), self.dropout_rate, key, inference), {}
