"""Block-causal attention (the CPU's fused core for long sequences) against the Haliax reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.models import attention
from chimera_jax.models.attention import block_causal_attention, fused_attention, reference_attention


def qkv_and_cotangent(B: int, T: int, H: int, G: int, hd: int):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return (jax.random.normal(k[0], (B, T, H, hd)), jax.random.normal(k[1], (B, T, G, hd)),
            jax.random.normal(k[2], (B, T, G, hd)), jax.random.normal(k[3], (B, T, H, hd)))


@pytest.mark.parametrize("block", [3, 4, 16], ids=["ragged_last_block", "even_blocks", "one_block"])
@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "right_padding"])
@pytest.mark.slow
def test_block_causal_attention_equals_the_reference(block, n_kv_heads, padded):
    """Same output and gradients of q, k and v as the unblocked reference, for any block size."""
    B, T = 2, 12
    q, k, v, cotangent = qkv_and_cotangent(B, T, 4, n_kv_heads, 8)
    key_mask = jnp.arange(T)[None] < jnp.array([[T], [5]]) if padded else None

    def loss(core):
        return lambda *qkv: jnp.sum(core(*qkv) * cotangent)

    def value_and_grads(core):  # jitted: op by op, the block loop's small ops take seconds each to compile
        return jax.jit(jax.value_and_grad(loss(core), argnums=(0, 1, 2)))

    blocked = value_and_grads(lambda *a: block_causal_attention(*a, key_mask, block))
    reference = value_and_grads(lambda *a: reference_attention(*a, key_mask))
    (value, grads), (ref_value, ref_grads) = blocked(q, k, v), reference(q, k, v)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fused_attention_runs_in_blocks_past_the_block_size(monkeypatch):
    """On CPU, sequences longer than ``CAUSAL_BLOCK`` take the block path, with the same numbers."""
    q, k, v, _ = qkv_and_cotangent(2, 10, 4, 4, 8)
    calls = []
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 4)
    monkeypatch.setattr(attention, "block_causal_attention",
                        lambda *a: calls.append(a[-1]) or block_causal_attention(*a))
    jax.clear_caches()  # cpu_attention is a jax.checkpoint: a trace of these shapes from another test is cached
    np.testing.assert_allclose(fused_attention(q, k, v, None), reference_attention(q, k, v, None), atol=1e-5)
    assert calls == [4]
    fused_attention(q[:, :4], k[:, :4], v[:, :4], None)  # not longer than a block: one whole call
    assert calls == [4]
