"""The fine-tuning losses: the masked SFT negative log-likelihood and DPO's preference loss, with their metrics.

SFT: the mean token NLL over the masked (response) positions of a micro-batch, plus the blocks' aux losses.
DPO (Rafailov et al. 2023): with ``logp`` a response's log-probability summed over its masked tokens, for
the policy and the frozen reference, ``margin = beta * ((logp_c - ref_c) - (logp_r - ref_r))`` and
``loss = mean(-log sigmoid(margin))``; ``margin`` is the difference of the implicit rewards
``beta * (logp - ref)`` of the chosen and rejected responses.
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from chimera_jax.models.loss import token_nll
from chimera_jax.train.step import Loss, aux_loss_total, compute_model


def response_logps(model, inputs: Int[Array, "B T"], targets: Int[Array, "B T"], mask: Float[Array, "B T"],
                   key=None, inference: bool = True) -> tuple[Float[Array, " B"], dict]:
    """Each row's log-probability of its masked targets (summed), and the blocks' aux outputs."""
    logits, aux = model(inputs, key=key, inference=inference)
    return -(token_nll(logits, targets) * mask).sum(-1), aux


def masked_mean(values: Float[Array, "B T"], mask: Float[Array, "B T"]) -> Float[Array, ""]:
    """The mean over the masked positions (0 when none is masked: a batch of padding rows)."""
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def sft_loss(model, batch: tuple[Array, ...], key, compute_dtype, mesh) -> tuple[Array, dict]:
    """One micro-batch ``(inputs, targets, mask)``: the masked mean NLL plus the aux losses."""
    inputs, targets, mask = batch
    logits, aux = compute_model(model, compute_dtype, mesh)(inputs, key=key, inference=False)
    ce = masked_mean(token_nll(logits, targets), mask)
    loss = ce + aux_loss_total(aux)
    return loss, {"loss": loss, "ce": ce, "aux": aux, "response_tokens": mask.sum()}


def dpo_loss(logp_chosen: Float[Array, " B"], logp_rejected: Float[Array, " B"], ref_chosen: Float[Array, " B"],
             ref_rejected: Float[Array, " B"], beta: float) -> tuple[Float[Array, ""], dict]:
    """DPO's loss of a batch of pairs and its metrics: the reward margin, the preference accuracy (the share of
    pairs whose margin is positive) and the policy's mean chosen and rejected log-probabilities."""
    margin = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    loss = -jax.nn.log_sigmoid(margin).mean()
    return loss, {"loss": loss, "reward_margin": margin.mean(), "accuracy": (margin > 0).mean(),
                  "logp_chosen": logp_chosen.mean(), "logp_rejected": logp_rejected.mean()}


def _dpo_step_loss(model, batch: tuple[Array, ...], key, compute_dtype, mesh, beta: float) -> tuple[Array, dict]:
    """One micro-batch ``(chosen inputs, targets, mask, rejected inputs, targets, mask, ref_chosen, ref_rejected)``:
    both sides in one forward pass."""
    *rows, ref_chosen, ref_rejected = batch
    inputs, targets, mask = (jnp.concatenate([c, r]) for c, r in zip(rows[:3], rows[3:], strict=True))
    logps, aux = response_logps(compute_model(model, compute_dtype, mesh), inputs, targets, mask, key, inference=False)
    chosen, rejected = jnp.split(logps, 2)
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    loss = loss + aux_loss_total(aux)
    return loss, {**metrics, "loss": loss, "aux": aux}


SFT_LOSS = Loss(sft_loss, (1, 1, 1))


def dpo_step_loss(beta: float) -> Loss:
    """The train step's DPO loss at ``beta``; the reference log-probabilities come in the batch."""
    return Loss(partial(_dpo_step_loss, beta=beta), (1, 1, 1, 1, 1, 1, 0, 0))


@eqx.filter_jit
def batch_logps(model, inputs: Int[Array, "B T"], targets: Int[Array, "B T"], mask: Float[Array, "B T"]) -> Array:
    """``response_logps`` without dropout, jitted: the reference's log-probabilities and validation's."""
    return response_logps(model, inputs, targets, mask)[0]
