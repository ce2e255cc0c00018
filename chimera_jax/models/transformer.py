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
"""

from __future__ import annotations

from collections.abc import Callable
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


def scan_layers(step: Callable[[Any, Array, PRNGKeyArray | None], tuple[Array, dict]], stacked: Any,
                x: Array, n: int, key: PRNGKeyArray | None, unroll: int = 1) -> tuple[Array, dict]:
    """Run ``step(layer_params, x, key)`` over a leading layer axis with ``jax.lax.scan``, ``unroll``
    layers per loop step (``ModelConfig.scan_unroll``)."""
    keys = jax.random.split(key, n) if key is not None else None

    def body(h, xs):
        params, k = xs
        return step(params, h, k)

    return jax.lax.scan(body, x, (stacked, keys), unroll=max(1, min(unroll, n)))


class ScannedStack(eqx.Module):
    """``n_layers`` blocks with their own weights, run as a scan over groups of ``len(groups)`` layers.

    ``groups[j]`` holds the j-th block of every group, stacked on a leading axis of ``n_groups``.
    A plain model has one block per group; "MoE every n-th layer" has n (the last one an MoE).
    """

    groups: tuple[Block, ...]
    unroll: int = eqx.field(static=True, default=1)

    @property
    def n_layers(self) -> int:
        return len(self.groups) * jax.tree_util.tree_leaves(self.groups[0])[0].shape[0]

    def __call__(self, x: Array, ctx: Context, key: PRNGKeyArray | None) -> tuple[Array, dict]:
        params, static = eqx.partition(self.groups, eqx.is_array)
        n_groups = jax.tree_util.tree_leaves(params)[0].shape[0]

        def step(group_params, h, k):
            aux: dict = {}
            blocks = eqx.combine(group_params, static)
            keys = jax.random.split(k, len(blocks)) if k is not None else (None,) * len(blocks)
            for block, kb in zip(blocks, keys, strict=False):
                h, block_aux = block(h, ctx, kb)
                aux.update(block_aux)
            return h, aux

        return scan_layers(step, params, x, n_groups, key, self.unroll)


class Decoder(eqx.Module):
    """A GPT-style decoder over token ids ``[B, T]`` returning logits ``[B, T, vocab]`` and per-layer aux."""

    embed: Embedding
    pos_embed: Float[Array, "max_T D"] | None  # learned positions
    stack: eqx.Module
    final_norm: Norm
    head: Linear | None  # None: tied to the embedding
    positions: str = eqx.field(static=True)  # "rope" and "none" add nothing here (rope is the attention's)
    dropout_rate: float = eqx.field(static=True)

    def __call__(self, tokens: Int[Array, "B T"], *, key_mask: Bool[Array, "B T"] | None = None,
                 key: PRNGKeyArray | None = None, inference: bool = False) -> tuple[Float[Array, "B T V"], dict]:
        """Mixed precision is the caller's choice: cast the parameters (train/step.py's ``cast_floating``),
        not the inputs."""
        T = tokens.shape[-1]
        with jax.named_scope("embed"):
            x = self.embed(tokens)
            if self.positions == "learned":
                if T > self.pos_embed.shape[0]:
                    raise ValueError(f"sequence length {T} exceeds the learned positions ({self.pos_embed.shape[0]})")
                x = x + self.pos_embed[:T]
            elif self.positions == "sinusoidal":
                x = x + sinusoidal_positions(T, x.shape[-1])
            k_drop, k_stack = jax.random.split(key) if key is not None else (None, None)
            x = dropout(x, self.dropout_rate, k_drop, inference).astype(self.embed.weight.dtype)
        x, aux = self.stack(x, Context(key_mask, inference), k_stack)
        with jax.named_scope("head"):
            x = self.final_norm(x)
            logits = self.embed.attend(x) if self.head is None else self.head(x)
            return logits.astype(jnp.float32), aux
