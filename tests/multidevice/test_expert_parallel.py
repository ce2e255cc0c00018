"""The MoE dispatch split per shard (models/expert_parallel.py): under a mesh, dropless equals one device in
outputs, aux losses and gradients, capacity equals the single-device dispatch on each shard's tokens, the
tokens travel by all-to-all, and the step's temporaries shrink."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from chimera_jax.config import ModelConfig, MoEConfig, resolve_config
from chimera_jax.models import moe as moe_module
from chimera_jax.models.builder import make_ffn
from chimera_jax.models.dispatch import capacity_dispatch
from chimera_jax.models.routing import routing_stats
from chimera_jax.train.mesh import AXES, make_mesh, param_spec
from chimera_jax.train.step import step_memory

MESHES = {"data 8": (8, 1, 1), "data 2, fsdp 2, expert 2": (2, 2, 2), "expert 8": (1, 1, 8)}
SHAPE = (8, 6, 16)  # B, T, D
PER_DEVICE = SHAPE[0] * SHAPE[1] // 8  # tokens


def make_layer(dispatch: str, skew: bool = False):
    """A GELU MoE with biases, 8 experts of top 2 (capacity factor 1); ``skew`` biases the router towards experts 6
    and 7, so every token sends both its rows to their device(s): the fullest buffers dropless can have."""
    cfg = ModelConfig(vocab_size=61, max_seq_len=16, d_model=SHAPE[-1], n_layers=1, n_heads=2,
                      moe=MoEConfig(enabled=True, num_experts=8, top_k=2, d_ff=32, bias=True, dispatch=dispatch,
                                    capacity_factor=1.0))
    layer = make_ffn(cfg, jax.random.PRNGKey(0), moe=True)
    layer = eqx.tree_at(lambda m: m.router.gate.weight, layer, layer.router.gate.weight * 50)  # uneven loads
    if skew:
        layer = eqx.tree_at(lambda m: m.router.gate.bias, layer, jnp.zeros(8).at[6:].set(100.0))
    return layer


def loss(layer, x):
    y, aux = layer(x, inference=True)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    return jnp.sum(y * cotangent) + aux["aux_loss"], (y, aux)


value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))


def placed(layer, x, mesh):
    """The layer placed as the train step places parameters (experts over ``expert``, matrices over ``fsdp``), the
    tokens' rows over every axis."""
    arrays, static = eqx.partition(layer, eqx.is_array)
    arrays = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.device_put(a, NamedSharding(mesh, param_spec(path, a.shape, mesh))), arrays)
    return eqx.combine(arrays, static), jax.device_put(x, NamedSharding(mesh, P(AXES)))


def on_mesh(shape, fn, layer, x):
    mesh = jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    with jax.set_mesh(mesh):
        layer, x = placed(layer, x, mesh)
        assert "shard_map" in str(eqx.filter_make_jaxpr(fn)(layer, x)[0])  # the per-shard path, not the partitioner's
        compiled = fn.lower(layer, x).compile()
        return compiled(layer, x), compiled.compiled.as_text()


def assert_trees_close(actual, expected, rtol=1e-5):
    """Leaf by leaf, to ``rtol`` of each element or of the leaf's largest element (sums over the devices' tokens
    round differently)."""
    for a, b in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


@functools.cache
def tokens() -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(1), SHAPE)


@functools.cache
def single_device(skew: bool):
    return value_and_grad(make_layer("dropless", skew), tokens())


@pytest.mark.parametrize("skew", [False, True], ids=["uneven", "all_on_two_experts"])
@pytest.mark.parametrize("mesh", MESHES)
def test_dropless_on_a_mesh_equals_one_device(mesh, skew):
    ((_, (y, aux)), grads), hlo = on_mesh(MESHES[mesh], value_and_grad, make_layer("dropless", skew), tokens())
    (_, (y_ref, aux_ref)), grads_ref = single_device(skew)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert_trees_close(aux, aux_ref)  # the losses and diagnostics of the whole batch
    assert_trees_close(grads, grads_ref, rtol=1e-4)
    assert ("all-to-all" in hlo) == (MESHES[mesh][2] > 1)
    if skew:
        np.testing.assert_array_equal(aux["expert_load"], [0] * 6 + [0.5, 0.5])


def test_capacity_on_a_mesh_is_the_single_device_dispatch_on_each_shard():
    """GShard's groups: each device's 6 tokens have their own capacity ceil(1.0 * 2 * 6 / 8) = 2 per expert, so
    the drops differ from one device's (capacity 12 for all 48 tokens)."""
    layer = make_layer("capacity")

    def per_shard(layer, x):  # the oracle: capacity_dispatch on each device's rows, the routing of the whole batch
        flat = x.reshape(-1, x.shape[-1])
        routing = layer.router(flat, key=None, inference=True)

        def shard(device: int):
            rows = slice(device * PER_DEVICE, (device + 1) * PER_DEVICE)
            return capacity_dispatch(layer.experts, flat[rows], jax.tree_util.tree_map(lambda a: a[rows], routing), 1.0)

        y, kept = (jnp.concatenate(parts) for parts in zip(*map(shard, range(8)), strict=True))
        aux = routing_stats(routing, kept)
        aux["aux_loss"] = layer.balance_loss_weight * aux["balance_loss"] + layer.z_loss_weight * aux["z_loss"]
        cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)
        return jnp.sum(y.reshape(x.shape) * cotangent) + aux["aux_loss"], (y.reshape(x.shape), aux)

    (_, (y_ref, aux_ref)), grads_ref = eqx.filter_jit(eqx.filter_value_and_grad(per_shard, has_aux=True))(layer,
                                                                                                          tokens())
    (_, (y_whole, aux_whole)), _ = value_and_grad(layer, tokens())
    assert 0 < aux_ref["dropped_fraction"] != aux_whole["dropped_fraction"]
    ((_, (y, aux)), grads), _ = on_mesh(MESHES["data 2, fsdp 2, expert 2"], value_and_grad, layer, tokens())
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert_trees_close(aux, aux_ref)
    assert_trees_close(grads, grads_ref, rtol=1e-4)


def test_per_shard_dispatch_shrinks_the_steps_temporaries_on_data_8(run_config, monkeypatch):
    cfg = resolve_config(run_config("--mesh.data", "8", "--model.n_layers", "1", moe=True), 256)
    mesh = make_mesh(cfg)
    split = step_memory(cfg, mesh)["temporaries"]
    monkeypatch.setattr(moe_module, "dispatch_mesh", lambda num_tokens: None)  # the partitioner's dispatch
    whole = step_memory(cfg, mesh)["temporaries"]
    assert split < 0.5 * whole, (split, whole)

