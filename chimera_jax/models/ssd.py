"""The selective scan with one scalar decay per head (Mamba-2's state-space duality, SSD), in chunks of matmuls.

``ssm.kind: ssd`` ties the diagonal recurrence of ssm.py within heads of ``P`` channels: one ``Δ`` and one
``A`` per head (``Ā = exp(Δ A)`` a scalar), ``B`` and ``C`` shared by all heads as before. Per head::

    h_k = Ā_k h_{k-1} + Δ_k u_k B_kᵀ      [P, N]
    y_k = h_k C_k                         [P]

It is the diagonal scan with ``Δ`` repeated over each head's channels and ``A`` over the state, which is
how it is tested (``diagonal``). A scalar decay makes the recurrence a masked matrix product: within a chunk
of ``Q`` tokens, ``y_i = Σ_{j<=i} (C_i·B_j) exp(s_i - s_j) Δ_j u_j`` with ``s`` the cumulative sum of ``Δ A``
in the chunk, plus the state carried in from the chunks before, ``exp(s_i) h_in C_i``; each chunk's state
out is one more product. So the work is matmuls over ``[Q, Q]`` and ``[P, N]`` blocks, and only the
chunk-boundary states ``[B, T / Q, H, P, N]`` are materialised, not one per token (Dao & Gu 2024, "Transformers
are SSMs", section 6).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def diagonal(dt: Float[Array, "*b H"], A: Float[Array, " H"], channels: int,
             state: int) -> tuple[Float[Array, "*b Di"], Float[Array, "Di N"]]:
    """The per-head ``(Δ, A)`` as the diagonal scan's per-channel ``Δ [.., H P]`` and ``A [H P, N]``."""
    P = channels // A.shape[0]
    return jnp.repeat(dt, P, axis=-1), jnp.broadcast_to(jnp.repeat(A, P)[:, None], (channels, state))


def to_chunks(a: Array, size: int) -> Array:
    """``[B, T, ...] -> [B, n, size, ...]``, padded with zeros to whole chunks (the scans pad Δ with 0: steps
    that leave the state as it is)."""
    T = a.shape[1]
    n = -(-T // size)
    a = jnp.pad(a, [(0, 0), (0, n * size - T)] + [(0, 0)] * (a.ndim - 2))
    return a.reshape(a.shape[0], n, size, *a.shape[2:])


def ssd_scan(u: Float[Array, "B T Di"], dt: Float[Array, "B T H"], A: Float[Array, " H"], B: Float[Array, "B T N"],
             C: Float[Array, "B T N"], h0: Float[Array, "B Di N"],
             chunk: int) -> tuple[Float[Array, "B T Di"], Float[Array, "B Di N"]]:
    """``(y, h_T)`` as ssm.selective_scan returns them, with the state's channels grouped by head. The
    sequence is padded to whole chunks with Δ = 0 (no decay, no input): steps that leave the state as it is."""
    batch, T, Di = u.shape
    H, N = A.shape[0], B.shape[-1]
    Q = min(chunk, T)
    n = -(-T // Q)
    chunks = functools.partial(to_chunks, size=Q)
    x = chunks(u.reshape(batch, T, H, Di // H))  # [B, n, Q, H, P]
    Bc, Cc = chunks(B), chunks(C)  # [B, n, Q, N]
    dtc = chunks(dt)  # [B, n, Q, H]
    s = jnp.cumsum(dtc * A, axis=2)  # log of the decay since the chunk's start [B, n, Q, H]
    causal = jnp.tril(jnp.ones((Q, Q), bool))
    # Δ_j exp(s_i - s_j) for j <= i (the difference is <= 0 there; the masked entries never reach exp). Δ goes
    # with the [Q, Q] decay and the to-end factors, not with u: a [B, T, Di] product and its gradient fewer.
    decay = jnp.exp(jnp.where(causal[:, :, None], s[:, :, :, None] - s[:, :, None], -jnp.inf)) * dtc[:, :, None]
    scores = jnp.einsum("bcin,bcjn->bcij", Cc, Bc)
    y = jnp.einsum("bcij,bcijh,bcjhp->bcihp", scores, decay, x)  # within each chunk
    to_end = jnp.exp(s[:, :, -1:] - s) * dtc  # Δ_j and the decay from token j to its chunk's end [B, n, Q, H]
    own = jnp.einsum("bcjh,bcjhp,bcjn->bchpn", to_end, x, Bc)  # each chunk's state from its own tokens

    def carry(h, xs):  # the state entering each chunk, chunk by chunk
        own_c, total_c = xs
        return total_c[:, :, None, None] * h + own_c, h

    h_last, h_in = jax.lax.scan(carry, h0.reshape(batch, H, Di // H, N),
                                (own.swapaxes(0, 1), jnp.exp(s[:, :, -1]).swapaxes(0, 1)))
    y = y + jnp.einsum("bcih,bcin,cbhpn->bcihp", jnp.exp(s), Cc, h_in)  # what the earlier chunks left
    return y.reshape(batch, n * Q, Di)[:, :T], h_last.reshape(batch, Di, N)
