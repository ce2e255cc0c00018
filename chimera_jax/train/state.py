"""TrainerState: everything a run needs to continue exactly, as one pytree."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, UInt32

from chimera_jax.config import RunConfig
from chimera_jax.models.builder import build_model
from chimera_jax.train.optimizer import trainable


class TrainerState(eqx.Module):
    model: eqx.Module
    opt_state: optax.OptState
    step: Int[Array, ""]
    key: UInt32[Array, "2"]  # raw key data, so checkpoints hold plain integers, not typed keys


def init_state(cfg: RunConfig, optimizer: optax.GradientTransformation) -> TrainerState:
    key = jax.random.PRNGKey(cfg.train.seed)
    k_model, k_train = jax.random.split(key)
    model = build_model(cfg.model, k_model)
    return TrainerState(model=model, opt_state=optimizer.init(trainable(model)),
                        step=jnp.asarray(0, jnp.int32), key=k_train)
