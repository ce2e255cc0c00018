"""Three ways to send routed tokens through the experts. They share the router and the experts, and
agree (outputs and gradients) whenever nothing is dropped: ``dense`` is the oracle the others are tested
against.

``experts`` is one FFN module (layers.MLP) whose every array has a leading experts axis, so the expert
computation is written once, in MLP, and each dispatch only decides which rows meet which weights.
Every dispatch takes tokens ``x: [N, D]`` and a Routing and returns ``(y: [N, D], kept: [N, k])``;
``kept`` marks the assignments that were computed (all of them except in ``capacity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from chimera_jax.models.expert_list import ExpertList
from chimera_jax.models.grouped import batched_experts, grouped_ffn
from chimera_jax.models.routing import Routing

Dispatched = tuple[Float[Array, "N D"], Bool[Array, "N k"]]
# The expert computations a dispatch hands its rows to: the experts batched over buffers [E, C, D], and the
# grouped FFN over rows sorted by expert, [M, D] with group sizes [E]. Each runs here or, under a mesh, on the
# experts' devices (expert_parallel.py).
RunExperts = Callable[[eqx.Module, Float[Array, "E C D"]], Float[Array, "E C D"]]
GroupedFFN = Callable[[eqx.Module, Float[Array, "M D"], Int[Array, " E"]], Float[Array, "M D"]]


def _combine(y: Float[Array, "N k D"], gates: Float[Array, "N k"]) -> Float[Array, "N D"]:
    return jnp.einsum("nkd,nk->nd", y, gates.astype(y.dtype))


def dense_dispatch(experts: eqx.Module, x: Float[Array, "N D"], routing: Routing) -> Dispatched:
    """Every expert on every token, combined with the top-k-masked gates: E/k times the work, exact."""
    num_experts = routing.probs.shape[-1]
    out = eqx.filter_vmap(lambda expert: expert(x)[0])(experts)  # [E, N, D]
    weights = jnp.einsum("nke,nk->ne", jax.nn.one_hot(routing.experts, num_experts), routing.gates)
    return jnp.einsum("end,ne->nd", out, weights.astype(out.dtype)), jnp.ones(routing.experts.shape, bool)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor * k * N / E)`` (1.0 fits a perfectly balanced batch)."""
    return math.ceil(capacity_factor * top_k * num_tokens / num_experts)


def capacity_slots(experts: Int[Array, "N k"], num_experts: int,
                   slots: int) -> tuple[Int[Array, "N k"], Bool[Array, "N k"]]:
    """Each assignment's position in its expert's buffer, and whether it fits (position < ``slots``).

    Priority (GShard / Switch): every token's first choice before any token's second choice, and so on;
    within one choice rank, token order. So a later token's first choice displaces an earlier token's
    second choice.
    """
    n, k = experts.shape
    onehot = jax.nn.one_hot(experts.T.reshape(-1), num_experts, dtype=jnp.int32)  # rank-major order
    position = (jnp.cumsum(onehot, axis=0) * onehot).sum(-1) - 1
    position = position.reshape(k, n).T
    return position, position < slots


def capacity_dispatch(experts: eqx.Module, x: Float[Array, "N D"], routing: Routing, capacity_factor: float,
                      run_experts: RunExperts = batched_experts) -> Dispatched:
    """Scatter tokens into per-expert buffers ``[E, C, D]``, ``run_experts`` on them (default: batched over the
    experts, here; expert_parallel.py sends them to the experts' devices), gather back.

    Assignments past capacity are dropped: they add nothing, so the block's residual carries the token.
    The surviving gates are not renormalised.
    """
    (n, d), num_experts = x.shape, routing.probs.shape[-1]
    slots = expert_capacity(n, routing.experts.shape[1], num_experts, capacity_factor)
    position, kept = capacity_slots(routing.experts, num_experts, slots)
    rows = jnp.broadcast_to(x[:, None, :], (*routing.experts.shape, d))
    # Out-of-range positions are the dropped assignments: "drop" skips them, "fill" reads them as 0.
    buffers = jnp.zeros((num_experts, slots, d), x.dtype).at[routing.experts, position].set(rows, mode="drop")
    out = run_experts(experts, buffers)
    y = out.at[routing.experts, position].get(mode="fill", fill_value=0)
    return _combine(y, routing.gates), kept


def dropless_dispatch(experts: eqx.Module, x: Float[Array, "N D"], routing: Routing) -> Dispatched:
    """Sort the N*k assignments by expert, run the grouped FFN (grouped.py), unsort: nothing dropped.

    Experts laid out as an ``ExpertList`` (generation's layout, one module per expert) go expert by expert
    instead (expert_list.py): only the chosen experts are read, in place, where the grouped FFN reads all of
    them and XLA:CPU copies a dynamically chosen expert out of the stack.
    """
    if isinstance(experts, ExpertList):
        return experts.dispatch(x, routing), jnp.ones(routing.experts.shape, bool)
    return sorted_dispatch(experts, x, routing)


def sorted_dispatch(experts: eqx.Module, x: Float[Array, "N D"], routing: Routing,
                    grouped: GroupedFFN = grouped_ffn) -> Dispatched:
    """Sort the N*k assignments by expert (stable), ``grouped`` on the sorted rows (default: the grouped FFN,
    here; expert_parallel.py sends them to the experts' devices), unsort."""
    n, k = routing.experts.shape
    flat = routing.experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=routing.probs.shape[-1])
    out = grouped(experts, x[order // k], group_sizes)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
    return _combine(out[inverse].reshape(n, k, -1), routing.gates), jnp.ones((n, k), bool)
