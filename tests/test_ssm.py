"""The selective SSM mixer: the parallel and chunked scans against the sequential reference, causality, init,
counts."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import ConfigError, ModelConfig, SSMConfig
from chimera_jax.models.ssd import diagonal, ssd_scan
from chimera_jax.models.ssm import SelectiveSSM, selective_scan
from chimera_jax.train.optimizer import decay_mask

D = 16


def tiny(**ssm) -> SSMConfig:
    return SSMConfig(state_size=4, **ssm)


def scan_inputs(key, B=2, T=9, Di=6, N=4):
    k = jax.random.split(key, 5)
    u = jax.random.normal(k[0], (B, T, Di))
    dt = jax.nn.softplus(jax.random.normal(k[1], (B, T, Di)))
    A = -jnp.exp(jax.random.normal(k[2], (Di, N)))
    return u, dt, A, jax.random.normal(k[3], (B, T, N)), jax.random.normal(k[4], (B, T, N))


# (method, chunk): the chunk sizes cover a sequence of 9 in whole chunks of 1, with a padded last chunk, and in
# one chunk longer than the sequence; "auto" is the chunked scan on this CPU, through platform_dependent.
SCANS = [("associative", 8), ("chunked", 1), ("chunked", 4), ("chunked", 16), ("auto", 4)]


@pytest.mark.parametrize(("method", "chunk"), SCANS)
@pytest.mark.slow
def test_scans_agree_with_the_sequential_reference_in_outputs_and_all_gradients(method, chunk):
    u, dt, A, B, C = scan_inputs(jax.random.PRNGKey(0))
    h0 = jax.random.normal(jax.random.PRNGKey(5), (u.shape[0], *A.shape))

    def loss(method, *a):
        y, h_last = selective_scan(*a[:5], method=method, h0=a[5], chunk=chunk)
        # non-linear read-outs of y and of the last state, so every gradient path is exercised
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(h_last))

    args = (u, dt, A, B, C, h0)
    for got, want in zip(selective_scan(*args[:5], method=method, h0=h0, chunk=chunk),
                         selective_scan(*args[:5], method="sequential", h0=h0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: loss(method, *a), argnums=tuple(range(6))))(*args)
    reference = jax.jit(jax.grad(lambda *a: loss("sequential", *a), argnums=tuple(range(6))))(*args)
    for a, b in zip(grads, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.slow
def test_ssd_chunks_of_matmuls_agree_with_the_diagonal_scan_they_are_a_case_of(chunk):
    """One Δ and A per head of 3 channels, repeated over the head's channels and the state: the sequential
    diagonal scan is the reference for the values and the gradients of every input, A per head included."""
    u, _, _, B, C = scan_inputs(jax.random.PRNGKey(0), Di=6)
    k_dt, k_A, k_h = jax.random.split(jax.random.PRNGKey(3), 3)
    dt = jax.nn.softplus(jax.random.normal(k_dt, (*u.shape[:2], 2)))
    A = -jnp.exp(jax.random.normal(k_A, (2,)))
    h0 = jax.random.normal(k_h, (u.shape[0], 6, B.shape[-1]))

    def loss(run, *a):
        y, h_last = run(*a)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(h_last))

    def ssd(u, dt, A, B, C, h0):
        return ssd_scan(u, dt, A, B, C, h0, chunk)

    def reference(u, dt, A, B, C, h0):
        return selective_scan(u, *diagonal(dt, A, 6, B.shape[-1]), B, C, "sequential", h0)

    args = (u, dt, A, B, C, h0)
    for got, want in zip(ssd(*args), reference(*args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: loss(ssd, *a), argnums=tuple(range(6))))(*args)
    expected = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums=tuple(range(6))))(*args)
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_ssd_mixer_runs_as_matmuls_or_as_the_diagonal_scan_alike():
    cfg = tiny(kind="ssd", head_dim=8, chunk=4)
    chunked = SelectiveSSM(D, cfg, key=jax.random.PRNGKey(0))
    sequential = SelectiveSSM(D, dataclasses.replace(cfg, scan="sequential"), key=jax.random.PRNGKey(0))
    assert chunked.A.shape == (4,) and chunked.dt_bias.shape == (4,)  # 2 * 16 channels in heads of 8
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 16))
    np.testing.assert_allclose(chunked(x), sequential(x), rtol=1e-5, atol=1e-6)
    changed = x.at[:, 6].add(1.0)
    np.testing.assert_array_equal(chunked(x)[:, :6], chunked(changed)[:, :6])


def test_ssd_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="model.ssm.head_dim=48 to divide the SSM's width"):
        ModelConfig(d_model=32, mixer="ssm", positions="none", ssm=SSMConfig(kind="ssd", head_dim=48))


def test_unknown_scan_is_refused():
    with pytest.raises(ValueError, match="unknown ssm scan 'parallel'"):
        selective_scan(*scan_inputs(jax.random.PRNGKey(0)), method="parallel")


def test_scan_matches_the_recurrence_written_out():
    u, dt, A, B, C = scan_inputs(jax.random.PRNGKey(1), B=1, T=3, Di=2, N=2)
    h = jnp.zeros((1, 2, 2))
    ys = []
    for k in range(3):
        h = jnp.exp(dt[:, k, :, None] * A) * h + (dt[:, k] * u[:, k])[..., None] * B[:, k, None, :]
        ys.append(jnp.sum(h * C[:, k, None, :], axis=-1))
    np.testing.assert_allclose(selective_scan(u, dt, A, B, C)[0], jnp.stack(ys, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["associative", "sequential", "chunked"])
def test_mixer_is_causal(method):
    ssm = SelectiveSSM(D, tiny(scan=method), key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 16))
    changed = x.at[:, 6].add(1.0)
    a, b = ssm(x), ssm(changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("method", ["associative", "chunked"])
def test_mixer_scans_agree_end_to_end(method):
    par = SelectiveSSM(D, tiny(scan=method, chunk=4), key=jax.random.PRNGKey(0))
    seq = SelectiveSSM(D, tiny(scan="sequential"), key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 16))
    np.testing.assert_allclose(par(x), seq(x), rtol=1e-5, atol=1e-6)


def test_init_dt_range_and_s4d_real_A():
    cfg = tiny(dt_min=1e-3, dt_max=1e-1)
    ssm = SelectiveSSM(D, cfg, key=jax.random.PRNGKey(0))
    dt = jax.nn.softplus(ssm.dt_bias)
    assert float(dt.min()) >= 1e-3 * (1 - 1e-4) and float(dt.max()) <= 1e-1 * (1 + 1e-4)
    np.testing.assert_allclose(ssm.A, -jnp.broadcast_to(jnp.arange(1.0, 5.0), ssm.A.shape), rtol=1e-6)
    np.testing.assert_array_equal(ssm.D, 1.0)


def test_param_count_closed_form_and_decay_names():
    cfg = tiny(expand=3, conv_kernel=3)
    ssm = SelectiveSSM(D, cfg, key=jax.random.PRNGKey(0))
    d, di, n, k, r = 16, 48, 4, 3, math.ceil(16 / 16)
    expected = d * 2 * di + k * di + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d
    assert sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(ssm, eqx.is_array))) == expected
    mask = decay_mask(eqx.filter(ssm, eqx.is_array))
    assert mask.w_in.weight and mask.w_x.weight and mask.w_dt.weight and mask.w_out.weight and mask.w_conv
    assert not (mask.A_log or mask.D or mask.dt_bias or mask.conv_bias)
