"""The fused head + cross-entropy of the train loss against the plain logits -> token_nll path."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import resolve_config
from chimera_jax.models.builder import build_model
from chimera_jax.models.loss import head_cross_entropy, token_nll
from chimera_jax.train.step import loss_fn


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("vocab_axis", [0, 1], ids=["tied_vocab_by_d", "linear_d_by_vocab"])
def test_head_cross_entropy_equals_token_nll_of_the_logits(vocab_axis):
    """Value and gradients of x and the weight, under a cotangent other than 1 (the backward scales)."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k[0], (2, 6, 16))
    weight = jax.random.normal(k[1], (40, 16) if vocab_axis == 0 else (16, 40))
    targets = jax.random.randint(k[2], (2, 6), 0, 40)

    def plain(x, w):
        logits = x @ (w.T if vocab_axis == 0 else w)
        return 3.0 * token_nll(logits, targets).mean() + jnp.sum(x**2)

    def fused(x, w):
        return 3.0 * head_cross_entropy(x, w, targets, vocab_axis) + jnp.sum(x**2)

    _close(jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(x, weight),
           jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, weight))
    _close(head_cross_entropy(x, weight, targets, vocab_axis), plain(x, weight) / 3 - jnp.sum(x**2) / 3)


def test_head_cross_entropy_in_bf16_keeps_the_dtypes():
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(k[0], (8, 16)).astype(jnp.bfloat16)
    weight = jax.random.normal(k[1], (40, 16)).astype(jnp.bfloat16)
    targets = jax.random.randint(k[2], (8,), 0, 40)
    loss, (dx, dw) = jax.jit(jax.value_and_grad(head_cross_entropy, argnums=(0, 1)))(x, weight, targets)
    assert loss.dtype == jnp.float32 and dx.dtype == dw.dtype == jnp.bfloat16
    logits = jnp.dot(x, weight.T, preferred_element_type=jnp.float32)  # bf16 products, f32 sums and logits
    np.testing.assert_allclose(loss, token_nll(logits, targets).mean(), rtol=1e-6)
    np.testing.assert_allclose(head_cross_entropy(x, weight, targets), loss, rtol=1e-6)


def _plain_loss(model, inputs, targets):
    logits, _ = model(inputs, inference=False)
    return token_nll(logits, targets).mean()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.slow
def test_train_loss_equals_the_plain_one(tiny_config, tied):
    """The step's loss (features -> fused head) and its gradients equal the model's logits -> token_nll."""
    cfg = resolve_config(tiny_config("--model.tie_embeddings", str(tied).lower()), 256)
    model = build_model(cfg.model, jax.random.PRNGKey(0))
    inputs, targets = jax.random.randint(jax.random.PRNGKey(1), (2, 2, 16), 0, 256)
    (loss, (ce, _)), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn, has_aux=True))(
        model, inputs, targets, None, jnp.float32)
    plain, plain_grads = eqx.filter_jit(eqx.filter_value_and_grad(_plain_loss))(model, inputs, targets)
    np.testing.assert_allclose(ce, plain, rtol=1e-6)
    np.testing.assert_allclose(loss, plain, rtol=1e-6)
    _close(grads, plain_grads)
