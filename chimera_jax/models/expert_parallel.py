"""Expert parallelism: under a mesh, the MoE dispatch runs per shard of the batch and the routed rows travel
to their experts' devices with ``jax.lax.all_to_all``.

Left to XLA's SPMD partitioner, the single-device dispatch (an argsort over all B*T tokens) stays whole on
every device, so its memory does not shrink with the mesh. When the model is traced under a mesh
(``jax.set_mesh``), ``shard_dispatch`` runs it inside ``jax.shard_map`` instead: each device takes its own
rows of the batch (split over every mesh axis, as train/mesh.py splits batches) and holds ``E / X`` experts
(``X`` the size of the ``expert`` axis, the contiguous blocks train/mesh.py places there; an fsdp split is
gathered at the shard_map's boundary, inside the layer). The router stays outside, on the whole batch's
arrays: its work is row by row, so the partitioner splits it anyway, and its losses and diagnostics are the
global ones, equal to one device's.

- ``dropless``: each device sorts its ``n * k`` assignments by expert and sends each destination its rows in
  a buffer of ``C = n * min(k, E / X)`` rows, the most ``n`` tokens can send one device (a token's experts are
  distinct), so nothing is dropped whatever the routing. The price is fixed-size buffers: a device
  receives ``X * C`` rows where ``n * k`` arrive on average (X times as many with ``E / X >= k``). The grouped
  FFN treats the empty rows as padding; their memory stays.
- ``capacity``: each device's tokens are a group with its own capacity ``ceil(cf * k * n / E)`` per expert
  (GShard's groups), so which assignments drop depends on the number of shards; it equals
  ``capacity_dispatch`` applied to each shard's tokens on its own.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from chimera_jax.models.dispatch import Dispatched, capacity_dispatch, dropless_dispatch, sorted_dispatch
from chimera_jax.models.grouped import batched_experts, grouped_ffn
from chimera_jax.models.routing import Routing

EXPERT_AXIS = "expert"  # the mesh axis the experts are split over (train/mesh.py's LEADING_AXES)


def dispatch_mesh(num_tokens: int) -> AbstractMesh | None:
    """The mesh the dispatch is split over: the ambient one, when it has several devices, none of its axes is
    manual already (inside another shard_map) and it splits the ``num_tokens`` evenly; else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes or mesh.size == 1 or num_tokens % mesh.size:
        return None
    return mesh


def shard_dispatch(dispatch: str, experts: eqx.Module, x: Float[Array, "N D"], routing: Routing,
                   capacity_factor: float, mesh: AbstractMesh) -> Dispatched:
    """``dispatch`` ("dropless" or "capacity") per device of ``mesh``: each device's rows of ``x`` and
    ``routing``, its slice of the experts, the rows exchanged over the expert axis."""
    rows = P(mesh.axis_names)
    axis = EXPERT_AXIS if mesh.shape.get(EXPERT_AXIS, 1) > 1 else None
    arrays, static = eqx.partition(experts, eqx.is_array)

    def local(arrays, x: Float[Array, "n D"], routing: Routing) -> Dispatched:
        experts = eqx.combine(arrays, static)
        if dispatch == "capacity":
            run = batched_experts if axis is None else functools.partial(exchange_buffers, axis=axis)
            return capacity_dispatch(experts, x, routing, capacity_factor, run)
        if axis is None:
            return dropless_dispatch(experts, x, routing)
        n, k = routing.experts.shape
        per_device = routing.probs.shape[-1] // mesh.shape[axis]
        return sorted_dispatch(experts, x, routing,
                               functools.partial(exchange_groups, axis=axis, slots=n * min(k, per_device)))

    specs = (jax.tree_util.tree_map(lambda _: P(axis), arrays), rows, rows)
    # check_vma off: the single-device code inside (block_matmul's lax.cond, ...) does not mark which of its
    # values vary across devices; every value inside is per-device, and the tests check the gradients.
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(rows, rows), check_vma=False)(arrays, x, routing)


def exchange_buffers(experts: eqx.Module, buffers: Float[Array, "E C D"], *, axis: str) -> Float[Array, "E C D"]:
    """``batched_experts`` on capacity buffers whose experts live on the devices of ``axis``: each device's
    ``[E, C, D]`` go to the experts' devices, which run ``[E / X, X * C, D]``, and come back."""
    n_dev = jax.lax.axis_size(axis)
    num_experts, slots, d = buffers.shape
    per_device = num_experts // n_dev
    received = jax.lax.all_to_all(buffers.reshape(n_dev, per_device, slots, d), axis, 0, 0)  # [source, E/X, C, D]
    out = batched_experts(experts, received.swapaxes(0, 1).reshape(per_device, n_dev * slots, d))
    returned = jax.lax.all_to_all(out.reshape(per_device, n_dev, slots, d).swapaxes(0, 1), axis, 0, 0)
    return returned.reshape(num_experts, slots, d)


def exchange_groups(experts: eqx.Module, rows: Float[Array, "M D"], group_sizes: Int[Array, " E"], *, axis: str,
                    slots: int) -> Float[Array, "M D"]:
    """``grouped_ffn`` on rows sorted by expert whose experts live on the devices of ``axis``: each destination's
    rows (contiguous, since the experts are) go out in ``slots`` rows, the most it can be sent; the receiver
    regroups what all sources sent by its local expert, runs the grouped FFN with the empty slots as padding,
    and sends the results back."""
    n_dev = jax.lax.axis_size(axis)
    m, d = rows.shape
    per_device = group_sizes.size // n_dev
    sizes = group_sizes.reshape(n_dev, per_device)  # this device's rows per (destination, its local expert)
    counts = sizes.sum(1)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(slots)
    send = rows.at[jnp.where(slot < counts[:, None], starts[:, None] + slot, m)].get(mode="fill", fill_value=0)
    received = jax.lax.all_to_all(send, axis, 0, 0)  # [source, slots, D]: each source's rows by local expert
    received_sizes = jax.lax.all_to_all(sizes, axis, 0, 0)  # [source, E / X]

    # Received row (s, j) goes to its local expert's group, after the rows of that expert from sources < s.
    ends = jnp.cumsum(received_sizes, axis=1)
    expert = (slot[None, :, None] >= ends[:, None, :]).sum(-1)  # [source, slots]; per_device: an empty slot
    local_sizes = received_sizes.sum(0)
    offset = (jnp.cumsum(received_sizes, axis=0) - received_sizes) - (ends - received_sizes)  # [source, E / X]
    clipped = jnp.minimum(expert, per_device - 1)
    place = (jnp.cumsum(local_sizes) - local_sizes)[clipped] + jnp.take_along_axis(offset, clipped, 1) + slot
    place = jnp.where(expert < per_device, place, n_dev * slots)  # out of range: dropped in, read back as 0
    grouped = jnp.zeros((n_dev * slots, d), rows.dtype).at[place.reshape(-1)].set(received.reshape(-1, d),
                                                                                   mode="drop")
    out = grouped_ffn(experts, grouped, local_sizes, expected_rows=m)
    returned = jax.lax.all_to_all(out.at[place].get(mode="fill", fill_value=0), axis, 0, 0)  # [destination, ...]
    destination = jnp.repeat(jnp.arange(n_dev), counts, total_repeat_length=m)
    return returned[destination, jnp.arange(m) - starts[destination]]
