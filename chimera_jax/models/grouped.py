"""Grouped expert FFN: rows sorted by expert, group e (``group_sizes[e]`` consecutive rows) through expert e.

``experts`` is the FFN module (layers.MLP) with a leading experts axis on every array. Both
implementations run that FFN's code unchanged, with each of its Linear layers swapped for a grouped one:

- ``grouped_ragged``: ``jax.lax.ragged_dot``, the grouped matmul with native kernels on GPU and TPU. On
  CPU, XLA has none: ragged_dot lowers to a masked product against all E experts, as slow as the dense
  oracle (``scripts/bench.py moe`` shows it).
- ``grouped_blocks``: each group padded to whole blocks of rows and ``block_matmul``, a scan with one
  expert's weight per block, skipping unused blocks.
- ``grouped_fair_share`` (CPU): each expert's first ``ceil(M / E)`` rows (its fair share) through the
  experts as one batched FFN over ``[E, C, D]`` buffers, like ``capacity`` dispatch, and only the rows
  past it through ``grouped_blocks``. Batched matmuls need no per-block weight copies, so this beats
  the block scan alone (docs/moe.md, "The CPU grouped FFN", has the figures).

``grouped_ffn`` picks ragged_dot on GPU/TPU and the fair-share split on CPU (the default backend).

Rows past ``sum(group_sizes)`` are padding (expert_parallel.py's fixed-size receive buffers): every
implementation leaves the routed rows as they would be without them, and their own outputs are
meaningless.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from chimera_jax.models.layers import Linear


def block_rows(rows: int, num_experts: int) -> int:
    """Rows per block on CPU: half an expert's fair share, as a power of two in [16, 512].

    Padding costs under one block per expert (about a quarter of the rows at this size); each block is
    one loop step and one matmul, so smaller blocks pay per-step overhead (docs/moe.md, "What was tried
    for the CPU grouped matmul", has the block-size timings).
    """
    share = max(rows // (2 * num_experts), 1)
    return min(max(1 << (share.bit_length() - 1), 16), 512)


def overflow_block_rows(fair_share: int) -> int:
    """Rows per block for the rows past the fair share: an eighth of it, a power of two in [16, 512].

    Few rows overflow, so small blocks waste little padding; the bound on the block count grows as
    they shrink (unused blocks still cost a loop step), hence a fraction of the share, not a constant.
    """
    return min(max(1 << (max(fair_share // 8, 1).bit_length() - 1), 16), 512)


def grouped_ffn(experts: eqx.Module, rows: Float[Array, "M D"], group_sizes: Int[Array, " E"],
                expected_rows: int | None = None) -> Float[Array, "M D"]:
    """``expected_rows``: how many rows are routed ones on a typical call when the rest are padding (default:
    all M); the CPU path sizes its fair share from it."""
    # Chosen when tracing, for the default backend: lax.platform_dependent would keep both branches under
    # autodiff (a slower compile and step on CPU, docs/speed.md).
    if jax.default_backend() == "cpu":
        return grouped_fair_share(experts, rows, group_sizes, expected_rows)
    return grouped_ragged(experts, rows, group_sizes)


class RaggedLinear(eqx.Module):
    """A stacked Linear ``[E, d_in, d_out]`` on expert-sorted rows, as one ``jax.lax.ragged_dot``."""

    weight: Float[Array, "E d_in d_out"]
    bias: Float[Array, "E d_out"] | None
    group_sizes: Int[Array, " E"]

    def __call__(self, x: Float[Array, "M d_in"]) -> Float[Array, "M d_out"]:
        y = jax.lax.ragged_dot(x, self.weight.astype(x.dtype), self.group_sizes)
        if self.bias is None:
            return y
        expert_of_row = jnp.repeat(jnp.arange(self.group_sizes.size), self.group_sizes, total_repeat_length=x.shape[0])
        return y + self.bias[expert_of_row].astype(x.dtype)


class BlockLinear(eqx.Module):
    """A stacked Linear on rows laid out in blocks of ``block`` rows, block j using expert ``block_expert[j]``."""

    weight: Float[Array, "E d_in d_out"]
    bias: Float[Array, "E d_out"] | None
    block_expert: Int[Array, " n_blocks"]  # E marks an unused block

    def __call__(self, x: Float[Array, "R d_in"]) -> Float[Array, "R d_out"]:
        n_blocks = self.block_expert.size
        weight = self.weight.astype(x.dtype)
        # Without a bias, a zero one: its gradient (a row sum per block) is discarded and costs nothing.
        bias = jnp.zeros(weight.shape[::2], x.dtype) if self.bias is None else self.bias.astype(x.dtype)
        y = block_matmul(x.reshape(n_blocks, -1, x.shape[-1]), weight, bias, self.block_expert)
        return y.reshape(x.shape[0], -1)


def _swap_linears(experts: eqx.Module, make) -> eqx.Module:
    """The expert FFN with every Linear replaced by ``make(linear)``: its code runs unchanged."""
    is_linear = lambda node: isinstance(node, Linear)  # noqa: E731
    return jax.tree_util.tree_map(lambda node: make(node) if is_linear(node) else node, experts, is_leaf=is_linear)


def grouped_ragged(experts: eqx.Module, rows: Float[Array, "M D"],
                   group_sizes: Int[Array, " E"]) -> Float[Array, "M D"]:
    grouped = _swap_linears(experts, lambda lin: RaggedLinear(lin.weight, lin.bias, group_sizes))
    return grouped(rows)[0]


def _group_positions(group_sizes: Int[Array, " E"],
                     m: int) -> tuple[Int[Array, " E"], Int[Array, " M"], Int[Array, " M"]]:
    """Each group's first row, and each sorted row's expert and its index within its group."""
    start = jnp.cumsum(group_sizes) - group_sizes
    expert_of_row = jnp.repeat(jnp.arange(group_sizes.size), group_sizes, total_repeat_length=m)
    return start, expert_of_row, jnp.arange(m) - start[expert_of_row]


def batched_experts(experts: eqx.Module, buffers: Float[Array, "E C D"]) -> Float[Array, "E C D"]:
    """Expert e's FFN on ``buffers[e]``, for every e at once (batched matmuls over the experts axis)."""
    return eqx.filter_vmap(lambda expert, h: expert(h)[0])(experts, buffers)


def grouped_blocks(experts: eqx.Module, rows: Float[Array, "M D"], group_sizes: Int[Array, " E"],
                   block: int | None = None, skip: int = 0) -> Float[Array, "M D"]:
    """Each group padded to whole blocks of ``block`` rows (default ``block_rows``); every matmul is a
    ``block_matmul``. The first ``skip`` rows of every group are left out (their output is 0).

    The block count is the static worst case ``min(R, E) + (R - E) // block`` for the ``R = M - skip``
    rows that can remain; unused blocks are skipped, so the work is the routed rows plus under one
    block of padding per expert.
    """
    m, d = rows.shape
    num_experts = group_sizes.size
    block = block or block_rows(m, num_experts)
    bound = max(m - skip, 0)
    n_blocks = max(min(bound, num_experts) + max(bound - num_experts, 0) // block, 1)
    sizes = jnp.maximum(group_sizes - skip, 0)
    padded = -(-sizes // block) * block
    padded_end = jnp.cumsum(padded)
    _, expert_of_row, local = _group_positions(group_sizes, m)
    # Rows in the first `skip` of their group go out of range: dropped on the way in, 0 on the way out.
    dest = jnp.where(local >= skip, (padded_end - padded)[expert_of_row] + local - skip, n_blocks * block)
    block_expert = jnp.searchsorted(padded_end, jnp.arange(n_blocks) * block, side="right")
    grouped = _swap_linears(experts, lambda lin: BlockLinear(lin.weight, lin.bias, block_expert))
    out = grouped(jnp.zeros((n_blocks * block, d), rows.dtype).at[dest].set(rows, mode="drop"))[0]
    return out.at[dest].get(mode="fill", fill_value=0)


def grouped_fair_share(experts: eqx.Module, rows: Float[Array, "M D"], group_sizes: Int[Array, " E"],
                       expected_rows: int | None = None) -> Float[Array, "M D"]:
    """Each group's first ``C = ceil(expected_rows / E)`` rows (default ``expected_rows = M``) as one batched
    FFN over ``[E, C, D]`` buffers (empty slots are zero rows), the rest by ``grouped_blocks(..., skip=C)``.
    Exact: every row is computed once.
    """
    m = rows.shape[0]
    slots = -(-(expected_rows or m) // group_sizes.size)
    start, expert_of_row, local = _group_positions(group_sizes, m)
    slot = jnp.arange(slots)
    source = jnp.where(slot[None] < group_sizes[:, None], start[:, None] + slot[None], m)  # m: an empty slot
    out = batched_experts(experts, rows.at[source].get(mode="fill", fill_value=0))
    in_buffer = local < slots
    from_buffers = out.at[expert_of_row, jnp.where(in_buffer, local, slots)].get(mode="fill", fill_value=0)
    rest = grouped_blocks(experts, rows, group_sizes, block=overflow_block_rows(slots), skip=slots)
    return jnp.where(in_buffer[:, None], from_buffers, rest)


@jax.custom_vjp
def block_matmul(x: Float[Array, "n b d_in"], w: Float[Array, "E d_in d_out"], b: Float[Array, "E d_out"],
                 block_expert: Int[Array, " n"]) -> Float[Array, "n b d_out"]:
    """``y[j] = x[j] @ w[block_expert[j]] + b[block_expert[j]]`` as a scan; blocks with ``block_expert >= E``
    give 0.

    The custom gradient adds each block's ``x[j]^T @ g[j]`` into ``dw[e]`` in place; autodiff of the
    scan would add a full ``[E, d_in, d_out]`` cotangent per block. The bias is added per block, not
    gathered per row: a per-row gather's gradient is a scatter-add over all rows, slow on CPU.
    """
    num_experts, _, d_out = w.shape

    def body(_, xs):
        e, h = xs
        return None, jax.lax.cond(e < num_experts, lambda: h @ w[e] + b[e],
                                  lambda: jnp.zeros((h.shape[0], d_out), h.dtype))

    return jax.lax.scan(body, None, (block_expert, x))[1]


def _block_matmul_fwd(x, w, b, block_expert):
    return block_matmul(x, w, b, block_expert), (x, w, b, block_expert)


def _block_matmul_bwd(residuals, g):
    x, w, b, block_expert = residuals
    num_experts = w.shape[0]

    def body(carry, xs):
        dw, db = carry
        e, h, g_j = xs

        def run():
            return (dw.at[e].add(h.T @ g_j), db.at[e].add(g_j.sum(0))), g_j @ w[e].T

        return jax.lax.cond(e < num_experts, run, lambda: ((dw, db), jnp.zeros_like(h)))

    (dw, db), dx = jax.lax.scan(body, (jnp.zeros_like(w), jnp.zeros_like(b)), (block_expert, x, g))
    return dx, dw, db, None


block_matmul.defvjp(_block_matmul_fwd, _block_matmul_bwd)
