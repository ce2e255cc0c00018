"""The jitted train step: (state, batch) -> (new state, metrics), compiled once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike, DTypeLike

from chimera_jax.config import RunConfig
from chimera_jax.models.loss import head_cross_entropy
from chimera_jax.models.params import is_param
from chimera_jax.models.transformer import placing_layers
from chimera_jax.train.mesh import batch_sharding, compute_shardings, layer_placement, shard_state, state_shardings
from chimera_jax.train.optimizer import lr_schedule, make_optimizer
from chimera_jax.train.state import TrainerState, init_state


def cast_floating(tree, dtype: DTypeLike):
    """Cast every floating-point array leaf (the bf16 compute copy of f32 parameters)."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def aux_loss_total(aux: dict) -> jax.Array:
    """Sum of the per-layer auxiliary losses blocks report as ``aux_loss`` (already weighted)."""
    return jnp.sum(aux["aux_loss"]) if "aux_loss" in aux else jnp.zeros(())


def compute_model(model, compute_dtype: DTypeLike, mesh: Mesh | None = None):
    """The step's compute copy of ``model``: cast to ``compute_dtype`` and, on ``mesh``, gathered as train/mesh.py
    says."""
    model = cast_floating(model, compute_dtype)
    return model if mesh is None else eqx.filter_shard(model, compute_shardings(model, mesh))


def loss_fn(model, inputs, targets, key, compute_dtype, mesh: Mesh | None = None):
    """Mean token NLL plus the aux losses; the head and its cross-entropy fused (models/loss.py), equal to
    ``token_nll`` of the model's logits. On ``mesh``, the compute copy is gathered as train/mesh.py says."""
    model = compute_model(model, compute_dtype, mesh)
    x, aux = model.features(inputs, key=key, inference=False)
    with jax.named_scope("head"):
        weight, vocab_axis = (model.embed.weight, 0) if model.head is None else (model.head.weight, 1)
        ce = head_cross_entropy(model.final_norm(x), weight, targets, vocab_axis)
    return ce + aux_loss_total(aux), (ce, aux)


class Loss(NamedTuple):
    """What a train step minimises: ``fn(model, batch, key, compute_dtype, mesh) -> (loss, metrics)`` on one
    micro-batch (a tuple of arrays, one row per sequence), and each batch array's dimensions per row (1 for a
    row of tokens, 0 for one number per row), by which the step splits the batch into micro-batches."""

    fn: Callable
    row_ndims: tuple[int, ...]


def _lm_loss(model, batch, key, compute_dtype, mesh):
    inputs, targets = batch
    loss, (ce, aux) = loss_fn(model, inputs, targets, key, compute_dtype, mesh)
    return loss, {"loss": loss, "ce": ce, "aux": aux}


LM_LOSS = Loss(_lm_loss, (1, 1))  # pretraining: batches (inputs, targets)


def _step_function(cfg: RunConfig, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   mesh: Mesh | None, loss: Loss) -> Callable:
    """The train step before jit (``make_train_step`` says what it does)."""
    compute_dtype = jnp.bfloat16 if cfg.train.precision == "bf16" else jnp.float32
    accum = cfg.train.grad_accum
    grad_fn = eqx.filter_value_and_grad(loss.fn, has_aux=True)
    place = None if mesh is None else layer_placement(mesh)

    def step(state: TrainerState, *batch: jax.Array):
        key = jax.random.fold_in(state.key, state.step)
        micro_batch = tuple(x.reshape(accum, -1, *x.shape[x.ndim - n:]) for x, n in zip(batch, loss.row_ndims,
                                                                                          strict=True))

        def micro(i):
            with placing_layers(place):  # the layer scan gathers one layer at a time
                (_, metrics), grads = grad_fn(state.model, tuple(x[i] for x in micro_batch),
                                              jax.random.fold_in(key, i), compute_dtype, mesh)
            return grads, metrics

        if accum == 1:
            grads, metrics = micro(0)
        else:
            # Average gradients and metrics over micro-batches with a scan: one compiled body.
            def body(carry, i):
                g, m = micro(i)
                return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), eqx.filter_eval_shape(micro, 0))
            total, _ = jax.lax.scan(body, zeros, jnp.arange(accum))
            grads, metrics = jax.tree_util.tree_map(lambda x: x / accum, total)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = schedule(state.step)
        new_state = TrainerState(model=model, opt_state=opt_state, step=state.step + 1, key=state.key)
        # Elementwise, so XLA fuses the select into the update: no extra pass over the state.
        finite = jnp.isfinite(metrics["loss"])
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old) if eqx.is_array(new) else new,
                                           new_state, state)
        if mesh is not None:
            new_state, metrics = shard_state(new_state, mesh), eqx.filter_shard(metrics, NamedSharding(mesh, P()))
        return new_state, metrics

    return step


def make_train_step(cfg: RunConfig, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    max_traces: int | None = None, donate: bool = False, mesh: Mesh | None = None,
                    loss: Loss = LM_LOSS) -> Callable:
    """Build ``train_step(state, *batch) -> (new_state, metrics)`` minimising ``loss`` (default: pretraining's, on
    ``batch = (inputs, targets)``); each batch array is ``[grad_accum * batch, ...]`` or ``[grad_accum, batch, ...]``.

    A step whose loss is not finite returns the state unchanged (metrics still report the loss), so the
    caller can save the last good state even when ``donate`` is on.

    ``donate`` hands the state's buffers to the step, which then updates parameters and optimizer moments
    in place instead of allocating a second copy of the state. The state passed in is unusable
    afterwards; the training loop donates.
    ``max_traces`` wraps the step in ``eqx.debug.assert_max_traces`` (tests prove it compiles once).
    On ``mesh`` (the state and batch placed there, train/mesh.py), the step is traced and run under
    ``jax.set_mesh(mesh)`` (code inside may name the mesh's axes, e.g. in ``shard_map``), the new state keeps the
    old one's shardings (so donation can reuse its buffers) and the metrics are replicated: every process can read
    them.
    """
    step = _step_function(cfg, optimizer, schedule, mesh, loss)
    if max_traces is not None:
        step = eqx.debug.assert_max_traces(step, max_traces=max_traces)
    # filter_jit donates every argument but the first: the batch goes first, so only the state is donated.
    jitted = eqx.filter_jit(lambda batch, state: step(state, *batch), donate="all-except-first" if donate else "none")

    def train_step(state: TrainerState, *batch: ArrayLike):
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            return jitted(batch, state)

    return train_step


def step_memory(cfg: RunConfig, mesh: Mesh) -> dict[str, int]:
    """Bytes per device of the donated train step of ``cfg`` (resolved) on ``mesh``, from XLA's memory analysis
    of the step compiled for shapes alone (nothing is allocated): the state and batch it takes (``arguments``),
    its ``temporaries`` (activations, gradients, gathered weights) and their sum (the new state reuses the
    donated one's buffers)."""
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    shapes = eqx.filter_eval_shape(init_state, cfg, optimizer)
    state, static = eqx.partition(shapes, is_param)
    state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                   state_shardings(shapes, mesh))
    batch = jax.ShapeDtypeStruct((cfg.train.grad_accum, cfg.train.batch_size, cfg.data.seq_len), jnp.int32,
                                 sharding=batch_sharding(mesh))
    step = _step_function(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), mesh, LM_LOSS)
    donated = jax.jit(lambda arrays, x, y: step(eqx.combine(arrays, static), x, y), donate_argnums=0)
    with jax.set_mesh(mesh):
        stats = donated.lower(state, batch, batch).compile().memory_analysis()
    arguments, temporaries = stats.argument_size_in_bytes, stats.temp_size_in_bytes
    total = arguments + stats.output_size_in_bytes - stats.alias_size_in_bytes + temporaries
    return {"arguments": arguments, "temporaries": temporaries, "total": total}
