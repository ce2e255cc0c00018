"""The optax chain: global-norm clipping, AdamW (decay on matrices only), linear warmup + cosine decay."""

from __future__ import annotations

import equinox as eqx
import jax
import optax

from chimera_jax.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio,
    )


def decay_mask(params):
    """True for matrices: leaves named ``weight`` or ``w_*`` (see chimera_jax/models/layers.py).

    A rank test would not do: stacked layers give norm scales a leading layer axis.
    """

    def is_matrix(path, leaf) -> bool:
        if leaf is None:
            return False
        last = path[-1]
        name = last.name if isinstance(last, jax.tree_util.GetAttrKey) else ""
        return name == "weight" or name.startswith("w_")

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def trainable(model):
    return eqx.filter(model, eqx.is_inexact_array)
