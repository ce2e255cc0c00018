"""An MoE layer's experts as separate modules, each with arrays of its own: the layout decoding runs them in.

Training keeps the experts stacked (``w_in.weight: [E, D, F]``, moe.py), which the grouped FFN wants. But
a matmul against a dynamically chosen expert of the stack makes XLA:CPU copy that expert's weights out of
it first, and decoding (a few tokens per step) is bound by reading weights. With one module per expert,
expert e's computation is a branch of a ``lax.switch`` that reads e's arrays where they lie and runs only
when some token chose e: each chosen expert's weights are read once per step, the others not at all.

``ExpertList.dispatch`` is dropless (dispatch.py's ``dropless_dispatch`` sends this layout here), in one of
two ways by the number of assignments (static, as shapes are):

- fewer than experts (decoding a token or two): each assignment is one switch over the experts;
- else expert by expert: expert e takes its rows, gathered into the smallest of a few static sizes that
  holds them, the powers of two from the fair share ``ceil(N k / E)`` up to N (a token chooses an expert
  at most once). Each expert is compiled once per size, a few sizes whatever N.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from chimera_jax.models.routing import Routing


def row_buckets(n: int, k: int, num_experts: int) -> tuple[int, ...]:
    """The row counts an expert's rows are padded to: powers of two from the fair share, the last one ``n``."""
    share = -(-n * k // num_experts)
    sizes = [1 << (share - 1).bit_length()]
    while sizes[-1] < n:
        sizes.append(2 * sizes[-1])
    return (*sizes[:-1], n)


class ExpertList(eqx.Module):
    """E expert FFNs (layers.MLP), each with its own arrays."""

    experts: tuple[eqx.Module, ...]

    @classmethod
    def split(cls, stacked: eqx.Module) -> ExpertList:
        """The experts of a stacked module (every array with a leading experts axis), one module each."""
        arrays, static = eqx.partition(stacked, eqx.is_array)
        count = jax.tree_util.tree_leaves(arrays)[0].shape[0]
        return cls(tuple(eqx.combine(jax.tree_util.tree_map(lambda a, e=e: a[e], arrays), static)
                         for e in range(count)))

    def dispatch(self, x: Float[Array, "N D"], routing: Routing) -> Float[Array, "N D"]:
        """Every token through its k experts, combined with its gates: nothing dropped."""
        n, k = routing.experts.shape
        if n * k < len(self.experts):
            return self._by_assignment(x, routing)
        return self._by_expert(x, routing)

    def _by_assignment(self, x: Float[Array, "N D"], routing: Routing) -> Float[Array, "N D"]:
        n, k = routing.experts.shape
        branches = [lambda row, expert=expert: expert(row)[0] for expert in self.experts]
        y = jnp.stack([jax.lax.switch(routing.experts[i, j], branches, x[i]) for i in range(n) for j in range(k)])
        return jnp.einsum("nkd,nk->nd", y.reshape(n, k, -1), routing.gates.astype(y.dtype))

    def _by_expert(self, x: Float[Array, "N D"], routing: Routing) -> Float[Array, "N D"]:
        n, k = routing.experts.shape
        buckets = row_buckets(n, k, len(self.experts))
        flat = routing.experts.reshape(-1)
        order = jnp.argsort(flat, stable=True)  # the assignments, grouped by expert
        sizes = jnp.bincount(flat, length=len(self.experts))
        starts = jnp.cumsum(sizes) - sizes
        # n * k past the end: an assignment of no token, so no slice of `order` runs out of bounds
        order = jnp.concatenate([order, jnp.full((buckets[-1],), n * k, order.dtype)])
        gates = routing.gates.reshape(-1)

        def run(out: Array, expert: eqx.Module, start: Int[Array, ""], size: Int[Array, ""], *, rows: int) -> Array:
            assignments = jax.lax.dynamic_slice(order, (start,), (rows,))
            token = jnp.where(jnp.arange(rows) < size, assignments // k, n)  # n: padding, read as 0, not written
            gate = gates.at[assignments].get(mode="fill", fill_value=0).astype(x.dtype)
            y = expert(x.at[token].get(mode="fill", fill_value=0))[0] * gate[:, None]
            return out.at[token].add(y, mode="drop")

        branches = [lambda out, *_: out] + [functools.partial(run, rows=rows) for rows in buckets]
        out = jnp.zeros_like(x)
        for expert, start, size in zip(self.experts, starts, sizes, strict=True):
            bucket = jnp.where(size == 0, 0, 1 + jnp.searchsorted(jnp.asarray(buckets), size))
            out = jax.lax.switch(bucket, branches, out, expert, start, size)
        return out
