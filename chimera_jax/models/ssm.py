"""Diagonal selective state-space token mixer (Mamba-style), with a parallel and a sequential scan.

Per channel ``d`` of the expanded stream and per token ``k``::

    h_k = exp(Δ_k A) ⊙ h_{k-1} + Δ_k B_k u_k        (zero-order hold for A, Euler for B: B̄ = ΔB)
    y_k = C_k · h_k + D ⊙ u_k

``A = -exp(A_log)`` is diagonal (S4D-real init: ``A[d, n] = -(n + 1)``); ``Δ, B, C`` are selective, made
from the input: ``Δ = softplus(w_dt(low-rank part of w_x(u)) + dt_bias)``, ``B, C`` the rest of ``w_x(u)``.
Around the scan: in-projection to ``expand * d_model`` channels with a SiLU gate branch, a causal
depthwise convolution, and an out-projection.

Three ways to run the recurrence (``SSMConfig.scan``), tested equal in values and gradients:
- ``sequential``: ``lax.scan`` over time, one token per step: the reference.
- ``associative``: the recurrence is linear in ``h``, so ``jax.lax.associative_scan`` (O(log T) depth; it
  materialises ``[B, T, d_inner, N]`` several times over, forward and backward): the parallel form for
  accelerators.
- ``chunked``: ``lax.scan`` over chunks of ``chunk`` tokens carrying ``h``; within a chunk the discretised
  inputs are made together and the steps unrolled, and the backward pass recomputes the chunk
  (``jax.checkpoint``), so only the chunk-boundary states are kept: O(T / chunk) loop steps and no
  per-token state for the whole sequence.
``auto`` picks ``chunked`` on CPU and ``associative`` elsewhere, for the default backend (docs/speed.md has
the measurements).

``ssm.kind: ssd`` (a different model, Mamba-2's): one ``Δ`` and one scalar ``A`` per head of ``head_dim``
channels, so the recurrence runs as chunks of matmuls (ssd.py); its ``A`` starts uniform in [1, 16] per
head, as Mamba-2's. ``scan: sequential`` or ``associative`` run it as the diagonal scan it is a case of.

Arrays are named by the convention of roles.py: the matrices (``w_*``) decay; ``A_log``, ``D``,
``dt_bias`` and ``conv_bias`` do not: pulling them to zero would not regularise but move the dynamics
somewhere arbitrary (every A to -1, no skip, every Δ to softplus(0) = 0.69).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from chimera_jax.config import SSMConfig
from chimera_jax.models.layers import INIT_STD, Linear
from chimera_jax.models.ssd import diagonal, ssd_scan, to_chunks

# Tokens per step of the chunked scans, the fastest of 8 / 16 / 32 / 64 in the train step on CPU (docs/speed.md).
CHUNK = {"mamba": 8, "ssd": 32}


def discretize(dt: Float[Array, "... Di"], A: Float[Array, "Di N"], B: Float[Array, "... N"],
               u: Float[Array, "... Di"]) -> tuple[Float[Array, "... Di N"], Float[Array, "... Di N"]]:
    """``(Ā, B̄u) = (exp(ΔA), ΔBu)`` for any leading axes: one token or a whole sequence."""
    dA = jnp.exp(dt[..., None] * A)
    dBu = (dt * u)[..., None] * B[..., None, :]
    return dA, dBu


def _combine(earlier, later):
    """Composition of two steps ``h -> a h + b``: the associative operator of the linear recurrence."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def selective_scan(u: Float[Array, "B T Di"], dt: Float[Array, "B T Di"], A: Float[Array, "Di N"],
                   B: Float[Array, "B T N"], C: Float[Array, "B T N"], method: str = "auto",
                   h0: Float[Array, "B Di N"] | None = None,
                   chunk: int = CHUNK["mamba"]) -> tuple[Float[Array, "B T Di"], Float[Array, "B Di N"]]:
    """``(y, h_T)``: ``y_k = C_k · h_k`` with ``h_k = Ā_k h_{k-1} + B̄_k u_k`` from ``h_{-1} = h0`` (default 0),
    and the last state, which decoding carries on from (skip term not included)."""
    if h0 is None:
        h0 = jnp.zeros((u.shape[0], *A.shape), u.dtype)
    args = (u, dt, A, B, C, h0)
    if method == "auto":
        # Resolved when tracing, not with lax.platform_dependent: under autodiff that keeps both branches
        # and their residuals (docs/speed.md).
        method = "chunked" if jax.default_backend() == "cpu" else "associative"
    if method == "associative":
        return associative_scan(*args)
    if method == "sequential":
        return sequential_scan(*args)
    if method == "chunked":
        return chunked_scan(*args, chunk=chunk)
    raise ValueError(f"unknown ssm scan {method!r}: expected 'auto', 'chunked', 'associative' or 'sequential'")


def associative_scan(u, dt, A, B, C, h0):
    dA, dBu = discretize(dt, A, B, u)
    dBu = dBu.at[:, 0].add(dA[:, 0] * h0)  # the first step starts from h0
    _, h = jax.lax.associative_scan(_combine, (dA, dBu), axis=1)
    return jnp.einsum("btdn,btn->btd", h, C), h[:, -1]


def sequential_scan(u, dt, A, B, C, h0):
    def step(h, xs):
        dt_k, B_k, C_k, u_k = xs
        dA, dBu = discretize(dt_k, A, B_k, u_k)
        h = dA * h + dBu
        return h, jnp.einsum("bdn,bn->bd", h, C_k)

    h_last, y = jax.lax.scan(step, h0, tuple(a.swapaxes(0, 1) for a in (dt, B, C, u)))
    return y.swapaxes(0, 1), h_last


def chunked_scan(u, dt, A, B, C, h0, chunk: int):
    """``lax.scan`` over chunks of ``chunk`` tokens. The sequence is padded to whole chunks with Δ = 0
    (Ā = 1, B̄u = 0): steps that leave the state as it is."""
    batch, T = u.shape[:2]
    size = min(chunk, T)

    def chunks(a: Array) -> Array:  # [B, T, ...] -> [n, B, size, ...]: the scan's leading axis
        return to_chunks(a, size).swapaxes(0, 1)

    def run(h, xs):
        u_c, dt_c, B_c, C_c = xs
        dA, dBu = discretize(dt_c, A, B_c, u_c)
        ys = []
        for k in range(size):
            h = dA[:, k] * h + dBu[:, k]
            ys.append(jnp.einsum("bdn,bn->bd", h, C_c[:, k]))
        return h, jnp.stack(ys, axis=1)

    h, y = jax.lax.scan(jax.checkpoint(run), h0, tuple(map(chunks, (u, dt, B, C))))
    return y.swapaxes(0, 1).reshape(batch, -1, y.shape[-1])[:, :T], h


def causal_conv(u: Float[Array, "B T Di"], w: Float[Array, "K Di"], b: Float[Array, " Di"],
                history: Float[Array, "B history Di"] | None = None) -> Float[Array, "B T Di"]:
    """Depthwise convolution over time that only looks back: ``out_k = sum_j w[j] u_{k-K+1+j} + b``, the
    inputs before the first being ``history`` (the decoding state; zeros at the start of a sequence)."""
    K, T = w.shape[0], u.shape[1]
    if history is None:
        history = jnp.zeros((u.shape[0], K - 1, u.shape[2]), u.dtype)
    padded = jnp.concatenate([history.astype(u.dtype), u], axis=1)
    return sum(w[j] * padded[:, j:j + T] for j in range(K)) + b


class SSMState(eqx.Module):
    """The selective SSM's decoding state: O(1) in the sequence length."""

    conv: Float[Array, "B history Di"]  # the last K - 1 inputs of the causal convolution
    h: Float[Array, "B Di N"]  # the scan's state (f32)


def inverse_softplus(y: Array) -> Array:
    return y + jnp.log(-jnp.expm1(-y))


class SelectiveSSM(eqx.Module):
    """The token mixer ``[B, T, d_model] -> [B, T, d_model]`` (a drop-in for ``Attention``)."""

    w_in: Linear  # d_model -> 2 * d_inner: the scanned stream u and the gate branch z
    w_conv: Float[Array, "K Di"]
    conv_bias: Float[Array, " Di"]
    w_x: Linear  # d_inner -> dt_rank + 2 N: the low-rank Δ input, B and C
    w_dt: Linear  # dt_rank -> d_inner (mamba) or heads (ssd)
    dt_bias: Float[Array, " Di"] | Float[Array, " H"]
    A_log: Float[Array, "Di N"] | Float[Array, " H"]
    D: Float[Array, " Di"]
    w_out: Linear  # d_inner -> d_model
    dt_rank: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    scan: str = eqx.field(static=True)
    chunk: int = eqx.field(static=True)

    def __init__(self, d_model: int, ssm: SSMConfig, *, key: PRNGKeyArray, out_std: float = INIT_STD):
        d_inner, N, K = ssm.expand * d_model, ssm.state_size, ssm.conv_kernel
        self.dt_rank = ssm.dt_rank or math.ceil(d_model / 16)
        self.state_size, self.kind, self.scan, self.chunk = N, ssm.kind, ssm.scan, ssm.chunk or CHUNK[ssm.kind]
        # one Δ and A per channel (mamba) or per head (ssd)
        dynamics = d_inner if ssm.kind == "mamba" else d_inner // ssm.head_dim
        k_in, k_conv, k_x, k_dt, k_dt_init, k_out, k_A = jax.random.split(key, 7)
        # Mamba's choices: no projection biases, PyTorch's default conv init, dt_proj at scale dt_rank^-1/2.
        self.w_in = Linear(d_model, 2 * d_inner, key=k_in, bias=False)
        self.w_conv = jax.random.uniform(k_conv, (K, d_inner), minval=-K ** -0.5, maxval=K ** -0.5)
        self.conv_bias = jnp.zeros((d_inner,))
        self.w_x = Linear(d_inner, self.dt_rank + 2 * N, key=k_x, bias=False)
        self.w_dt = Linear(self.dt_rank, dynamics, key=k_dt, bias=False, std=self.dt_rank ** -0.5)
        # Δ starts log-uniform in [dt_min, dt_max]: each channel (head) begins with its own memory length.
        log_dt = jax.random.uniform(k_dt_init, (dynamics,), minval=math.log(ssm.dt_min), maxval=math.log(ssm.dt_max))
        self.dt_bias = inverse_softplus(jnp.exp(log_dt))
        if ssm.kind == "mamba":
            self.A_log = jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (d_inner, N)))
        else:
            self.A_log = jnp.log(jax.random.uniform(k_A, (dynamics,), minval=1.0, maxval=16.0))
        self.D = jnp.ones((d_inner,))
        self.w_out = Linear(d_inner, d_model, key=k_out, bias=False, std=out_std)

    @property
    def A(self) -> Float[Array, "Di N"] | Float[Array, " H"]:
        return -jnp.exp(self.A_log.astype(jnp.float32))

    def _scan(self, u: Float[Array, "B T Di"], dt: Array, B: Float[Array, "B T N"], C: Float[Array, "B T N"],
              h0: Float[Array, "B Di N"] | None = None) -> tuple[Float[Array, "B T Di"], Float[Array, "B Di N"]]:
        if self.kind == "mamba":
            return selective_scan(u, dt, self.A, B, C, self.scan, h0, self.chunk)
        if self.scan in ("auto", "chunked"):
            h0 = jnp.zeros((u.shape[0], u.shape[-1], self.state_size), u.dtype) if h0 is None else h0
            return ssd_scan(u, dt, self.A, B, C, h0, self.chunk)
        return selective_scan(u, *diagonal(dt, self.A, u.shape[-1], self.state_size), B, C, self.scan, h0)

    def _selective(self, x: Float[Array, "B T D"], history: Float[Array, "B history Di"] | None = None):
        """The input-dependent parts: the gate branch z (compute dtype), the convolution's input, and, in
        f32 for the scan, the scanned stream u, Δ, B and C."""
        f32 = jnp.float32
        u_in, z = jnp.split(self.w_in(x), 2, axis=-1)
        u = jax.nn.silu(causal_conv(u_in, self.w_conv.astype(u_in.dtype), self.conv_bias.astype(u_in.dtype), history))
        N = self.state_size
        dt_low, B, C = jnp.split(self.w_x(u), [self.dt_rank, self.dt_rank + N], axis=-1)
        dt = jax.nn.softplus(self.w_dt(dt_low).astype(f32) + self.dt_bias.astype(f32))
        return u_in, u.astype(f32), z, dt, B.astype(f32), C.astype(f32)

    def dynamics(self, x: Float[Array, "B T D"]) -> tuple[Float[Array, "B T Di"], Float[Array, "Di N"]]:
        """``(Δ, A)`` for the (normed) mixer input ``x``, per channel (an ssd head's repeated over its channels):
        the per-token decay is ``exp(Δ[..., None] * A)``."""
        dt = self._selective(x)[3]
        return (dt, self.A) if self.kind == "mamba" else diagonal(dt, self.A, self.D.shape[0], self.state_size)

    def _output(self, x: Array, u: Array, z: Array, y: Array) -> Float[Array, "B T D"]:
        y = y + self.D.astype(jnp.float32) * u
        return self.w_out(y.astype(x.dtype) * jax.nn.silu(z))

    def __call__(self, x: Float[Array, "B T D"], *, key_mask: Bool[Array, "B T"] | None = None,
                 key: PRNGKeyArray | None = None, inference: bool = False) -> Float[Array, "B T D"]:
        """``key_mask`` is unused: the scan is causal, so right padding never reaches a real token
        (left padding would, and is not supported)."""
        del key_mask, key, inference
        with jax.named_scope("ssm"):
            _, u, z, dt, B, C = self._selective(x)
            y, _ = self._scan(u, dt, B, C)
            return self._output(x, u, z, y)

    def init_state(self, batch: int, layout: object, dtype) -> SSMState:
        """The empty state (``layout``, the attention cache's, is ignored: the state does not grow)."""
        del layout
        d_inner = self.D.shape[-1]
        return SSMState(jnp.zeros((batch, self.w_conv.shape[-2] - 1, d_inner), dtype),
                        jnp.zeros((batch, d_inner, self.state_size), jnp.float32))

    def extend(self, x: Float[Array, "B C D"], state: SSMState,
               positions: Int[Array, "B C"]) -> tuple[Float[Array, "B C D"], SSMState]:
        """Run ``C`` new tokens from ``state``; ``positions`` -1 marks right padding, which leaves the state
        as the row's last real token left it (Δ = 0 keeps h, the convolution keeps its last real inputs)."""
        with jax.named_scope("ssm"):
            real = positions >= 0
            u_in, u, z, dt, B, C = self._selective(x, state.conv)
            y, h = self._scan(u, jnp.where(real[..., None], dt, 0.0), B, C, state.h)
            inputs = jnp.concatenate([state.conv, u_in.astype(state.conv.dtype)], axis=1)
            K1 = state.conv.shape[1]
            window = real.sum(axis=1)[:, None] + jnp.arange(K1)  # the K - 1 inputs up to the last real one
            conv = jnp.take_along_axis(inputs, window[..., None], axis=1)
            return self._output(x, u, z, y), SSMState(conv, h)
