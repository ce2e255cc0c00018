"""The dense decoder: causality, masks, the scan against an unrolled loop, and parameter counts."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import ModelConfig, MoEConfig, TimeConfig
from chimera_jax.models.params import param_report
from chimera_jax.models.registry import build_model
from chimera_jax.models.transformer import Context


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, max_seq_len=16, d_model=32, n_layers=3, n_heads=4)
    return ModelConfig(**{**base, **kw})


VARIANTS = [
    dict(),
    dict(positions="learned", tie_embeddings=False),
    dict(positions="rope", norm="rmsnorm", ffn="swiglu", bias=False),
    dict(positions="rope", n_kv_heads=2),
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_causal(kw):
    model = build_model(tiny(**kw), jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 61)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 61)
    a, _ = model(tokens, inference=True)
    b, _ = model(changed, inference=True)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert not np.allclose(a[:, 7:], b[:, 7:])


def test_key_padding_mask_hides_padded_keys():
    model = build_model(tiny(positions="rope"), jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 10), 0, 61)
    mask = jnp.arange(10)[None] != 3  # position 3 is padding
    garbage = tokens.at[:, 3].set(5)
    a, _ = model(tokens, key_mask=mask, inference=True)
    b, _ = model(garbage, key_mask=mask, inference=True)
    keep = np.arange(10) != 3
    np.testing.assert_allclose(a[:, keep], b[:, keep], atol=1e-6)


def test_scan_equals_unrolled_layers():
    """The scanned stack gives exactly what running each layer's weights in turn gives."""
    model = build_model(tiny(), jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 32))
    ctx = Context(key_mask=None, rope=None, inference=True)
    scanned, _ = model.stack(x, ctx, None)
    stacked = model.stack.groups[0]
    h = x
    for i in range(3):
        layer = jax.tree_util.tree_map(lambda a, i=i: a[i] if eqx.is_array(a) else a, stacked)
        h, _ = layer(h, ctx, None)
    np.testing.assert_allclose(scanned, h, atol=1e-5)


UNROLL_CASES = {  # (model overrides, scan_unroll) on 4 layers: a partial and a full unroll, MoE every 2nd, TI
    "dense_2": (dict(), 2), "dense_4": (dict(), 4),
    "moe_every_2": (dict(moe=MoEConfig(enabled=True, num_experts=4, top_k=2, d_ff=48, every=2)), 4),
    "ti_mlp": (dict(time=TimeConfig(enabled=True)), 4),
}


@pytest.mark.parametrize("kw, unroll", UNROLL_CASES.values(), ids=UNROLL_CASES.keys())
def test_scan_unroll_changes_nothing_but_speed(kw, unroll):
    """Logits and the gradients of every parameter agree with the one-layer-per-step scan (4 layers)."""
    base = tiny(**{"n_layers": 4, **kw})
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 61)

    def run(cfg):
        model = build_model(cfg, jax.random.PRNGKey(0))
        loss = lambda m: jnp.mean(m(tokens, inference=True)[0] ** 2)  # noqa: E731
        return model(tokens, inference=True)[0], eqx.filter_grad(loss)(model)

    (logits, grads), (ref_logits, ref_grads) = run(dataclasses.replace(base, scan_unroll=unroll)), run(base)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    for g, ref in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, ref, atol=1e-6, rtol=1e-4)


def test_dropout_only_in_training():
    model = build_model(tiny(dropout=0.5), jax.random.PRNGKey(0))
    tokens = jnp.ones((1, 8), jnp.int32)
    a, _ = model(tokens, inference=True)
    b, _ = model(tokens, inference=True, key=jax.random.PRNGKey(3))
    c, _ = model(tokens, inference=False, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kw", VARIANTS)
def test_param_count_closed_form(kw):
    cfg = tiny(**kw)
    d, f, v, n_layers = cfg.d_model, cfg.resolved_d_ff(), cfg.vocab_size, cfg.n_layers
    kv = (cfg.n_kv_heads or cfg.n_heads) * (d // cfg.n_heads)
    b = 1 if cfg.bias else 0
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    attn = d * d + 2 * d * kv + d * d + b * (d + 2 * kv + d)
    n_ffn_mats = 3 if cfg.ffn == "swiglu" else 2
    ffn = n_ffn_mats * d * f + b * ((n_ffn_mats - 1) * f + d)
    expected = v * d + n_layers * (attn + ffn + 2 * norm) + norm
    expected += cfg.max_seq_len * d if cfg.positions == "learned" else 0
    expected += 0 if cfg.tie_embeddings else d * v
    report = param_report(build_model(cfg, jax.random.PRNGKey(0)))
    assert report["total"] == expected == report["active"]
    assert report["by_component"]["embedding"] == v * d


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="n_heads"):
        build_model(tiny(d_model=30), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(), jax.random.PRNGKey(0))
