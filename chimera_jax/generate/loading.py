"""A trained run's model as generation wants it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from chimera_jax.config import RunConfig
from chimera_jax.models.builder import build_model
from chimera_jax.models.expert_list import ExpertList
from chimera_jax.models.layers import Linear
from chimera_jax.models.moe import MoE
from chimera_jax.models.transformer import Decoder
from chimera_jax.train.checkpoint import load_model


def dropless(model: Decoder, cfg: RunConfig) -> tuple[Decoder, RunConfig]:
    """``model`` with its MoE layers dispatching dropless. The dispatch holds no parameters, so the arrays
    are the trained ones; capacity dispatch would drop tokens depending on who else is in the batch, and a
    prompt's continuation must not depend on the other prompts."""
    if not cfg.model.moe.enabled or cfg.model.moe.dispatch == "dropless":
        return model, cfg
    moe = dataclasses.replace(cfg.model.moe, dispatch="dropless")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, moe=moe))
    skeleton = eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(skeleton), jax.tree_util.tree_leaves(model)), cfg


def load_for_decoding(run_dir: str | Path, *, step: int | None = None,
                      depth: int | None = None) -> tuple[Decoder, RunConfig]:
    """``(model, cfg)`` of a run, MoE layers dropless, a time-indexed stack run at ``depth`` layers if given."""
    model, cfg = dropless(*load_model(run_dir, step))
    if depth is not None:
        from chimera_jax.models.time_indexed import with_depth

        model = with_depth(model, depth)
    return model, cfg


def untied_head(model: Decoder) -> Decoder:
    """``model`` with a tied output head stored as a head of its own, the embedding's transpose: same numbers,
    but XLA:CPU would otherwise copy the transposed [vocab, d_model] table out on every decoding step."""
    if model.head is not None:
        return model
    vocab, d_model = model.embed.weight.shape
    skeleton = eqx.filter_eval_shape(lambda: Linear(d_model, vocab, key=jax.random.PRNGKey(0), bias=False))
    head = eqx.tree_at(lambda h: h.weight, skeleton, jnp.asarray(model.embed.weight.T))
    return eqx.tree_at(lambda m: m.head, model, head, is_leaf=lambda x: x is None)


def decoding_layout(model: Decoder) -> Decoder:
    """``model`` with its arrays laid out for decoding, same numbers: one block per layer (``LayerList``), each
    dropless MoE layer's experts as separate modules (``ExpertList``) and the head untied. A step then reads
    every weight where it lies, where slicing a layer out of a stack, or an expert out of the stacked experts,
    or transposing the tied embedding, copies it."""
    def dropless_experts(m: Decoder) -> list[eqx.Module]:
        return [b.ffn.experts for b in m.stack.blocks if isinstance(b.ffn, MoE) and b.ffn.dispatch == "dropless"]

    model = untied_head(model.with_layer_list())
    return eqx.tree_at(dropless_experts, model, [ExpertList.split(e) for e in dropless_experts(model)])
