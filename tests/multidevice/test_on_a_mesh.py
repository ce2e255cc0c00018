"""The rest of training under a mesh: fsdp gathers one layer at a time, and validation, bf16 and the non-finite
stop give what one device gives (the MoE diagnostics: test_mesh.py)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax import data
from chimera_jax.config import resolve_config
from chimera_jax.eval.perplexity import evaluate_model
from chimera_jax.models.builder import build_model
from chimera_jax.train import loop
from chimera_jax.train import step as step_module
from chimera_jax.train.checkpoint import Checkpointer, load_model
from chimera_jax.train.loop import NonFiniteLoss, train, validate_on_mesh, validation_protocol
from chimera_jax.train.mesh import make_mesh, shard_state
from chimera_jax.train.optimizer import make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import step_memory

FSDP = ("--mesh.data", "2", "--mesh.fsdp", "4")


def test_fsdp_gathers_one_layer_at_a_time(run_config):
    """All the step's temporaries under fsdp 8 take less than the model's weights gathered whole would alone."""
    cfg = resolve_config(run_config("--mesh.data", "1", "--mesh.fsdp", "8", "--model.d_model", "128",
                                    "--model.d_ff", "512", "--model.n_layers", "16", "--data.seq_len", "8"), 256)
    weights = eqx.filter_eval_shape(build_model, cfg.model, jax.random.key(0))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(weights))
    assert step_memory(cfg, make_mesh(cfg))["temporaries"] < weight_bytes


def test_validation_on_a_mesh_splits_the_windows_and_gives_the_single_device_loss(run_config, monkeypatch):
    cfg = resolve_config(run_config(*FSDP), 256)
    mesh = make_mesh(cfg)
    protocol = validation_protocol(cfg)
    stream = data.load_stream(protocol.data_config(cfg.data), "validation")
    state = init_state(cfg, make_optimizer(cfg.optim, cfg.train.steps))
    want = evaluate_model(state.model, stream, protocol)["loss"]

    rows = []  # how many rows of each window batch the first device holds
    model_batch_nll = loop.model_batch_nll
    monkeypatch.setattr(loop, "model_batch_nll", lambda model, inputs, *rest: (
        rows.append(inputs.addressable_shards[0].data.shape[0]), model_batch_nll(model, inputs, *rest))[1])
    got = validate_on_mesh(shard_state(state, mesh).model, stream, protocol, mesh)["loss"]
    assert got == pytest.approx(want, rel=2e-6)
    assert rows == [cfg.train.batch_size // 8] * cfg.train.eval_batches


def test_bf16_on_a_mesh_logs_the_single_device_bf16_losses(run_config, train_steps, single_device_losses):
    cfg = run_config("--train.precision", "bf16", "--train.steps", "4", *FSDP)
    history, _ = train_steps(cfg, jax.devices())
    np.testing.assert_allclose([m["loss"] for m in history], single_device_losses(cfg), rtol=1e-2)


def test_a_non_finite_loss_on_a_mesh_stops_and_keeps_the_last_good_state(run_config, monkeypatch):
    cfg = run_config(*FSDP)
    monkeypatch.setattr(step_module, "head_cross_entropy", lambda *args: jnp.array(jnp.nan))
    with pytest.raises(NonFiniteLoss, match="step 1"):
        train(cfg)
    assert Checkpointer(cfg.run_dir).steps() == [0]
    saved, _ = load_model(cfg.run_dir)
    initial = init_state(resolve_config(cfg, 256), make_optimizer(cfg.optim, cfg.train.steps)).model
    for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(initial), strict=True):
        np.testing.assert_array_equal(a, b)
