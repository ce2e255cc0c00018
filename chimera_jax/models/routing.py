"""The MoE router: which k of E experts each token goes to, with what weight, and what that costs.

Routing happens in f32 whatever the compute dtype: top-k choices flip on rounding, and the z-loss
squares log-partition values that bf16 cannot hold precisely.

Losses (weights in MoEConfig; each is a mean over the N tokens of the batch, one value per layer):
- Switch load balance (Fedus et al. 2021, eq. 4): ``E * sum_e f_e * P_e``. ``f_e`` is the fraction of
  all N*k assignments (every one of a token's k choices counts, then divided by N*k, so sum_e f_e = 1)
  that choose expert e, counted before any capacity drop; ``P_e`` is the mean full-softmax probability of
  e. Perfect balance (f_e = P_e = 1/E) gives exactly 1; top-1 collapse onto one expert with probability 1
  gives E. (Codebases that do not divide f by k report k at perfect balance.) Gradients reach the router
  through P only: f is a count.
- Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): ``mean_n logsumexp(logits_n)^2``; keeps logits small.
  All-zero logits give ``log(E)^2``, not 0.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import entr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from chimera_jax.models.layers import Linear

GATES = ("softmax_topk", "topk_softmax")


class Routing(NamedTuple):
    """One batch's routing decision; ``experts[:, j]`` is every token's (j+1)-th choice."""

    logits: Float[Array, "N E"]  # f32, after noise and jitter
    probs: Float[Array, "N E"]  # softmax over all experts
    experts: Int[Array, "N k"]
    gates: Float[Array, "N k"]  # combine weights of the chosen experts


class Router(eqx.Module):
    """A linear gate, optional Shazeer noise and Switch jitter (training only), top-k selection.

    ``gate`` picks the combine weights: ``softmax_topk`` keeps the full softmax's probabilities of the
    chosen experts (Switch / GShard: they sum to < 1, and with k = 1 the router still learns from the
    task loss); ``topk_softmax`` renormalises over the k chosen logits (Mixtral; with k = 1 the weight
    is always 1 and only the auxiliary losses train the router).
    """

    gate: Linear
    noise: Linear | None  # Shazeer et al. 2017: logits += N(0, 1) * softplus(x @ noise)
    top_k: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    jitter: float = eqx.field(static=True)  # x *= U(1 - jitter, 1 + jitter) (Switch Transformer)

    def __init__(self, d_model: int, num_experts: int, top_k: int, *, key: PRNGKeyArray, kind: str = "softmax_topk",
                 noisy: bool = False, jitter: float = 0.0, bias: bool = False):
        if kind not in GATES:
            raise ValueError(f"unknown moe.gate {kind!r}: expected one of {GATES}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"moe.top_k={top_k} must be between 1 and moe.num_experts={num_experts}")
        k_gate, k_noise = jax.random.split(key)
        self.gate = Linear(d_model, num_experts, key=k_gate, bias=bias)
        self.noise = Linear(d_model, num_experts, key=k_noise, bias=False) if noisy else None
        self.top_k, self.kind, self.jitter = top_k, kind, jitter

    def __call__(self, x: Float[Array, "N D"], *, key: PRNGKeyArray | None, inference: bool) -> Routing:
        x = x.astype(jnp.float32)
        if not inference and key is not None:
            k_jitter, k_noise = jax.random.split(key)
            if self.jitter > 0:
                x = x * jax.random.uniform(k_jitter, x.shape, minval=1.0 - self.jitter, maxval=1.0 + self.jitter)
            logits = self.gate(x)
            if self.noise is not None:
                logits = logits + jax.random.normal(k_noise, logits.shape) * jax.nn.softplus(self.noise(x))
        else:
            logits = self.gate(x)
        probs = jax.nn.softmax(logits, axis=-1)
        top_logits, experts = jax.lax.top_k(logits, self.top_k)
        if self.kind == "topk_softmax":
            gates = jax.nn.softmax(top_logits, axis=-1)
        else:
            gates = jnp.take_along_axis(probs, experts, axis=-1)
        return Routing(logits, probs, experts, gates)


def expert_load(experts: Int[Array, "N k"], num_experts: int) -> Float[Array, " E"]:
    """f_e: the fraction of all N*k assignments that choose expert e (sums to 1)."""
    return jnp.bincount(experts.reshape(-1), length=num_experts) / experts.size


def balance_loss(probs: Float[Array, "N E"], experts: Int[Array, "N k"]) -> Float[Array, ""]:
    """Switch load-balancing loss ``E * sum_e f_e * P_e``: 1 at perfect balance (module docstring)."""
    num_experts = probs.shape[-1]
    return num_experts * jnp.sum(expert_load(experts, num_experts) * probs.mean(0))


def z_loss(logits: Float[Array, "N E"]) -> Float[Array, ""]:
    """ST-MoE router z-loss ``mean_n logsumexp(logits_n)^2``."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)


def routing_stats(routing: Routing, kept: Bool[Array, "N k"]) -> dict[str, Array]:
    """The unweighted losses and the diagnostics train/metrics.py logs per layer.

    ``load_max_min_ratio`` counts an idle expert as one assignment, so it stays finite (<= N*k).
    """
    num_experts = routing.probs.shape[-1]
    load = expert_load(routing.experts, num_experts)
    return {
        "balance_loss": balance_loss(routing.probs, routing.experts),
        "z_loss": z_loss(routing.logits),
        "expert_load": load,
        "dropped_fraction": jnp.mean(~kept),
        "router_entropy": entr(routing.probs).sum(-1).mean(),  # nats per token; log(E) is uniform
        "load_entropy": entr(load).sum(),  # nats; log(E) at perfect balance
        "load_max_min_ratio": load.max() / jnp.maximum(load.min(), 1.0 / routing.experts.size),
    }
