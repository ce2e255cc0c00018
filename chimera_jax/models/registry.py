"""Build any model family from a ModelConfig: the one place that maps config choices to modules."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from chimera_jax.config import ModelConfig, RunConfig
from chimera_jax.models.layers import INIT_STD, MLP, Attention, Embedding, Linear, Norm
from chimera_jax.models.transformer import Block, Decoder, ScannedStack


def residual_std(cfg: ModelConfig) -> float:
    # GPT-2's scaled init of the projections that write into the residual stream.
    return INIT_STD / math.sqrt(2 * cfg.n_layers)


def make_mixer(cfg: ModelConfig, key: PRNGKeyArray) -> eqx.Module:
    if cfg.mixer == "attention":
        return Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, key=key, bias=cfg.bias,
                         dropout_rate=cfg.dropout, out_std=residual_std(cfg))
    if cfg.mixer == "ssm":
        from chimera_jax.models.ssm import SelectiveSSM

        return SelectiveSSM(cfg, key=key)
    raise ValueError(f"unknown mixer {cfg.mixer!r}: expected 'attention' or 'ssm'")


def make_ffn(cfg: ModelConfig, key: PRNGKeyArray, moe: bool) -> eqx.Module:
    if moe:
        from chimera_jax.models.moe import MoE

        return MoE(cfg, key=key)
    return MLP(cfg.d_model, cfg.resolved_d_ff(), key=key, activation=cfg.ffn, bias=cfg.bias,
               dropout_rate=cfg.dropout, out_std=residual_std(cfg))


def make_block(cfg: ModelConfig, key: PRNGKeyArray, moe: bool = False) -> Block:
    k_mix, k_ffn = jax.random.split(key)
    return Block(
        norm_mixer=Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.bias),
        mixer=make_mixer(cfg, k_mix),
        norm_ffn=Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.bias),
        ffn=make_ffn(cfg, k_ffn, moe),
        dropout_rate=cfg.dropout,
    )


def make_stack(cfg: ModelConfig, key: PRNGKeyArray) -> eqx.Module:
    if cfg.time.enabled:
        from chimera_jax.models.time_indexed import TimeIndexedStack

        return TimeIndexedStack(cfg, key=key)
    every = cfg.moe.every if cfg.moe.enabled else 1
    if every < 1 or cfg.n_layers % every:
        raise ValueError(f"moe.every={every} must be >= 1 and divide n_layers={cfg.n_layers}")
    n_groups = cfg.n_layers // every
    keys = jax.random.split(key, (every, n_groups))
    groups = tuple(
        eqx.filter_vmap(lambda k, j=j: make_block(cfg, k, moe=cfg.moe.enabled and j == every - 1))(keys[j])
        for j in range(every)
    )
    return ScannedStack(groups, unroll=max(1, cfg.scan_unroll // every))


def build_model(cfg: ModelConfig, key: PRNGKeyArray) -> Decoder:
    """A freshly initialised model. ``cfg.vocab_size`` and ``cfg.max_seq_len`` must be resolved."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is unresolved: use resolve_model_config(cfg) with the tokenizer")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
    k_emb, k_pos, k_stack, k_head = jax.random.split(key, 4)
    learned = cfg.positions == "learned"
    if learned and not cfg.max_seq_len:
        raise ValueError("learned positions need model.max_seq_len")
    return Decoder(
        embed=Embedding(cfg.vocab_size, cfg.d_model, key=k_emb),
        pos_embed=INIT_STD / 2 * jax.random.normal(k_pos, (cfg.max_seq_len, cfg.d_model)) if learned else None,
        stack=make_stack(cfg, k_stack),
        final_norm=Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.bias),
        head=None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, key=k_head, bias=False),
        positions=cfg.positions,
        rope_theta=cfg.rope_theta,
        head_dim=cfg.d_model // cfg.n_heads,
        dropout_rate=cfg.dropout,
    )


def cast_floating(tree, dtype: jnp.dtype):
    """Cast every floating-point array leaf (the bf16 compute copy of f32 parameters)."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def resolve_config(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """Fill the model fields that default to the data's: vocabulary size and maximum length."""
    model = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab_size,
                                max_seq_len=cfg.model.max_seq_len or cfg.data.seq_len)
    if model.vocab_size < vocab_size:
        raise ValueError(f"model.vocab_size {model.vocab_size} is smaller than the tokenizer's {vocab_size}")
    return dataclasses.replace(cfg, model=model)
