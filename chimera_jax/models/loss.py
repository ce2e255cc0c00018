"""The language-model losses: per-token NLL (``token_nll``, what evaluation scores and fine-tuning weighs) and the
output head with the mean cross-entropy fused (``head_cross_entropy``, what training minimises), equal to it.

The fused form computes its gradients on the way forward. Differentiated the plain way, ``mean(token_nll(x @ W^T,
targets))`` keeps the f32 logits, their exponentials and the softmax gradient ([tokens, vocab] each: 824 MB
apiece at 4096 tokens x 50304), scatters the targets' -1 into the softmax and copies the [tokens, vocab] gradient
transposed for the weight's matmul. Here the softmax gradient ``g = (softmax - onehot) / N`` is formed in the
forward pass from one buffer of logits (the one-hot fused into that pass), and both gradients come from it at
once, the weight's as a matmul contracting the token axis of ``x`` and ``g`` (no transposed copy). The backward
pass only scales the stored gradients by the incoming cotangent: exact, since the loss is a mean. Called without
differentiation (``jax.custom_vjp``'s primal), it computes the logits and the loss only. Splitting the tokens
into chunks (never holding all logits) was slower on CPU: docs/speed.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


def token_nll(logits: Float[Array, "*B V"], targets: Int[Array, "*B"]) -> Float[Array, "*B"]:
    """Per-token negative log-likelihood in nats, computed in f32 (shared by training and evaluation)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _logits(x: Float[Array, "N D"], weight: Array, vocab_axis: int) -> Float[Array, "N V"]:
    return jax.lax.dot_general(x, weight, (((1,), (1 - vocab_axis,)), ((), ())), preferred_element_type=jnp.float32)


def _nll_and_grads(x: Float[Array, "N D"], weight: Array, targets: Int[Array, " N"], vocab_axis: int):
    n = x.shape[0]
    logits = _logits(x, weight, vocab_axis)
    top = logits.max(-1, keepdims=True)
    exp = jnp.exp(logits - top)
    total = exp.sum(-1, keepdims=True)
    nll = (top + jnp.log(total))[:, 0] - jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
    hit = jnp.arange(logits.shape[-1]) == targets[:, None]
    g = ((exp / total - hit) / n).astype(x.dtype)  # d mean(nll) / d logits
    dx = jax.lax.dot_general(g, weight, (((1,), (vocab_axis,)), ((), ())), preferred_element_type=jnp.float32)
    dw = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)  # [D, V]
    dw = dw.T if vocab_axis == 0 else dw
    return nll.mean(), dx.astype(x.dtype), dw.astype(weight.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _head_loss(x: Array, weight: Array, targets: Array, vocab_axis: int) -> Array:
    nll = -jnp.take_along_axis(jax.nn.log_softmax(_logits(x, weight, vocab_axis)), targets[:, None], -1)
    return nll.mean()


def _head_loss_fwd(x, weight, targets, vocab_axis):
    loss, dx, dw = _nll_and_grads(x, weight, targets, vocab_axis)
    return loss, (dx, dw)


def _head_loss_bwd(vocab_axis, res, cotangent):
    dx, dw = res
    return (cotangent * dx).astype(dx.dtype), (cotangent * dw).astype(dw.dtype), None


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def head_cross_entropy(x: Float[Array, "... D"], weight: Array, targets: Int[Array, "..."],
                       vocab_axis: int = 0) -> Float[Array, ""]:
    """``mean(token_nll(x @ W, targets))`` for the head ``weight`` ([vocab, D] with ``vocab_axis=0``, the tied
    embedding; [D, vocab] with ``vocab_axis=1``, a ``Linear`` head), logits in f32."""
    return _head_loss(x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), vocab_axis)
