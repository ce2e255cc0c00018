"""The training bench: its FLOPs formula against XLA's own count, and a --quick run end to end.

XLA's ``cost_analysis`` counts every operation of the compiled program: the matrix products the formula
counts and the elementwise work it leaves out (norms, activations, softmax, biases, residual adds), so on
a config whose products dominate it must lie a little above the formula, never below. Two things to know
about its count: a ``while`` loop's body is counted once, whatever its trip count, so the layer stack is
unrolled (``model.scan_unroll``) and the SSM's sequential scan over time is handled below; and a constant
cotangent lets XLA simplify the backward pass, so the gradient is taken of a real cross-entropy.
"""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

from chimera_jax.bench.flops import forward_flops_per_token, train_flops_per_token
from chimera_jax.bench.train import row_config
from chimera_jax.cli.bench import main
from chimera_jax.config import ConfigError, RunConfig, load_config, preset_path, resolve_config
from chimera_jax.models.builder import build_model


def config(preset: str, *overrides: str) -> RunConfig:
    return resolve_config(load_config(preset_path(preset), ["--model.vocab_size", "512", *overrides]), 256)


def xla_flops(cfg: RunConfig, batch: int, seq_len: int, grad: bool = False) -> float:
    """XLA's FLOP count of the compiled forward pass (or of the loss gradient) on one token batch."""
    params, static = eqx.partition(build_model(cfg.model, jax.random.PRNGKey(0)), eqx.is_array)
    tokens = jnp.zeros((batch, seq_len), jnp.int32)

    def logits(p, t):
        return eqx.combine(p, static)(t, inference=True)[0]

    def loss(p, t):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, t), t).mean()

    return jax.jit(jax.grad(loss) if grad else logits).lower(params, tokens).compile().cost_analysis()["flops"]


def test_dense_flops_agree_with_xla_forward_and_backward():
    # d_model 256 against 128 positions: every term is a sizeable share (attention scores 7%, the head 7%),
    # and the elementwise work XLA adds, tens of FLOPs per activation against 2 d FLOPs per weight of a
    # product, stays near 1% (2% in the backward pass, whose norm and softmax gradients cost more).
    cfg = config("standard", "--model.d_model", "256", "--model.n_layers", "2", "--model.scan_unroll", "2")
    batch, seq_len = 2, 128
    parts = forward_flops_per_token(cfg.model, seq_len)
    assert min(parts.values()) / sum(parts.values()) > 0.05
    forward = xla_flops(cfg, batch, seq_len) / (batch * seq_len)
    assert 1.0 <= forward / sum(parts.values()) <= 1.02
    backward = xla_flops(cfg, batch, seq_len, grad=True) / (batch * seq_len)
    assert 1.0 <= backward / train_flops_per_token(cfg.model, seq_len) <= 1.03


def test_ssm_flops_agree_with_xla():
    # The sequential scan is a while loop XLA counts once, so its count is linear in the sequence length:
    # flops(T) = a T + c, with a the per-position work outside the loop and c one pass of the loop body.
    # The true count is (a + c) T: two lengths give a and c. A large state (64) makes the scan 15% of the
    # total. Tolerance 4%: the SSM's elementwise work (SiLU, softplus, gating, skip) acts on the 2x wider
    # expanded stream, and what does not grow with T (A = -exp(A_log)) lands in c, divided by the batch.
    cfg = config("ti_ssm", "--model.ssm.kind", "mamba", "--model.d_model", "256", "--model.n_layers", "2",
                 "--model.scan_unroll", "2",
                 "--model.time.enabled", "false", "--model.ssm.scan", "sequential", "--model.ssm.state_size", "64",
                 "--model.d_ff", "64")
    batch, short, long = 8, 16, 32
    f_short, f_long = xla_flops(cfg, batch, short), xla_flops(cfg, batch, long)
    per_position = (f_long - f_short) / (long - short)
    loop_body = f_short - per_position * short
    parts = forward_flops_per_token(cfg.model, long)
    assert parts["ssm_scan"] / sum(parts.values()) > 0.1
    assert 1.0 <= (per_position + loop_body) / batch / sum(parts.values()) <= 1.04


@pytest.mark.slow
def test_quick_train_bench_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "train.json"
    result = main(["train", "--quick", "--presets", "standard", "ti_ssm", "dense_d512", "--torch-compile", "false",
                   "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert "| preset | params |" in capsys.readouterr().out
    assert result["peak_flops"] > 0 and result["header"]["jax"] == jax.__version__
    standard, ssm, dense = result["rows"]
    for row in result["rows"]:
        cfg = row_config(row["preset"], True, [])
        assert row["flops_per_token"] == train_flops_per_token(cfg.model, cfg.data.seq_len)
        assert row["tokens_per_step"] == 2 * 32
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / row["step_ms"] * 1000)
        assert row["mfu"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / result["peak_flops"])
        assert row["compile_s"] > 0 and len(row["step_ms_all"]) == 2 and row["peak_mib"] > 0
    # GPT-2 at the same shapes has exactly our parameters where the positions are learned in both
    assert dense["params"] == dense["torch_params"] and dense["torch_eager_ms"] > 0
    assert dense["torch_eager_over_jax"] == pytest.approx(dense["torch_eager_ms"] / dense["step_ms"])
    assert standard["torch_params"] - standard["params"] == 32 * 64  # GPT-2's learned positions
    assert ssm["torch_skipped"] == "GPT-2 has no SSM mixer" and "torch_eager_ms" not in ssm
    assert standard["over_standard"] == 1
    assert ssm["over_standard"] == pytest.approx(ssm["step_ms"] / standard["step_ms"])


@pytest.mark.slow
def test_scan_bench_times_every_scan_and_each_agrees_with_the_sequential_one(tmp_path):
    out = tmp_path / "scan.json"
    result = main(["scan", "--batch", "2", "--seq-len", "12", "--d-inner", "16", "--state", "4", "--head-dim", "4",
                   "--chunks", "4", "5", "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = [(r["kind"], r["method"], r["chunk"]) for r in result["rows"]]
    assert rows == [("mamba", "sequential", None), ("mamba", "associative", None), ("mamba", "chunked", 4),
                    ("mamba", "chunked", 5), ("ssd", "sequential", None), ("ssd", "chunked", 4), ("ssd", "chunked", 5)]
    assert all(r["max_abs_diff"] < 1e-4 and r["fwd_bwd_ms"] > 0 for r in result["rows"])
    with pytest.raises(ConfigError, match="--head-dim must divide --d-inner"):
        main(["scan", "--d-inner", "16", "--head-dim", "5"])


def test_a_row_is_a_preset_with_overrides_and_bad_ones_are_config_errors():
    cfg = row_config("dwr_moe:model.moe.enabled=false,model.d_model=128", False, ["--model.n_layers", "3"])
    m = cfg.model
    assert (m.moe.enabled, m.d_model, m.n_layers, m.vocab_size) == (False, 128, 3, 50304)
    assert row_config("dense_d512", False, []).model.tie_embeddings
    with pytest.raises(ConfigError, match="not key=value"):
        row_config("standard:model.d_model", False, [])
