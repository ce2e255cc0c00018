"""The decoder every model family shares: embeddings -> a stack of pre-norm residual blocks -> norm -> head.

What varies between families is pluggable:
- the block's token mixer (``Attention`` or the selective SSM) and FFN (``MLP`` or the MoE layer), each
  called as ``module(x, key=, inference=)`` (the mixer also gets ``key_mask=``);
- the stack: ``ScannedStack`` holds separate weights per layer, stacked on a leading axis and run with
  ``jax.lax.scan`` (compile time does not grow with depth); the time-indexed stack shares one block
  across depth (chimera_jax/models/time_indexed.py).
builder.py chooses them from the config.

Blocks return ``(x, aux)``; ``aux`` is a dict of per-layer diagnostics (MoE routing statistics and an
``aux_loss`` the training loss adds), stacked over layers by the scan.

Decoding: every mixer offers ``init_state(batch, layout, dtype)`` and ``extend(x, state, positions)``
(attention a KV cache, the SSM its convolution and scan states), and the stacks carry one state per
layer through the same scan as the weights. ``Decoder.extend`` runs new tokens from a state; position -1
marks right padding, so prompts of different lengths share one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from chimera_jax.models.layers import Embedding, Linear, Norm, dropout, sinusoidal_positions


@dataclass(frozen=True)
class Context:
    """What every block of one forward pass shares: the key-padding mask and the dropout switch."""

    key_mask: Bool[Array, "B T"] | None
    inference: bool


class Block(eqx.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + ffn(norm(x))``."""

    norm_mixer: Norm
    mixer: eqx.Module
    norm_ffn: Norm
    ffn: eqx.Module
    dropout_rate: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "B T D"], ctx: Context, key: PRNGKeyArray | None) -> tuple[Array, dict]:
        with jax.named_scope("block"):
            k_mix, k_ffn, k_d1, k_d2 = jax.random.split(key, 4) if key is not None else (None,) * 4
            h = self.mixer(self.norm_mixer(x), key_mask=ctx.key_mask, key=k_mix, inference=ctx.inference)
            x = x + dropout(h, self.dropout_rate, k_d1, ctx.inference)
            h, aux = self.ffn(self.norm_ffn(x), key=k_ffn, inference=ctx.inference)
            x = x + dropout(h, self.dropout_rate, k_d2, ctx.inference)
            return x, aux

    def extend(self, x: Float[Array, "B C D"], state: Any, positions: Int[Array, "B C"]) -> tuple[Array, Any]:
        """The block over new tokens, its mixer carrying ``state`` on (inference: no dropout)."""
        with jax.named_scope("block"):
            h, state = self.mixer.extend(self.norm_mixer(x), state, positions)
            x = x + h
            h, _ = self.ffn(self.norm_ffn(x), inference=True)
            return x + h, state


def extend_blocks(blocks, x: Array, states: tuple[Any, ...], positions: Int[Array, "B C"]) -> tuple[Array, tuple]:
    """``blocks`` one after another over new tokens, each carrying its own state on."""
    new = []
    for block, state in zip(blocks, states, strict=True):
        x, state = block.extend(x, state, positions)
        new.append(state)
    return x, tuple(new)


def stacked_state(block: Block, copies: int, batch: int, layout: Any, dtype) -> Any:
    """``copies`` empty mixer states on a leading layer axis (``block`` may itself be stacked)."""
    state = block.mixer.init_state(batch, layout, dtype)
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (copies, *a.shape)), state)


# model.remat: what the backward pass of each layer-scan step keeps, and recomputes the rest of.
REMAT_POLICIES = {
    "block": None,  # only the layer's input: the whole block runs again
    "dots": jax.checkpoint_policies.checkpoint_dots,  # the matmul outputs: only the elementwise ops run again
}


# How each layer's weights are placed while that layer runs in the scan (``placing_layers``).
_PLACE_LAYER: ContextVar[Callable[[Any], Any] | None] = ContextVar("place_layer", default=None)


@contextmanager
def placing_layers(place: Callable[[Any], Any] | None) -> Iterator[None]:
    """Within this context, ``scan_layers`` passes each layer's slice of the stacked weights through ``place``
    before the layer runs: a train step on an fsdp mesh gathers one layer's weights at a time (train/mesh.py), as
    Levanter's axis mapping context does for its scanned layers."""
    token = _PLACE_LAYER.set(place)
    try:
        yield
    finally:
        _PLACE_LAYER.reset(token)


def _all_but_placed(prim, *_, **__) -> bool:
    """Remat policy: save all the backward pass needs but placed (resharded) values, a layer's gathered weights:
    the backward pass gathers each layer's weights again, where saving them would keep every layer's."""
    return prim.name != "sharding_constraint"


def scan_layers(step: Callable[[Any, Array, PRNGKeyArray | None], tuple[Array, dict]], stacked: Any,
                x: Array, n: int, key: PRNGKeyArray | None, unroll: int = 1,
                remat: str = "none") -> tuple[Array, dict]:
    """Run ``step(layer_params, x, key)`` over a leading layer axis with ``jax.lax.scan``, ``unroll``
    layers per loop step (``ModelConfig.scan_unroll``), rematerialised as ``remat`` says (``ModelConfig.remat``),
    each layer's params placed inside the loop as ``placing_layers`` says."""
    keys = jax.random.split(key, n) if key is not None else None
    place = _PLACE_LAYER.get()

    def body(h, xs):
        params, k = xs
        return step(params if place is None else place(params), h, k)

    if remat != "none" or place is not None:
        # prevent_cse=False: inside a scan the recomputation cannot be merged with the forward pass anyway
        policy = REMAT_POLICIES[remat] if remat != "none" else _all_but_placed
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    return jax.lax.scan(body, x, (stacked, keys), unroll=max(1, min(unroll, n)))


def loop_layers(step: Callable[[Any, Array, PRNGKeyArray | None], tuple[Array, dict]], layers: Sequence[Any],
                x: Array, key: PRNGKeyArray | None, remat: str = "none") -> tuple[Array, dict]:
    """Run ``step(layer, x, key)`` for each of ``layers`` in a Python loop (unrolled when traced), with the keys
    and remat of ``scan_layers``. Nothing is stacked over the layers: where a scan writes every layer's saved
    activations into zero-filled ``[layers, ...]`` buffers and slices them out again in the backward pass, here
    each stays an array of its own (docs/speed.md). The aux of the layers that report is stacked, as the scan's."""
    keys = jax.random.split(key, len(layers)) if key is not None else (None,) * len(layers)
    if remat != "none":
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat])
    auxes = []
    for layer, k in zip(layers, keys, strict=True):
        x, aux = step(layer, x, k)
        if aux:  # as the scan's: stacked over the layers that report (the MoE ones)
            auxes.append(aux)
    return x, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *auxes) if auxes else {}


class ScannedStack(eqx.Module):
    """``n_layers`` blocks with their own weights, run as a scan over groups of ``len(groups)`` layers.

    ``groups[j]`` holds the j-th block of every group, stacked on a leading axis of ``n_groups``.
    A plain model has one block per group; "MoE every n-th layer" has n (the last one an MoE).
    """

    groups: tuple[Block, ...]
    unroll: int = eqx.field(static=True, default=1)
    remat: str = eqx.field(static=True, default="none")

    @property
    def n_layers(self) -> int:
        return len(self.groups) * self.n_groups

    @property
    def n_groups(self) -> int:
        return jax.tree_util.tree_leaves(self.groups[0])[0].shape[0]

    def __call__(self, x: Array, ctx: Context, key: PRNGKeyArray | None) -> tuple[Array, dict]:
        params, static = eqx.partition(self.groups, eqx.is_array)

        def step(group_params, h, k):
            aux: dict = {}
            blocks = eqx.combine(group_params, static)
            keys = jax.random.split(k, len(blocks)) if k is not None else (None,) * len(blocks)
            for block, kb in zip(blocks, keys, strict=False):
                h, block_aux = block(h, ctx, kb)
                aux.update(block_aux)
            return h, aux

        return scan_layers(step, params, x, self.n_groups, key, self.unroll, self.remat)

    def layers(self) -> tuple[Block, ...]:
        """The blocks in order, each with its own arrays."""
        params, static = eqx.partition(self.groups, eqx.is_array)
        return tuple(eqx.combine(jax.tree_util.tree_map(lambda a, i=i: a[i], params[j]), static[j])
                     for i in range(self.n_groups) for j in range(len(self.groups)))

    def init_state(self, batch: int, layout: Any, dtype) -> tuple[Any, ...]:
        return tuple(stacked_state(group, self.n_groups, batch, layout, dtype) for group in self.groups)

    def extend(self, x: Array, states: tuple[Any, ...], positions: Int[Array, "B C"]) -> tuple[Array, tuple]:
        params, static = eqx.partition(self.groups, eqx.is_array)

        def body(h, xs):
            group_params, group_states = xs
            return extend_blocks(eqx.combine(group_params, static), h, group_states, positions)

        return jax.lax.scan(body, x, (params, states), unroll=self.unroll)


class LayerList(eqx.Module):
    """A stack as a tuple of blocks with their own arrays, run one after another (unrolled when traced).

    For decoding: each step then reads every layer's weights where they lie, where a scan over stacked
    layers slices (copies) each layer's weights first, and a time-indexed stack recomputes its gated
    weights. ``layers()`` of either stack gives the blocks; the numbers are the same.
    """

    blocks: tuple[Block, ...]

    def layers(self) -> tuple[Block, ...]:
        return self.blocks

    def __call__(self, x: Array, ctx: Context, key: PRNGKeyArray | None) -> tuple[Array, dict]:
        return loop_layers(lambda block, h, k: block(h, ctx, k), self.blocks, x, key)

    def init_state(self, batch: int, layout: Any, dtype) -> tuple[Any, ...]:
        return tuple(block.mixer.init_state(batch, layout, dtype) for block in self.blocks)

    def extend(self, x: Array, states: tuple[Any, ...], positions: Int[Array, "B C"]) -> tuple[Array, tuple]:
        return extend_blocks(self.blocks, x, states, positions)


class Decoder(eqx.Module):
    """A GPT-style decoder over token ids ``[B, T]`` returning logits ``[B, T, vocab]`` and per-layer aux."""

    embed: Embedding
    pos_embed: Float[Array, "max_T D"] | None  # learned positions
    stack: eqx.Module
    final_norm: Norm
    head: Linear | None  # None: tied to the embedding
    positions: str = eqx.field(static=True)  # "rope" and "none" add nothing here (rope is the attention's)
    dropout_rate: float = eqx.field(static=True)

    def _embed(self, tokens: Int[Array, "B T"], positions: Int[Array, "*b T"]) -> Float[Array, "B T D"]:
        x = self.embed(tokens)
        if self.positions == "learned":
            x = x + jnp.take(self.pos_embed, positions, axis=0)
        elif self.positions == "sinusoidal":
            x = x + sinusoidal_positions(positions, x.shape[-1])
        return x

    def _head(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        with jax.named_scope("head"):
            x = self.final_norm(x)
            logits = self.embed.attend(x) if self.head is None else self.head(x)
            return logits.astype(jnp.float32)

    def __call__(self, tokens: Int[Array, "B T"], *, key_mask: Bool[Array, "B T"] | None = None,
                 key: PRNGKeyArray | None = None, inference: bool = False) -> tuple[Float[Array, "B T V"], dict]:
        """Mixed precision is the caller's choice: cast the parameters (train/step.py's ``cast_floating``),
        not the inputs."""
        x, aux = self.features(tokens, key_mask=key_mask, key=key, inference=inference)
        return self._head(x), aux

    def features(self, tokens: Int[Array, "B T"], *, key_mask: Bool[Array, "B T"] | None = None,
                 key: PRNGKeyArray | None = None, inference: bool = False) -> tuple[Float[Array, "B T D"], dict]:
        """The stack's output before the final norm and head, and the aux: the train loss applies the head
        itself (models/loss.py)."""
        T = tokens.shape[-1]
        if self.positions == "learned" and T > self.pos_embed.shape[0]:
            raise ValueError(f"sequence length {T} exceeds the learned positions ({self.pos_embed.shape[0]})")
        with jax.named_scope("embed"):
            k_drop, k_stack = jax.random.split(key) if key is not None else (None, None)
            x = dropout(self._embed(tokens, jnp.arange(T)), self.dropout_rate, k_drop, inference)
            x = x.astype(self.embed.weight.dtype)
        return self.stack(x, Context(key_mask, inference), k_stack)

    def with_layer_list(self) -> Decoder:
        """This decoder with its stack as a ``LayerList``: the same numbers, faster to decode."""
        return eqx.tree_at(lambda d: d.stack, self, LayerList(self.stack.layers()))

    def init_state(self, batch: int, layout: Any, dtype=None) -> Any:
        """The empty decoding state for ``batch`` sequences (``layout``: the attention layers' KV cache)."""
        return self.stack.init_state(batch, layout, dtype or self.embed.weight.dtype)

    def extend(self, tokens: Int[Array, "B C"], state: Any,
               positions: Int[Array, "B C"]) -> tuple[Float[Array, "B C V"], Any]:
        """Logits of ``C`` new tokens at ``positions`` (-1: right padding) given the state of the tokens
        before them, and the state after them. Callers keep learned positions within their table."""
        with jax.named_scope("embed"):
            x = self._embed(tokens, jnp.maximum(positions, 0)).astype(self.embed.weight.dtype)
        x, state = self.stack.extend(x, state, positions)
        return self._head(x), state
