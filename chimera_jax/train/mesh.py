"""The device mesh, and where every array of a run lives on it.

The mesh has three axes (``MeshConfig``): ``data`` and ``expert`` and ``fsdp`` all split the batch; ``fsdp``
also splits every matrix and its optimizer moments, and ``expert`` each MoE layer's experts. A parameter's
placement is read from its names, as Levanter's axis mapping or MaxText's logical axis rules do, with the
two tables below; XLA's SPMD partitioner then inserts the collectives (the gathers of fsdp-split weights,
one layer at a time inside the layer scan, and the gradient reductions). The MoE layers send their tokens to
the expert shards themselves (models/expert_parallel.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from chimera_jax import data
from chimera_jax.config import ConfigError, RunConfig
from chimera_jax.models.params import is_param
from chimera_jax.models.roles import is_matrix

AXES = ("data", "fsdp", "expert")
BATCH_AXES = AXES  # every device holds different rows of the batch

STACKED = "groups"  # the attribute holding a stack's layers, gathered one layer at a time (``layer_placement``)
# The leading axes a parameter gets from an attribute on its path, in path order, and the mesh axis each is
# split over (None: every device holds all of it).
LEADING_AXES: dict[str, str | None] = {
    STACKED: None,  # ScannedStack: layers stacked on axis 0; fsdp splits within each layer instead
    "experts": "expert",  # MoE: experts stacked on the next axis
}
# Matrices (roles.py) also split their largest other dimension that divides evenly over this axis; the
# vectors (biases, norm scales) are small and stay whole on every device.
MATRIX_AXIS = "fsdp"


def mesh_shape(cfg: RunConfig, n_devices: int) -> dict[str, int]:
    """The axis sizes of ``cfg.mesh`` on ``n_devices`` (-1 resolved); ConfigError naming the fields when they
    do not fit the devices, the experts or the batch."""
    sizes = {axis: getattr(cfg.mesh, axis) for axis in AXES}
    named = " x ".join(f"mesh.{axis}={size}" for axis, size in sizes.items())
    fixed = math.prod(size for size in sizes.values() if size != -1)
    rest = [axis for axis, size in sizes.items() if size == -1]
    if n_devices % fixed or (not rest and fixed != n_devices):
        raise ConfigError(f"{named} must multiply to the {n_devices} devices present (-1 on one axis takes the rest)")
    sizes.update({axis: n_devices // fixed for axis in rest})
    moe = cfg.model.moe
    if moe.enabled and moe.num_experts % sizes["expert"]:
        raise ConfigError(f"mesh.expert={sizes['expert']} must divide model.moe.num_experts={moe.num_experts}")
    if cfg.train.batch_size % n_devices:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be divisible by the {n_devices} devices "
                          f"of the mesh ({named}), which split every batch")
    return sizes


def make_mesh(cfg: RunConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The run's mesh over ``devices`` (default: every device of every process)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(cfg, len(devices))
    return jax.make_mesh(tuple(sizes.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def param_spec(path: Sequence, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of the parameter at ``path`` (a key path from the model's root) by the two tables."""
    lead = [LEADING_AXES[k.name] for k in path if isinstance(k, jax.tree_util.GetAttrKey) and k.name in LEADING_AXES]
    rest = shape[len(lead):]
    tail: list[str | None] = [None] * len(rest)
    fits = [i for i, size in enumerate(rest) if size % mesh.shape[MATRIX_AXIS] == 0]
    if is_matrix(path) and fits:
        tail[max(fits, key=rest.__getitem__)] = MATRIX_AXIS
    return P(*lead, *tail)


def state_shardings(state, mesh: Mesh):
    """NamedShardings for a TrainerState's arrays (or shapes, or tracers), None elsewhere (usable by
    ``eqx.filter_shard``): the model's parameters by the tables, every copy of the model's tree inside the
    optimizer state (Adam's moments) like the parameters, everything else (step, key, counts) replicated."""
    model_type = type(state.model)

    def param(path, x):
        return NamedSharding(mesh, param_spec(path, x.shape, mesh))

    def place(node):
        if isinstance(node, model_type):
            return jax.tree_util.tree_map_with_path(param, eqx.filter(node, is_param))
        return NamedSharding(mesh, P()) if is_param(node) else None

    return jax.tree_util.tree_map(place, state, is_leaf=lambda node: isinstance(node, model_type))


def _gathered(spec: P) -> P:
    return P(*(None if axis == MATRIX_AXIS else axis for axis in spec))


def _in_stack(path: Sequence) -> bool:
    return any(isinstance(k, jax.tree_util.GetAttrKey) and k.name == STACKED for k in path)


def compute_shardings(model, mesh: Mesh):
    """Where the train step's compute copy of the parameters lives: the stacked layers as stored (each layer is
    gathered when it runs: ``layer_placement``), everything else less the fsdp split (gathered once per step, its
    gradients reduced back to the split). The experts stay split over the expert axis (models/expert_parallel.py
    sends the tokens to them)."""

    def place(path, x):
        spec = param_spec(path, x.shape, mesh)
        return NamedSharding(mesh, spec if _in_stack(path) else _gathered(spec))

    return jax.tree_util.tree_map_with_path(place, eqx.filter(model, is_param))


def layer_placement(mesh: Mesh) -> Callable[[Any], Any] | None:
    """How the layer scan places each layer's slice of the stacked weights while that layer runs (the models'
    ``placing_layers``): gathered over fsdp for that layer alone, so the whole gathered model is never live. The
    backward pass gathers each layer again and reduces its gradients back to their split. None without fsdp."""
    if mesh.shape[MATRIX_AXIS] == 1:
        return None

    def gather(layer):
        whole = jax.tree_util.tree_map_with_path(
            lambda path, x: NamedSharding(mesh, _gathered(param_spec(path, x.shape, mesh))), layer)
        return jax.lax.with_sharding_constraint(layer, whole)

    return gather


def shard_state(state, mesh: Mesh):
    """``state`` constrained (inside jit) or moved (outside) to ``state_shardings``."""
    return eqx.filter_shard(state, state_shardings(state, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches ``[grad_accum, batch, T]``: rows split over every axis, each micro-batch over all devices."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def place_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array that every process holds whole (an evaluation batch), placed with its rows split over every
    device, as training batches are."""
    return jax.make_array_from_callback(array.shape, NamedSharding(mesh, P(BATCH_AXES)), lambda index: array[index])


def place_batch(tokens: np.ndarray, cfg: RunConfig, step: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """Training batch ``step`` (``data.get_batch``'s) as global ``[grad_accum, batch, T]`` arrays on the mesh.

    Each process reads only the rows its own devices hold; no process ever holds the whole batch.
    """
    tc = cfg.train
    shape = (tc.grad_accum, tc.batch_size, cfg.data.seq_len)
    sharding = batch_sharding(mesh)
    rows = np.arange(tc.grad_accum * tc.batch_size).reshape(shape[:2])

    def read(index: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        share = rows[:, index[1]]
        x, y = data.get_batch(tokens, cfg.data.seq_len, rows.size, tc.seed, step, rows=share.reshape(-1))
        return x.reshape(*share.shape, -1), y.reshape(*share.shape, -1)

    def rows_of(index: tuple[slice, ...]) -> tuple:  # a device's share of the rows, as a key (slices do not hash)
        return index[1].start, index[1].stop

    shares = {rows_of(index): read(index) for index in sharding.addressable_devices_indices_map(shape).values()}
    return tuple(jax.make_array_from_callback(shape, sharding, lambda index, i=i: shares[rows_of(index)][i])
                 for i in (0, 1))
