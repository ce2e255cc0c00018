"""Time-indexed parameter sharing: one block's weights serve every depth, modulated by its time t.

Layer ``i`` of ``L`` runs the shared block with ``t = (i + 1) / L`` and

    W_eff(t) = W_base ⊙ σ(g_φ(SinusoidalEmb(t)))

``g_φ`` (``TimeModulation``) is an MLP ``emb_dim -> hidden -> SiLU -> Σ n`` whose output is split into one
logit block per gated parameter. ``L`` is a plain number at evaluation: ``with_depth(model, L')`` runs a
model trained at ``L`` with ``L'`` layers, ``t = (i + 1) / L'``. Trained across depths
(``TimeConfig.train_depth``), each train step draws ``L'`` from its key (``DepthSampler``) and runs one program
over ``depth_max`` layers in which layer ``i`` is skipped by a ``lax.cond`` once ``i >= L'``: one compilation,
and a step costs the ``L'`` layers it runs (docs/time_indexed.md measures both against depth buckets).

What is gated (the roles of roles.py): every ``MATRIX`` of the shared block (the leaves the optimizer
decays) at the granularity ``TimeConfig.gate``, and element-wise the ``CHANNEL`` vectors, where a positive
factor has a clean meaning: norm ``scale`` and the SSM's skip ``D`` (channel multipliers, so ``D`` becomes
``D(t)``) and the SSM's ``dt_bias``: Δ = softplus(proj + dt_bias) ≈ exp(dt_bias) while Δ is small and the input
term too, so a gate g gives Δ ≈ Δ₀^g, a per-depth, per-channel time scale (Ā(t, x) = exp(Δ(t, x) A)).
Shared ungated: additive biases (the gated matrix before them already rescales their unit) and
``A_log``, whose element-wise gate would cost d_inner × N logits while Δ(t) already rescales every mode
of a channel.

Gate granularity and its cost. For a matrix ``[d_in, d_out]`` (leading axes count as ``d_in``) the
modulation emits ``n`` logits:

    out      σ(a) per output unit                          n = d_out
    in_out   σ(a_in)[:, None] * σ(a_out)[None, :]          n = d_in + d_out
    lowrank  σ(U Vᵀ + b), U [d_in, r], V [d_out, r]        n = r (d_in + d_out) + d_out
    full     σ(a) per element                              n = d_in d_out
    (vectors of size d: element-wise, n = d, whatever the granularity)

and ``g_φ`` holds ``E H + H + (H + 1) Σ n`` parameters (``E = emb_dim``, ``H = hidden``). A model's total
is one dense layer's block plus that, plus embeddings and the final norm; every parameter is active.

Initialisation: ``g_φ``'s last layer starts with zero weights and a bias that puts every gate at
``TimeConfig.gate_init`` (default 0.5, where σ is steepest and a gate can move either way), so all depths
start identical and the layer-to-layer differences are learnt (the adaLN-zero idea). The gated base
weights are divided by ``gate_init``, so ``W_eff`` starts at the family's usual init rather than scaled by
0.5 per matrix (which would shrink each residual branch by ~0.5^3 at init).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from chimera_jax.config import ConfigError, TimeConfig
from chimera_jax.models.layers import Linear, sinusoidal_embedding
from chimera_jax.models.roles import Role, role
from chimera_jax.models.transformer import Block, Context, loop_layers, scan_layers, stacked_state

# t in (0, 1] is scaled before the sinusoids so their frequencies (TIME_SCALE down to TIME_SCALE / 1e4 per
# unit t) span both features that separate neighbouring layers and ones that vary smoothly across depth.
TIME_SCALE = 100.0
# Initial std of the low-rank factors U, V: U Vᵀ starts near 0 but neither factor's gradient vanishes.
LOWRANK_INIT_STD = 0.1


class GateSpec(NamedTuple):
    """One gated leaf of the shared block: where it is, its shape, and how it is gated."""

    path: str  # e.g. "mixer.w_q.weight"
    shape: tuple[int, ...]
    kind: str  # "vector" or TimeConfig.gate

    @property
    def d_in(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def d_out(self) -> int:
        return self.shape[-1]

    def n_logits(self, rank: int) -> int:
        """Closed form of the logits this gate needs (the table in the module docstring)."""
        return {"vector": self.d_out, "out": self.d_out, "in_out": self.d_in + self.d_out,
                "lowrank": rank * (self.d_in + self.d_out) + self.d_out,
                "full": self.d_in * self.d_out}[self.kind]

    def init_logits(self, gate_init: float, rank: int, key: PRNGKeyArray) -> Float[Array, " n"]:
        """Logits whose gate is ``gate_init`` everywhere (``≈`` for lowrank: U Vᵀ starts small, not 0)."""
        f32 = jnp.float32  # explicit: a weakly typed leaf would recompile the step once it is updated
        if self.kind == "in_out":  # the product of two gates
            return jnp.full((self.n_logits(rank),), _logit(math.sqrt(gate_init)), f32)
        if self.kind == "lowrank":
            factors = LOWRANK_INIT_STD * jax.random.normal(key, (rank * (self.d_in + self.d_out),))
            return jnp.concatenate([factors, jnp.full((self.d_out,), _logit(gate_init), f32)])
        return jnp.full((self.n_logits(rank),), _logit(gate_init), f32)

    def gate(self, logits: Float[Array, " n"], rank: int) -> Array:
        """The gate, shaped to broadcast against the leaf."""
        if self.kind in ("vector", "full"):
            return jax.nn.sigmoid(logits).reshape(self.shape)
        if self.kind == "out":
            return jax.nn.sigmoid(logits).reshape((1,) * (len(self.shape) - 1) + (self.d_out,))
        if self.kind == "in_out":
            g_in, g_out = jax.nn.sigmoid(logits[:self.d_in]), jax.nn.sigmoid(logits[self.d_in:])
            return g_in.reshape(self.shape[:-1] + (1,)) * g_out
        if self.kind == "lowrank":
            u, v, b = jnp.split(logits, [rank * self.d_in, rank * (self.d_in + self.d_out)])
            return jax.nn.sigmoid(u.reshape(self.d_in, rank) @ v.reshape(self.d_out, rank).T + b).reshape(self.shape)
        raise ValueError(f"unknown gate {self.kind!r}: expected 'out', 'in_out', 'lowrank' or 'full'")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def gate_specs(block: eqx.Module, gate: str) -> tuple[GateSpec, ...]:
    """The leaves of ``block`` that are gated: matrices at granularity ``gate``, channel vectors element-wise."""
    kinds = {Role.MATRIX: gate, Role.CHANNEL: "vector"}
    return tuple(GateSpec(jax.tree_util.keystr(path, simple=True, separator="."), tuple(leaf.shape), kinds[role(path)])
                 for path, leaf in jax.tree_util.tree_flatten_with_path(eqx.filter(block, eqx.is_array))[0]
                 if role(path) in kinds)


def multiply_leaves(tree, factors: dict[str, Array | float]):
    """``tree`` with the leaf at each path of ``factors`` multiplied by its factor."""
    def scale(path, leaf):
        factor = factors.get(jax.tree_util.keystr(path, simple=True, separator="."))
        return leaf if factor is None else leaf * jnp.asarray(factor, leaf.dtype)

    return jax.tree_util.tree_map_with_path(scale, tree)


class TimeModulation(eqx.Module):
    """``g_φ``: t -> SinusoidalEmb(t) -> Linear -> SiLU -> Linear -> one σ gate per gated leaf."""

    hidden: Linear
    head: Linear
    specs: tuple[GateSpec, ...] = eqx.field(static=True)
    emb_dim: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)

    def __init__(self, specs: tuple[GateSpec, ...], tc: TimeConfig, *, key: PRNGKeyArray):
        k_hidden, k_head, k_logits = jax.random.split(key, 3)
        self.specs, self.emb_dim, self.rank = specs, tc.emb_dim, tc.rank
        # LeCun init: the sinusoids are O(1), so the SiLU sees O(1) inputs and differs across t.
        self.hidden = Linear(tc.emb_dim, tc.hidden, key=k_hidden, std=tc.emb_dim ** -0.5)
        # Zero weights: the gates start independent of t, at the bias's value.
        head = Linear(tc.hidden, sum(s.n_logits(tc.rank) for s in specs), key=k_head, std=0.0)
        keys = jax.random.split(k_logits, len(specs))
        bias = jnp.concatenate([s.init_logits(tc.gate_init, tc.rank, k) for s, k in zip(specs, keys, strict=True)])
        self.head = eqx.tree_at(lambda h: h.bias, head, bias)

    def __call__(self, t: Float[Array, ""]) -> tuple[Array, ...]:
        """The gates at time ``t``, in the order of ``specs``."""
        h = jax.nn.silu(self.hidden(sinusoidal_embedding(TIME_SCALE * t, self.emb_dim)))
        logits = self.head(h)
        splits = list(itertools.accumulate(s.n_logits(self.rank) for s in self.specs))[:-1]
        return tuple(s.gate(chunk, self.rank) for s, chunk in zip(self.specs, jnp.split(logits, splits), strict=True))


class DepthSampler(NamedTuple):
    """The depth ``L'`` of a training step, drawn from its key (``TimeConfig.train_depth``)."""

    dist: str  # "uniform" or "lognormal"
    low: int
    high: int
    mean: int  # lognormal: the depth it centres on (the model's n_layers)
    sigma: float

    @classmethod
    def of(cls, time: TimeConfig, n_layers: int) -> DepthSampler | None:
        if time.train_depth == "fixed":
            return None
        return cls(time.train_depth, time.depth_min, time.depth_max, n_layers, time.depth_sigma)

    def __call__(self, key: PRNGKeyArray) -> Int[Array, ""]:
        if self.dist == "uniform":
            return jax.random.randint(key, (), self.low, self.high + 1)
        # Huginn's log-normal Poisson: L' = 1 + Poisson(e^τ), τ ~ N(log(mean - 1) - σ²/2, σ), so E[e^τ] = mean - 1
        k_tau, k_poisson = jax.random.split(key)
        rate = max(self.mean - 1, 1e-3)
        tau = math.log(rate) - self.sigma ** 2 / 2 + self.sigma * jax.random.normal(k_tau)
        depth = 1 + jax.random.poisson(k_poisson, jnp.exp(tau))
        return jnp.clip(depth, self.low, self.high).astype(jnp.int32)

    def expected(self, samples: int = 100_000) -> float:
        """The mean depth a step runs (uniform: exact; lognormal: over ``samples`` fixed draws), for FLOPs."""
        if self.dist == "uniform":
            return (self.low + self.high) / 2
        draws = jax.jit(jax.vmap(self))(jax.random.split(jax.random.key(0), samples))
        return float(jnp.mean(draws))


class TimeIndexedStack(eqx.Module):
    """``depth`` applications of one shared block, each with its weights gated by ``t = (i + 1) / depth``.

    ``depth`` is a plain int leaf, not a static field, so ``with_depth`` can replace it with ``eqx.tree_at``;
    ``eqx.filter_jit`` treats it as static (a new depth compiles anew) and checkpoints, which hold arrays
    only, take it from the config.
    """

    block: Block
    modulation: TimeModulation
    depth: int
    unroll: int = eqx.field(static=True)
    remat: str = eqx.field(static=True)
    train_depth: DepthSampler | None = eqx.field(static=True, default=None)  # None: train at ``depth``

    def __init__(self, make_block: Callable[[PRNGKeyArray], Block], n_layers: int, time: TimeConfig, *,
                 key: PRNGKeyArray, unroll: int = 1, remat: str = "none"):
        """``make_block(key)`` builds the shared block as a dense stack would build one layer."""
        if not 0.0 < time.gate_init < 1.0:
            raise ValueError(f"time.gate_init must lie in (0, 1), got {time.gate_init}")
        k_block, k_mod = jax.random.split(key)
        block = make_block(k_block)
        specs = gate_specs(block, time.gate)
        self.block = multiply_leaves(block, {s.path: 1.0 / time.gate_init for s in specs})
        self.modulation = TimeModulation(specs, time, key=k_mod)
        self.depth = n_layers
        self.unroll = unroll
        self.remat = remat
        self.train_depth = DepthSampler.of(time, n_layers)

    def times(self) -> Float[Array, " L"]:
        return (jnp.arange(self.depth, dtype=jnp.float32) + 1.0) / self.depth

    def block_at(self, t: Float[Array, ""]) -> Block:
        """The shared block with its weights gated for time ``t``."""
        with jax.named_scope("modulation"):
            gates = self.modulation(t)
            return multiply_leaves(self.block, {s.path: g for s, g in zip(self.modulation.specs, gates, strict=True)})

    def __call__(self, x: Float[Array, "B T D"], ctx: Context, key: PRNGKeyArray | None) -> tuple[Array, dict]:
        if self.train_depth is not None and not ctx.inference and key is not None:
            return self._at_sampled_depth(x, ctx, key)

        def step(t, h, k):
            return self.block_at(t)(h, ctx, k)

        if self.unroll >= self.depth:  # unrolled: a loop, as the shared weights need no per-layer slice
            return loop_layers(step, list(self.times()), x, key, self.remat)
        return scan_layers(step, self.times(), x, self.depth, key, self.unroll, self.remat)

    def _at_sampled_depth(self, x: Float[Array, "B T D"], ctx: Context, key: PRNGKeyArray) -> tuple[Array, dict]:
        """A train step at ``L'`` drawn from ``key``: one program over ``depth_max`` layers, layer ``i`` run at
        ``t = (i + 1) / L'`` while ``i < L'`` and skipped after (``lax.cond`` runs one branch, so a step costs
        ``L'`` layers, not ``depth_max``). The aux reports ``depth``."""
        k_depth, key = jax.random.split(key)
        depth = self.train_depth(k_depth)

        def step(i, h, k):
            t = (jnp.asarray(i, jnp.float32) + 1.0) / depth.astype(jnp.float32)

            def run(h):
                return self.block_at(t)(h, ctx, k)

            def skip(h):  # the identity, with zeros for whatever the block reports
                return h, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(run, h)[1])

            return jax.lax.cond(i < depth, run, skip, h)

        n = self.train_depth.high
        if self.unroll >= self.depth:
            x, aux = loop_layers(step, list(range(n)), x, key, self.remat)
        else:
            x, aux = scan_layers(step, jnp.arange(n), x, n, key, self.unroll, self.remat)
        return x, {**aux, "depth": depth}

    def layers(self) -> tuple[Block, ...]:
        """The shared block gated at each depth's t, as ``depth`` blocks of their own."""
        return tuple(self.block_at(t) for t in self.times())

    def init_state(self, batch: int, layout: object, dtype) -> object:
        """One mixer state per depth: the shared weights run ``depth`` times, each with its own history."""
        return stacked_state(self.block, self.depth, batch, layout, dtype)

    def extend(self, x: Array, states: object, positions: Int[Array, "B C"]) -> tuple[Array, object]:
        def body(h, xs):
            t, state = xs
            return self.block_at(t).extend(h, state, positions)

        return jax.lax.scan(body, x, (self.times(), states), unroll=max(1, min(self.unroll, self.depth)))


def with_depth(model: eqx.Module, depth: int) -> eqx.Module:
    """``model`` (a Decoder with a time-indexed stack) run with ``depth`` layers: ``t = (i + 1) / depth``."""
    if not isinstance(getattr(model, "stack", None), TimeIndexedStack):
        raise ConfigError("depth: only a time-indexed model (model.time.enabled=true) runs at another depth")
    if depth < 1:
        raise ConfigError(f"depth={depth} must be >= 1")
    return eqx.tree_at(lambda m: m.stack.depth, model, depth)
