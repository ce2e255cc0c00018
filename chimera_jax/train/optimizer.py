"""The optax chain: global-norm clipping, AdamW (decay on matrices only), linear warmup + cosine decay."""

from __future__ import annotations

import equinox as eqx
import jax
import optax

from chimera_jax.config import OptimConfig
from chimera_jax.models.roles import is_matrix


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio,
    )


def decay_mask(params):
    """True for the leaves chimera_jax/models/roles.py calls matrices: only they are weight-decayed."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_matrix(path), params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def trainable(model):
    return eqx.filter(model, eqx.is_inexact_array)
