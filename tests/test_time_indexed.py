"""Time-indexed sharing: reduction to a dense stack, init, closed-form counts, training, depth, exploration API."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.analysis import modulation
from chimera_jax.config import ModelConfig, OptimConfig, RunConfig, SSMConfig, TimeConfig, TrainConfig
from chimera_jax.data import TokenStream
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.models.builder import build_model, make_block, make_stack
from chimera_jax.models.params import param_report
from chimera_jax.models.time_indexed import with_depth
from chimera_jax.models.transformer import ScannedStack
from chimera_jax.train.optimizer import decay_mask, make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import make_train_step

V, D, F, L, E, H = 256, 16, 32, 3, 8, 6  # V: the byte tokenizer's, which a RunConfig requires


def tiny(mixer: str = "attention", gate: str = "out", **time) -> ModelConfig:
    return ModelConfig(vocab_size=V, max_seq_len=16, d_model=D, d_ff=F, n_layers=L, n_heads=2, mixer=mixer,
                       positions="none" if mixer == "ssm" else "sinusoidal", ssm=SSMConfig(state_size=4, expand=2),
                       time=TimeConfig(enabled=True, emb_dim=E, hidden=H, gate=gate, rank=2, **time))


TOKENS = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, V)
logits = eqx.filter_jit(lambda model, tokens: model(tokens, inference=True)[0])


def test_gates_forced_to_one_give_the_dense_stack_of_shared_weights():
    model = build_model(tiny(), jax.random.PRNGKey(0))
    head = model.stack.modulation.head
    ones = eqx.tree_at(lambda m: (m.stack.modulation.head.weight, m.stack.modulation.head.bias), model,
                       (jnp.zeros_like(head.weight), jnp.full_like(head.bias, 30.0)))  # σ(30) == 1 in f32
    shared = jax.tree_util.tree_map(lambda a: jnp.stack([a] * L), ones.stack.block)
    dense = eqx.tree_at(lambda m: m.stack, ones, ScannedStack((shared,)))
    np.testing.assert_allclose(logits(ones, TOKENS), logits(dense, TOKENS), rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits(model, TOKENS), logits(dense, TOKENS), atol=1e-4)


@pytest.mark.parametrize("mixer", ["attention", "ssm"])
def test_whole_model_is_causal(mixer):
    """A changed future token leaves every earlier logit bit-identical (no leak through mixer, gates or norms)."""
    model = build_model(tiny(mixer), jax.random.PRNGKey(0))
    changed = TOKENS.at[:, 5].set((TOKENS[:, 5] + 1) % V)
    a, b = logits(model, TOKENS), logits(model, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("mixer", ["attention", "ssm"])
def test_init_gates_and_effective_weights_are_the_usual_init(mixer):
    cfg = tiny(mixer, gate="in_out", gate_init=0.3)
    key = jax.random.PRNGKey(0)
    stack = make_stack(cfg, key)
    for g in jax.vmap(stack.modulation)(stack.times()):
        np.testing.assert_allclose(g, 0.3, rtol=1e-5)
    usual = make_block(cfg, jax.random.split(key)[0])  # the stack's own block key
    gated = eqx.filter_jit(lambda s, t: s.block_at(t))
    for t in (0.2, 1.0):
        leaves = jax.tree_util.tree_leaves(gated(stack, jnp.asarray(t)))
        for a, b in zip(leaves, jax.tree_util.tree_leaves(usual), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_optimizer_gates_and_report_share_one_rule_for_roles():
    """roles.py decides for all three: the leaves the optimizer decays are the matrices the report counts and,
    in the shared block, the ones gated as matrices; the block's leaves fall into the documented roles."""
    model = build_model(tiny("ssm"), jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_array)
    name = lambda path: jax.tree_util.keystr(path, simple=True, separator=".")  # noqa: E731
    sizes = {name(path): leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    decayed = {name(path) for path, d in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0] if d}
    assert param_report(model)["matrix"] == sum(sizes[p] for p in decayed)

    specs = model.stack.modulation.specs
    in_block = lambda paths: {p.removeprefix("stack.block.") for p in paths if p.startswith("stack.block.")}  # noqa: E731
    matrices = {"mixer.w_in.weight", "mixer.w_conv", "mixer.w_x.weight", "mixer.w_dt.weight", "mixer.w_out.weight",
                "ffn.w_in.weight", "ffn.w_out.weight"}
    channels = {"norm_mixer.scale", "norm_ffn.scale", "mixer.D", "mixer.dt_bias"}
    others = {"norm_mixer.bias", "norm_ffn.bias", "mixer.conv_bias", "mixer.A_log", "ffn.w_in.bias", "ffn.w_out.bias"}
    assert in_block(sizes) == matrices | channels | others
    assert in_block(decayed) == {s.path for s in specs if s.kind != "vector"} == matrices
    assert {s.path for s in specs if s.kind == "vector"} == channels
    assert decayed - {f"stack.block.{p}" for p in matrices} == {
        "embed.weight", "stack.modulation.hidden.weight", "stack.modulation.head.weight"}


def abstract_model(cfg: ModelConfig):
    """Shapes only: counting parameters needs no initialisation."""
    return eqx.filter_eval_shape(build_model, cfg, jax.random.PRNGKey(0))


def n_logits(gate: str, d_in: int, d_out: int, r: int = 2) -> int:
    return {"out": d_out, "in_out": d_in + d_out, "lowrank": r * (d_in + d_out) + d_out, "full": d_in * d_out}[gate]


@pytest.mark.parametrize("gate", ["out", "in_out", "lowrank", "full"])
@pytest.mark.parametrize("mixer", ["attention", "ssm"])
def test_param_counts_match_closed_forms(mixer, gate):
    cfg = tiny(mixer, gate)
    mlp = [(D, F), (F, D)]
    if mixer == "attention":
        matrices = [(D, D)] * 4 + mlp
        vectors = [D, D]  # the two norm scales
    else:
        di, n, k, r = 2 * D, 4, 4, 1
        matrices = [(D, 2 * di), (k, di), (di, r + 2 * n), (r, di), (di, D)] + mlp
        vectors = [D, D, di, di]  # norm scales, D, dt_bias
    n_total = sum(n_logits(gate, *m) for m in matrices) + sum(vectors)
    expected_modulation = E * H + H + (H + 1) * n_total
    one_layer = param_report(abstract_model(ModelConfig(**{**vars(cfg), "n_layers": 1, "time": TimeConfig()})))
    report = param_report(abstract_model(cfg))
    assert report["by_component"]["modulation"] == expected_modulation
    assert report["total"] == report["active"] == one_layer["total"] + expected_modulation


@pytest.mark.parametrize("mixer", ["attention", "ssm"])
@pytest.mark.slow
def test_step_compiles_once_and_loss_falls(mixer):
    cfg = RunConfig(model=tiny(mixer), optim=OptimConfig(lr=1e-2, warmup_steps=0),
                    train=TrainConfig(steps=30, batch_size=4))
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    state = init_state(cfg, optimizer)
    step = make_train_step(cfg, optimizer, lambda s: cfg.optim.lr, max_traces=1)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (4, 13), 0, V)  # one batch, memorised
    losses = []
    for _ in range(cfg.train.steps):
        state, metrics = step(state, tokens[:, :-1], tokens[:, 1:])
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < losses[0] - 0.5, losses
    # Training made the depths differ: the modulation learnt something.
    rows = modulation.gate_rows(modulation.gate_values(state.model))
    assert max(np.ptp(r, axis=0).max() for r in rows.values()) > 1e-3


def test_another_depth_runs_changes_the_output_and_reuses_the_weights():
    model = build_model(tiny(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(logits(with_depth(model, L), TOKENS), logits(model, TOKENS))
    deeper = with_depth(model, 5)
    assert deeper.stack.depth == 5 and param_report(deeper)["total"] == param_report(model)["total"]
    assert not np.allclose(logits(deeper, TOKENS), logits(model, TOKENS), atol=1e-4)
    with pytest.raises(ValueError, match="time-indexed"):
        with_depth(abstract_model(ModelConfig(**{**vars(tiny()), "time": TimeConfig()})), 2)


def test_exploration_api_shapes():
    model = build_model(tiny("ssm"), jax.random.PRNGKey(0))
    gates = modulation.gate_values(model, depth=4)
    assert gates["mixer.w_in.weight"].shape == (4, 1, 4 * D) and gates["mixer.D"].shape == (4, 2 * D)
    assert modulation.gate_similarity(gates).shape == (4, 4)
    stats = modulation.ssm_dynamics(model, TOKENS)
    assert stats["dt"].shape == (L, 2 * D) and stats["decay"].shape == (L, 2 * D, 4) and stats["A"].shape == (2 * D, 4)
    assert ((stats["decay"] > 0) & (stats["decay"] < 1)).all()
    stream = TokenStream("probe", np.asarray(TOKENS).ravel().repeat(3), np.ones(V, np.int64))
    protocol = EvalProtocol(corpus="bbc_news", tokenizer="t", seq_len=8, stride=8, batch_size=2)
    losses = modulation.depth_losses(model, stream, protocol, [1, 3])
    assert set(losses) == {1, 3} and all(np.isfinite(v) for v in losses.values())


def test_ssd_dynamics_are_reported_per_channel_and_shared_within_each_head():
    cfg = dataclasses.replace(tiny("ssm"), ssm=SSMConfig(state_size=4, expand=2, kind="ssd", head_dim=8))
    stats = modulation.ssm_dynamics(build_model(cfg, jax.random.PRNGKey(0)), TOKENS)
    assert stats["dt"].shape == (L, 2 * D) and stats["decay"].shape == (L, 2 * D, 4) and stats["A"].shape == (2 * D, 4)
    heads = stats["decay"].reshape(L, 4, 8, 4)  # 4 heads of 8 channels: one decay per head and depth
    np.testing.assert_allclose(heads, np.broadcast_to(heads[:, :, :1, :1], heads.shape), rtol=1e-6)
    assert not np.allclose(heads[:, 0], heads[:, 1])  # the heads differ
