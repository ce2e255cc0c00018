"""Build any model family from a ModelConfig: the one module that turns config choices into modules.

It imports every model module; none of them imports it back or reads a ModelConfig. Each takes plain
arguments (sizes, its own sub-config, a factory for the part it repeats: the MoE its expert FFN, the
time-indexed stack its shared block), so the families compose without knowing each other.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from chimera_jax.config import ModelConfig
from chimera_jax.models.attention import Attention
from chimera_jax.models.layers import INIT_STD, MLP, Embedding, Linear, Norm, residual_std
from chimera_jax.models.moe import MoE
from chimera_jax.models.ssm import SelectiveSSM
from chimera_jax.models.time_indexed import TimeIndexedStack
from chimera_jax.models.transformer import Block, Decoder, ScannedStack


def make_mixer(cfg: ModelConfig, key: PRNGKeyArray) -> Attention | SelectiveSSM:
    if cfg.mixer == "attention":
        return Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, key=key, bias=cfg.bias,
                         rope_theta=cfg.rope_theta if cfg.positions == "rope" else None, dropout_rate=cfg.dropout,
                         out_std=residual_std(cfg.n_layers), sinks=cfg.attention_sinks)
    if cfg.mixer == "ssm":
        return SelectiveSSM(cfg.d_model, cfg.ssm, key=key, out_std=residual_std(cfg.n_layers))
    raise ValueError(f"unknown mixer {cfg.mixer!r}: expected 'attention' or 'ssm'")


def mlp_factory(cfg: ModelConfig, d_ff: int, bias: bool, dropout_rate: float) -> Callable[[PRNGKeyArray], MLP]:
    """``key -> MLP``: the model's dense FFN (activation and init from ``cfg``) at the given width."""
    return lambda key: MLP(cfg.d_model, d_ff, key=key, activation=cfg.ffn, bias=bias, dropout_rate=dropout_rate,
                           out_std=residual_std(cfg.n_layers))


def make_ffn(cfg: ModelConfig, key: PRNGKeyArray, moe: bool = False) -> MLP | MoE:
    if moe:
        expert = mlp_factory(cfg, cfg.moe.d_ff or cfg.resolved_d_ff(), cfg.moe.bias, dropout_rate=0.0)
        return MoE(cfg.d_model, cfg.moe, expert, key=key, dropout_rate=cfg.dropout)
    return mlp_factory(cfg, cfg.resolved_d_ff(), cfg.bias, cfg.dropout)(key)


def make_norm(cfg: ModelConfig) -> Norm:
    return Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.bias)


def make_block(cfg: ModelConfig, key: PRNGKeyArray, moe: bool = False) -> Block:
    k_mix, k_ffn = jax.random.split(key)
    return Block(norm_mixer=make_norm(cfg), mixer=make_mixer(cfg, k_mix), norm_ffn=make_norm(cfg),
                 ffn=make_ffn(cfg, k_ffn, moe), dropout_rate=cfg.dropout)


def make_stack(cfg: ModelConfig, key: PRNGKeyArray) -> ScannedStack | TimeIndexedStack:
    if cfg.time.enabled:
        return TimeIndexedStack(lambda k: make_block(cfg, k), cfg.n_layers, cfg.time, key=key, unroll=cfg.scan_unroll,
                                remat=cfg.remat)
    every = cfg.moe.every if cfg.moe.enabled else 1
    if every < 1 or cfg.n_layers % every:  # else the stack would silently lose layers
        raise ValueError(f"moe.every={every} must be >= 1 and divide n_layers={cfg.n_layers}")
    n_groups = cfg.n_layers // every
    keys = jax.random.split(key, (every, n_groups))
    groups = tuple(
        eqx.filter_vmap(lambda k, j=j: make_block(cfg, k, moe=cfg.moe.enabled and j == every - 1))(keys[j])
        for j in range(every)
    )
    return ScannedStack(groups, unroll=max(1, cfg.scan_unroll // every), remat=cfg.remat)


def build_model(cfg: ModelConfig, key: PRNGKeyArray) -> Decoder:
    """A freshly initialised model. ``cfg.vocab_size`` and ``cfg.max_seq_len`` must be resolved
    (``chimera_jax.config.resolve_config``); the config is otherwise taken as validated when parsed."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is unresolved: use chimera_jax.config.resolve_config with the tokenizer")
    k_emb, k_pos, k_stack, k_head = jax.random.split(key, 4)
    learned = cfg.positions == "learned"
    if learned and not cfg.max_seq_len:
        raise ValueError("learned positions need model.max_seq_len")
    return Decoder(
        embed=Embedding(cfg.vocab_size, cfg.d_model, key=k_emb),
        pos_embed=INIT_STD / 2 * jax.random.normal(k_pos, (cfg.max_seq_len, cfg.d_model)) if learned else None,
        stack=make_stack(cfg, k_stack),
        final_norm=make_norm(cfg),
        head=None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, key=k_head, bias=False),
        positions=cfg.positions,
        dropout_rate=cfg.dropout,
    )
