"""The MoE FFN: sparse dispatches against the dense oracle, capacity drops, losses, noise, training,
the disabled flag, and parameter counts."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import (
    ModelConfig,
    MoEConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
    preset_path,
    resolve_config,
)
from chimera_jax.models.builder import build_model, make_ffn
from chimera_jax.models.dispatch import capacity_dispatch, capacity_slots, dense_dispatch
from chimera_jax.models.grouped import grouped_blocks, grouped_fair_share, grouped_ragged
from chimera_jax.models.params import param_report
from chimera_jax.models.routing import Routing, balance_loss, routing_stats, z_loss
from chimera_jax.train.optimizer import lr_schedule, make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import make_train_step


def moe_cfg(d_model: int = 16, **moe) -> ModelConfig:
    return ModelConfig(vocab_size=61, max_seq_len=16, d_model=d_model, n_layers=2, n_heads=2,
                       moe=MoEConfig(**{"enabled": True, "d_ff": 24, **moe}))


def with_dispatch(cfg: ModelConfig, dispatch: str, **moe) -> ModelConfig:
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, dispatch=dispatch, **moe))


def hand_routing(experts: list[list[int]], num_experts: int) -> Routing:
    """A Routing with the given choices, distinct gates and probabilities."""
    idx = jnp.asarray(experts, jnp.int32)
    logits = jax.random.normal(jax.random.PRNGKey(7), (idx.shape[0], num_experts))
    probs = jax.nn.softmax(logits)
    return Routing(logits, probs, idx, jnp.take_along_axis(probs, idx, axis=-1))


DISPATCH_CASES = [  # E, k, (B, T) with an odd token count, ffn, bias, gate
    (4, 1, (1, 7), "gelu", True, "softmax_topk"),
    (7, 2, (3, 5), "swiglu", False, "topk_softmax"),
    (3, 3, (1, 9), "gelu", True, "softmax_topk"),
    (8, 2, (1, 3), "swiglu", True, "softmax_topk"),  # 6 assignments < 8 experts (a decoding step's size)
]


@pytest.mark.parametrize("E,k,shape,ffn,bias,gate", DISPATCH_CASES)
@pytest.mark.slow
def test_sparse_dispatches_equal_dense_in_outputs_and_gradients(E, k, shape, ffn, bias, gate):
    """capacity (sized so nothing drops) and dropless reproduce the dense oracle: output, aux loss and
    the gradient of every parameter (router and experts) and of the input."""
    base = dataclasses.replace(moe_cfg(num_experts=E, top_k=k, bias=bias, gate=gate), ffn=ffn)
    # Capacity C = ceil(cf * k * N / E) >= N, the most any one expert can receive.
    layers = {d: make_ffn(with_dispatch(base, d, capacity_factor=E / k), jax.random.PRNGKey(0), moe=True)
              for d in ("dense", "capacity", "dropless")}
    x = jax.random.normal(jax.random.PRNGKey(1), (*shape, 16))
    cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def loss(layer_and_x):
        y, aux = layer_and_x[0](layer_and_x[1], inference=True)
        return jnp.sum(y * cotangent) + aux["aux_loss"], (y, aux)

    results = eqx.filter_jit(lambda ls, h: {d: eqx.filter_value_and_grad(loss, has_aux=True)((m, h))
                                            for d, m in ls.items()})(layers, x)
    (_, (y_ref, aux_ref)), (g_ref, dx_ref) = results["dense"]
    assert aux_ref["dropped_fraction"] == 0 and y_ref.shape == x.shape
    for d in ("capacity", "dropless"):
        (_, (y, aux)), (g, dx) = results[d]
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6, err_msg=d)
        np.testing.assert_allclose(aux["aux_loss"], aux_ref["aux_loss"], rtol=1e-6)
        assert aux["dropped_fraction"] == 0
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=d)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-6, err_msg=d)
    assert all(np.abs(leaf).max() > 0 for leaf in jax.tree_util.tree_leaves(g_ref.router))


@pytest.mark.parametrize("sizes", [[3, 0, 7, 1, 2], [13, 0, 0, 0, 0], [3, 2, 3, 2, 3]],
                         ids=["mixed", "all_on_one", "within_fair_share"])
@pytest.mark.slow
def test_grouped_ffns_agree(sizes):
    """The GPU/TPU grouped matmul (ragged_dot), the block scan and the CPU fair-share split give the same
    values and gradients: empty groups, groups spanning several blocks, rows past the fair share (3 of
    13 rows over 5 experts) for some, all or none of the experts."""
    experts = make_ffn(moe_cfg(num_experts=5, top_k=2, bias=True), jax.random.PRNGKey(0), moe=True).experts
    sizes = jnp.array(sizes)
    rows = jax.random.normal(jax.random.PRNGKey(1), (13, 16))

    def grads(fn):
        return jax.jit(jax.value_and_grad(lambda e, r: jnp.sum(jnp.sin(fn(e, r))), argnums=(0, 1)))(experts, rows)

    ragged = grads(lambda e, r: grouped_ragged(e, r, sizes))
    for name, fn in {"blocks": lambda e, r: grouped_blocks(e, r, sizes, block=2),
                     "fair_share": lambda e, r: grouped_fair_share(e, r, sizes)}.items():
        for a, b in zip(jax.tree_util.tree_leaves(grads(fn)), jax.tree_util.tree_leaves(ragged), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_grouped_ffns_leave_the_routed_rows_alone_with_padding_rows_past_the_groups():
    """Expert parallelism's receive buffers end in padding rows (past sum(group_sizes)): every grouped FFN gives
    the routed rows the values and gradients it gives them without the padding, the fair share sized by
    ``expected_rows`` or by all rows."""
    experts = make_ffn(moe_cfg(num_experts=5, top_k=2, bias=True), jax.random.PRNGKey(0), moe=True).experts
    sizes = jnp.array([3, 0, 7, 1, 2])
    rows = jax.random.normal(jax.random.PRNGKey(1), (13, 16))
    padding = jax.random.normal(jax.random.PRNGKey(3), (9, 16))

    def grads(fn, padded: bool):
        def routed(e, r):
            out = fn(e, jnp.concatenate([r, padding]) if padded else r)
            return jnp.sum(jnp.sin(out[:13]))

        return jax.jit(jax.value_and_grad(routed, argnums=(0, 1)))(experts, rows)

    for name, fn in {"ragged": lambda e, r: grouped_ragged(e, r, sizes),
                     "blocks": lambda e, r: grouped_blocks(e, r, sizes, block=2),
                     "fair_share": lambda e, r: grouped_fair_share(e, r, sizes),
                     "fair_share_expected": lambda e, r: grouped_fair_share(e, r, sizes, expected_rows=10)}.items():
        expected = jax.tree_util.tree_leaves(grads(fn, padded=False))
        for a, b in zip(jax.tree_util.tree_leaves(grads(fn, padded=True)), expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_block_scan_skip_leaves_out_the_first_rows_of_each_group():
    experts = make_ffn(moe_cfg(num_experts=3, top_k=1, bias=True), jax.random.PRNGKey(0), moe=True).experts
    sizes = jnp.array([4, 1, 3])
    rows = jax.random.normal(jax.random.PRNGKey(1), (8, 16))
    full = grouped_blocks(experts, rows, sizes, block=2)
    skipped = grouped_blocks(experts, rows, sizes, block=2, skip=2)
    kept = np.array([False, False, True, True, False, False, False, True])  # local index >= 2
    np.testing.assert_allclose(skipped[kept], full[kept], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(skipped[~kept], 0)


def test_capacity_drops_the_expected_assignments():
    """E=3, k=2, 5 tokens, 2 slots per expert. First choices fill first, in token order:
    e0 <- t0, t1; e1 <- t2, t3; e2 <- t4. Then second choices: t0 -> e1 is full (a later token's first
    choice displaced it), t1 -> e2 fits, t2 -> e0, t3 -> e2 and t4 -> e0 are full. 4 of 10 dropped."""
    routing = hand_routing([[0, 1], [0, 2], [1, 0], [1, 2], [2, 0]], num_experts=3)
    position, kept = capacity_slots(routing.experts, 3, slots=2)
    np.testing.assert_array_equal(position, [[0, 2], [1, 1], [0, 2], [1, 2], [0, 3]])
    expected_kept = np.array([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0]], bool)
    np.testing.assert_array_equal(kept, expected_kept)

    experts = make_ffn(moe_cfg(num_experts=3, top_k=2, bias=True), jax.random.PRNGKey(0), moe=True).experts
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
    survivors = routing._replace(gates=routing.gates * expected_kept)

    @eqx.filter_jit
    def both(experts, x):  # ceil(0.5 * k * N / E) = ceil(1.67) = 2 slots
        return capacity_dispatch(experts, x, routing, capacity_factor=0.5), dense_dispatch(experts, x, survivors)[0]

    (y, kept), y_survivors = both(experts, x)
    np.testing.assert_array_equal(kept, expected_kept)
    assert float(routing_stats(routing, kept)["dropped_fraction"]) == pytest.approx(0.4)
    # Dropped assignments contribute nothing; the others keep their gates (no renormalisation).
    np.testing.assert_allclose(y, y_survivors, rtol=1e-5, atol=1e-6)


def test_balance_and_z_loss_closed_forms():
    E, n = 4, 8
    uniform = jnp.full((n, E), 1.0 / E)
    top1 = jnp.arange(n)[:, None] % E
    top2 = jnp.stack([jnp.arange(n) % E, (jnp.arange(n) + 1) % E], axis=1)
    assert float(balance_loss(uniform, top1)) == pytest.approx(1.0)
    assert float(balance_loss(uniform, top2)) == pytest.approx(1.0)
    # Collapse: top-1 all on expert 0 with probability 1 -> E.
    collapsed = jnp.zeros((n, E)).at[:, 0].set(1.0)
    assert float(balance_loss(collapsed, jnp.zeros((n, 1), jnp.int32))) == pytest.approx(E)
    # Top-2 collapse onto experts {0, 1} (f = 1/2 each) with P = (0.7, 0.3, 0, 0) -> E * (0.35 + 0.15).
    probs = jnp.zeros((n, E)).at[:, 0].set(0.7).at[:, 1].set(0.3)
    pair = jnp.tile(jnp.array([[0, 1]]), (n, 1))
    assert float(balance_loss(probs, pair)) == pytest.approx(E * 0.5)

    assert float(z_loss(jnp.zeros((n, E)))) == pytest.approx(math.log(E) ** 2)
    assert float(z_loss(jnp.full((n, E), 2.0))) == pytest.approx((2.0 + math.log(E)) ** 2)

    balanced = Routing(jnp.zeros((n, E)), uniform, top2, jnp.full((n, 2), 0.25))
    stats = routing_stats(balanced, jnp.ones((n, 2), bool))
    np.testing.assert_allclose(stats["expert_load"], np.full(E, 1.0 / E))
    assert float(stats["load_entropy"]) == pytest.approx(math.log(E))
    assert float(stats["router_entropy"]) == pytest.approx(math.log(E))
    assert float(stats["load_max_min_ratio"]) == pytest.approx(1.0)
    idle = routing_stats(balanced._replace(experts=jnp.zeros((n, 1), jnp.int32)), jnp.ones((n, 1), bool))
    assert float(idle["load_max_min_ratio"]) == pytest.approx(n)  # an idle expert counts as one assignment


@pytest.mark.slow
def test_aux_loss_is_the_weighted_sum():
    cfg = moe_cfg(num_experts=4, top_k=2, balance_loss_weight=0.3, z_loss_weight=0.07)
    _, aux = make_ffn(cfg, jax.random.PRNGKey(0), moe=True)(jnp.ones((1, 3, 16)), inference=True)
    assert float(aux["aux_loss"]) == pytest.approx(0.3 * float(aux["balance_loss"]) + 0.07 * float(aux["z_loss"]))
    assert aux["expert_load"].shape == (4,) and float(aux["expert_load"].sum()) == pytest.approx(1.0)


def test_noise_and_jitter_only_in_training_and_seeded():
    layer = make_ffn(moe_cfg(num_experts=4, top_k=2, noisy=True, jitter=0.1), jax.random.PRNGKey(0), moe=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 16))
    k1, k2 = jax.random.PRNGKey(5), jax.random.PRNGKey(6)
    calls = [(None, True), (k1, True), (None, False), (k1, False), (k1, False), (k2, False)]
    outs = eqx.filter_jit(lambda m, h: [m(h, key=k, inference=i)[0] for k, i in calls])(layer, x)
    evaluated, evaluated_with_key, no_key, trained, trained_again, other_key = outs
    np.testing.assert_array_equal(evaluated, evaluated_with_key)
    np.testing.assert_array_equal(evaluated, no_key)  # training mode without a key: no noise
    np.testing.assert_array_equal(trained, trained_again)
    assert not np.allclose(trained, evaluated)
    assert not np.allclose(trained, other_key)


@pytest.mark.slow
def test_tiny_moe_model_trains_and_compiles_once():
    """MoE every 2nd layer (groups in the scanned stack), dropless; the step traces once and the loss
    falls on a fixed batch. Per-layer routing metrics come out of the step."""
    model = dataclasses.replace(moe_cfg(d_model=32, num_experts=4, top_k=2, every=2, noisy=True), n_layers=4,
                                vocab_size=256)  # a RunConfig requires the byte tokenizer's vocabulary
    cfg = RunConfig(name="tiny_moe", model=model, optim=OptimConfig(lr=1e-2, warmup_steps=2),
                    train=TrainConfig(steps=12, batch_size=4))
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    step = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), max_traces=1)
    state = eqx.filter_jit(lambda: init_state(cfg, optimizer))()
    tokens = jax.random.randint(jax.random.PRNGKey(3), (4, 17), 0, 61)
    losses = []
    for _ in range(cfg.train.steps):
        state, metrics = step(state, tokens[:, :-1], tokens[:, 1:])
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    aux = metrics["aux"]
    assert aux["expert_load"].shape == (2, 4)  # two MoE layers
    assert float(metrics["loss"]) == pytest.approx(float(metrics["ce"]) + float(aux["aux_loss"].sum()), rel=1e-5)


def test_moe_disabled_is_exactly_the_dense_model():
    dense = dataclasses.replace(moe_cfg(), moe=MoEConfig())
    off = moe_cfg(enabled=False, num_experts=3, top_k=1, every=2, noisy=True, dispatch="capacity")
    a, b = build_model(dense, jax.random.PRNGKey(0)), build_model(off, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    logits = eqx.filter_jit(lambda models, t: [m(t, inference=True)[0] for m in models])((a, b), jnp.arange(12)[None])
    np.testing.assert_array_equal(*logits)


@pytest.mark.parametrize("dispatch", ["dense", "dropless"])
def test_one_expert_moe_with_the_dense_ffn_weights_is_the_dense_model(dispatch):
    """E = k = 1: the gate is softmax over one logit = 1, so the MoE is its expert; given the dense
    model's FFN weights, the logits are the dense model's."""
    cfg = ModelConfig(vocab_size=61, max_seq_len=16, d_model=16, n_layers=2, n_heads=2, d_ff=24)
    dense = build_model(cfg, jax.random.PRNGKey(0))
    moe = dataclasses.replace(cfg, moe=MoEConfig(enabled=True, num_experts=1, top_k=1, dispatch=dispatch, bias=True))
    model = build_model(moe, jax.random.PRNGKey(0))
    model = eqx.tree_at(lambda m: m.stack.groups[0].ffn.experts, model,
                        jax.tree_util.tree_map(lambda w: w[:, None], dense.stack.groups[0].ffn))
    logits = eqx.filter_jit(lambda models, t: [m(t, inference=True)[0] for m in models])((model, dense),
                                                                                          jnp.arange(12)[None])
    np.testing.assert_allclose(*logits, atol=1e-5)


@pytest.mark.parametrize("ffn,bias", [("gelu", True), ("swiglu", False)])
def test_param_report_total_and_active_closed_form(ffn, bias):
    E, k, d, f, v, n_layers, every = 4, 2, 16, 24, 61, 4, 2
    cfg = dataclasses.replace(moe_cfg(num_experts=E, top_k=k, every=every, bias=bias), ffn=ffn, bias=bias,
                              n_layers=n_layers, d_ff=40)
    report = param_report(eqx.filter_eval_shape(build_model, cfg, jax.random.PRNGKey(0)))
    n_mats = 3 if ffn == "swiglu" else 2
    b = int(bias)

    def ffn_params(width: int) -> int:
        return n_mats * d * width + b * ((n_mats - 1) * width + d)

    norm = d * (2 if bias else 1)
    attn = 4 * d * d + b * 4 * d
    n_moe = n_layers // every
    moe_layer = E * ffn_params(f) + d * E + b * E  # experts + router
    total = v * d + n_layers * (attn + 2 * norm) + norm + (n_layers - n_moe) * ffn_params(40) + n_moe * moe_layer
    assert report["total"] == total
    assert report["active"] == total - n_moe * (E - k) * ffn_params(f)


def test_dwr_preset_reproduces_the_seed_parameter_counts():
    """Seed 000: 259,712,096 total, 83,336,288 active (docs/moe.md explains the choices)."""
    cfg = load_config(preset_path("dwr_moe"))
    cfg = resolve_config(cfg, 50257)
    report = param_report(eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0)))
    assert (report["total"], report["active"]) == (259_712_096, 83_336_288)
    assert report["total"] - report["active"] == 14 * 6 * (512 * 2048 + 2048 + 2048 * 512 + 512)
