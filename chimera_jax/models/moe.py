"""Mixture-of-Experts FFN: a drop-in for the dense FFN of a block.

A router (routing.py) sends each token to k of E expert FFNs; a dispatch (dispatch.py) runs them. The
experts are the dense FFN itself: ``make_expert`` (builder.py passes the model's MLP factory) is called E
times under ``filter_vmap``, so each projection is one stacked array ``w_in.weight: [E, D, F]`` (a matrix
by its name, roles.py), never a Python list of modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from chimera_jax.config import MoEConfig
from chimera_jax.models.dispatch import capacity_dispatch, dense_dispatch, dropless_dispatch
from chimera_jax.models.expert_parallel import dispatch_mesh, shard_dispatch
from chimera_jax.models.layers import MLP, dropout
from chimera_jax.models.routing import Router, routing_stats

DISPATCHES = ("dense", "capacity", "dropless")


class MoE(eqx.Module):
    """``x: [B, T, D] -> (y, aux)``; all B*T tokens of the batch are routed together. Traced under a mesh, the
    sparse dispatches run per shard of the batch, the experts split over its ``expert`` axis
    (expert_parallel.py); the routing and its losses stay those of the whole batch.

    ``aux`` holds the already-weighted ``aux_loss`` the train step adds to the loss, the unweighted
    ``balance_loss`` and ``z_loss``, and the diagnostics of ``routing.routing_stats``.
    """

    router: Router
    experts: MLP  # every array has a leading experts axis
    num_experts: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)
    dispatch: str = eqx.field(static=True)
    capacity_factor: float = eqx.field(static=True)
    balance_loss_weight: float = eqx.field(static=True)
    z_loss_weight: float = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)

    def __init__(self, d_model: int, moe: MoEConfig, make_expert: Callable[[PRNGKeyArray], MLP], *,
                 key: PRNGKeyArray, dropout_rate: float = 0.0):
        """``make_expert(key)`` builds one expert FFN without dropout: dropout acts once on the combined
        output (as MLP's on its output), so every dispatch sees the same mask."""
        if moe.dispatch not in DISPATCHES:
            raise ValueError(f"unknown moe.dispatch {moe.dispatch!r}: expected one of {DISPATCHES}")
        k_router, k_experts = jax.random.split(key)
        self.router = Router(d_model, moe.num_experts, moe.top_k, key=k_router, kind=moe.gate,
                             noisy=moe.noisy, jitter=moe.jitter, bias=moe.bias)
        self.experts = eqx.filter_vmap(make_expert)(jax.random.split(k_experts, moe.num_experts))
        self.num_experts, self.top_k, self.dispatch = moe.num_experts, moe.top_k, moe.dispatch
        self.capacity_factor = moe.capacity_factor
        self.balance_loss_weight, self.z_loss_weight = moe.balance_loss_weight, moe.z_loss_weight
        self.dropout_rate = dropout_rate

    def __call__(self, x: Float[Array, "B T D"], *, key: PRNGKeyArray | None = None,
                 inference: bool = False) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
        k_route, k_drop = jax.random.split(key) if key is not None else (None, None)
        tokens = x.reshape(-1, x.shape[-1])
        with jax.named_scope("moe"):
            with jax.named_scope("router"):
                routing = self.router(tokens, key=k_route, inference=inference)
            with jax.named_scope(f"dispatch_{self.dispatch}"):
                mesh = dispatch_mesh(tokens.shape[0]) if self.dispatch != "dense" else None
                if mesh is not None:
                    y, kept = shard_dispatch(self.dispatch, self.experts, tokens, routing, self.capacity_factor, mesh)
                elif self.dispatch == "dense":
                    y, kept = dense_dispatch(self.experts, tokens, routing)
                elif self.dispatch == "capacity":
                    y, kept = capacity_dispatch(self.experts, tokens, routing, self.capacity_factor)
                else:
                    y, kept = dropless_dispatch(self.experts, tokens, routing)
            aux = routing_stats(routing, kept)
            aux["aux_loss"] = self.balance_loss_weight * aux["balance_loss"] + self.z_loss_weight * aux["z_loss"]
            return dropout(y.reshape(x.shape), self.dropout_rate, k_drop, inference), aux

    def inactive_param_count(self) -> int:
        """Parameters a token leaves idle: its E - k unchosen experts, in every stacked layer.

        Counted from shapes, so it works on ``eqx.filter_eval_shape`` skeletons; the router is active.
        """
        sizes = [math.prod(a.shape) for a in jax.tree_util.tree_leaves(self.experts) if hasattr(a, "shape")]
        return sum(sizes) * (self.num_experts - self.top_k) // self.num_experts
