"""The dense decoder: causality, masks, the scan against an unrolled loop, and parameter counts."""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import ModelConfig, MoEConfig, TimeConfig
from chimera_jax.models.attention import Attention, fused_attention, reference_attention
from chimera_jax.models.builder import build_model
from chimera_jax.models.layers import matmul
from chimera_jax.models.params import param_report
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
@pytest.mark.slow
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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.slow
def test_matmul_gradients_are_those_of_the_plain_product(dtype):
    """``layers.matmul``'s own backward pass gives ``x @ w``'s value and gradients, batch axes and all."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = jax.random.normal(kx, (2, 3, 4), dtype), jax.random.normal(kw, (4, 5), dtype)
    cotangent = jax.random.normal(kg, (2, 3, 5), dtype)
    ours = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(matmul(x, w) * cotangent), argnums=(0, 1)))(x, w)
    plain = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum((x @ w) * cotangent), argnums=(0, 1)))(x, w)
    rtol = 1e-2 if dtype == jnp.bfloat16 else 1e-6
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(plain), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "right_padding"])
@pytest.mark.slow
def test_fused_attention_equals_the_reference(n_kv_heads, padded):
    """The fused core (on CPU ``cpu_attention``, whose backward pass recomputes the probabilities) and the Haliax
    reference: same output and gradients (f32)."""
    B, T, H, hd = 2, 7, 4, 8
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(k[0], (B, T, H, hd))
    kv = [jax.random.normal(kk, (B, T, n_kv_heads, hd)) for kk in k[1:3]]
    cotangent = jax.random.normal(k[3], (B, T, H, hd))
    # The second sequence has 4 real tokens and 3 padding keys at its end.
    key_mask = jnp.arange(T)[None] < jnp.array([[T], [4]]) if padded else None

    def loss(core, *qkv):
        return jnp.sum(core(*qkv, key_mask) * cotangent)

    fused = jax.jit(jax.value_and_grad(lambda *a: loss(fused_attention, *a), argnums=(0, 1, 2)))(q, *kv)
    reference = jax.jit(jax.value_and_grad(lambda *a: loss(reference_attention, *a), argnums=(0, 1, 2)))(q, *kv)
    np.testing.assert_allclose(fused_attention(q, *kv, key_mask), reference_attention(q, *kv, key_mask),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused[0], reference[0], rtol=1e-5)
    for a, b in zip(fused[1], reference[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if padded:  # the mask is used: queries past the padding would otherwise see the padded keys
        assert not np.allclose(fused_attention(q, *kv, key_mask)[1, 4:], fused_attention(q, *kv, None)[1, 4:])


@pytest.mark.slow
def test_rope_sees_only_relative_positions():
    """Shifting every position leaves rotary attention unchanged; another order of positions does not."""
    attention = Attention(32, 4, 2, key=jax.random.PRNGKey(0), rope_theta=100.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 32))
    base = attention(x, inference=True)
    np.testing.assert_array_equal(attention(x, positions=jnp.arange(9), inference=True), base)
    shift_error = np.abs(attention(x, positions=jnp.arange(9) + 37, inference=True) - base).max()
    stretched = np.abs(attention(x, positions=2 * jnp.arange(9), inference=True) - base).max()
    assert shift_error < 1e-6 < 1e-3 * np.abs(base).max() < stretched


@pytest.mark.slow
def test_scan_equals_unrolled_layers():
    """The scanned stack gives exactly what running each layer's weights in turn gives."""
    model = build_model(tiny(), jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 32))
    ctx = Context(key_mask=None, inference=True)
    scanned, _ = model.stack(x, ctx, None)
    stacked = model.stack.groups[0]
    h = x
    for i in range(3):
        layer = jax.tree_util.tree_map(lambda a, i=i: a[i] if eqx.is_array(a) else a, stacked)
        h, _ = layer(h, ctx, None)
    np.testing.assert_allclose(scanned, h, atol=1e-5)


MOE_EVERY_2 = dict(moe=MoEConfig(enabled=True, num_experts=4, top_k=2, d_ff=48, every=2))
TI_SSM = dict(mixer="ssm", positions="none", time=TimeConfig(enabled=True))
# (family, execution-only overrides) on 4 layers, trained with dropout; options combine, so one compile checks
# several (the MoE case unrolls all of its dense and MoE layers), and each family's reference is computed once.
# The SSM's scan methods, also execution only, are checked against the sequential scan in values and every
# gradient where they differ (tests/test_ssm.py), not here through a whole model again.
EXECUTION_CASES = {
    "moe_every_2_unroll_4_remat_dots": ("moe_every_2", dict(scan_unroll=4, remat="dots")),  # dense and MoE layers
    "ti_ssm_unroll_2_remat_block": ("ti_ssm", dict(scan_unroll=2, remat="block")),
    "ti_ssm_loop_remat_dots": ("ti_ssm", dict(scan_unroll=4, remat="dots")),  # unrolled: a Python loop
}
FAMILIES = {"moe_every_2": MOE_EVERY_2, "ti_ssm": TI_SSM}


def loss_and_grads(cfg):
    model = build_model(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 61)
    loss = lambda m: jnp.mean(m(tokens, key=jax.random.PRNGKey(2))[0] ** 2)  # noqa: E731
    return eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)


def execution_base(family: str):
    return tiny(**{"n_layers": 4, "dropout": 0.1, **FAMILIES[family]})


@functools.cache
def reference_loss_and_grads(family: str):
    """The one-layer-per-step scan without rematerialisation."""
    return loss_and_grads(execution_base(family))


@pytest.mark.parametrize("family, execution", EXECUTION_CASES.values(), ids=EXECUTION_CASES.keys())
@pytest.mark.slow
def test_execution_options_change_nothing_but_speed(family, execution):
    """The training loss (dropout on, same key) and the gradients of every parameter agree with the
    one-layer-per-step scan without rematerialisation (4 layers)."""
    loss, grads = loss_and_grads(dataclasses.replace(execution_base(family), **execution))
    ref_loss, ref_grads = reference_loss_and_grads(family)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for g, ref in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_remat_keeps_less_for_the_backward_pass():
    """The compiled gradient's scratch memory: block (each layer's input only) < dots (plus its matmul
    outputs) < none (every activation). Were remat not applied, the three would be equal."""
    tokens = jnp.zeros((4, 64), jnp.int32)

    def scratch(remat: str) -> int:
        params, static = eqx.partition(build_model(tiny(n_layers=4, max_seq_len=64, remat=remat),
                                                   jax.random.PRNGKey(0)), eqx.is_array)
        grad = jax.jit(jax.grad(lambda p: jnp.mean(eqx.combine(p, static)(tokens)[0] ** 2)))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    assert scratch("block") < scratch("dots") < scratch("none")


@pytest.mark.slow
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
