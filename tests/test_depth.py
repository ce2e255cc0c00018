"""Training across depths (TimeConfig.train_depth): the draws, a step at a drawn depth, resume, bad configs."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np
import pytest

from chimera_jax.config import ConfigError, ModelConfig, OptimConfig, RunConfig, TimeConfig, TrainConfig
from chimera_jax.models.time_indexed import DepthSampler
from chimera_jax.train.optimizer import make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import make_train_step

V, L = 256, 3


def config(unroll: int = 1, n_layers: int = L, seed: int = 0, **time) -> RunConfig:
    model = ModelConfig(vocab_size=V, max_seq_len=16, d_model=16, d_ff=32, n_layers=n_layers, n_heads=2,
                        scan_unroll=unroll, time=TimeConfig(enabled=True, emb_dim=8, hidden=6, **time))
    return RunConfig(model=model, optim=OptimConfig(lr=1e-2, warmup_steps=0), train=TrainConfig(steps=4, seed=seed))


def test_uniform_draws_cover_the_range_and_lognormal_centres_on_n_layers():
    keys = jax.random.split(jax.random.key(0), 4000)
    uniform = np.asarray(jax.jit(jax.vmap(DepthSampler("uniform", 2, 5, 3, 0.5)))(keys))
    assert sorted(set(uniform.tolist())) == [2, 3, 4, 5]
    assert DepthSampler("uniform", 2, 5, 3, 0.5).expected() == 3.5
    lognormal = DepthSampler("lognormal", 1, 64, 6, 0.5)
    draws = np.asarray(jax.jit(jax.vmap(lognormal))(keys))
    assert draws.min() >= 1 and draws.max() <= 64 and abs(draws.mean() - 6) < 0.2
    assert abs(lognormal.expected(4000) - 6) < 0.2
    clipped = np.asarray(jax.jit(jax.vmap(DepthSampler("lognormal", 4, 8, 6, 0.5)))(keys))
    assert clipped.min() == 4 and clipped.max() == 8


@pytest.mark.parametrize("unroll", [1, 8], ids=["scan", "loop"])
def test_a_step_at_a_drawn_depth_is_the_fixed_depth_step(unroll):
    """The one program over depth_max layers, the ones past L' skipped, steps exactly as a model trained at L'."""
    tokens = jax.random.randint(jax.random.key(2), (4, 9), 0, V)
    sampled = config(unroll, train_depth="uniform", depth_min=1, depth_max=6)
    optimizer = make_optimizer(sampled.optim, sampled.train.steps)
    step = make_train_step(sampled, optimizer, lambda s: sampled.optim.lr, max_traces=1)
    # A seed whose first step draws a depth other than n_layers (every seed compiles the one program).
    for seed in range(20):
        state = init_state(dataclasses.replace(sampled, train=dataclasses.replace(sampled.train, seed=seed)), optimizer)
        new, metrics = step(state, tokens[:, :-1], tokens[:, 1:])
        depth = int(metrics["aux"]["depth"])
        if depth != L:
            break
    fixed = config(unroll, n_layers=depth, seed=seed)
    # The same numbers (the init scales weights by depth, so the fixed-depth run's own init differs)
    arrays, static = eqx.partition(init_state(fixed, optimizer), eqx.is_array)
    fixed_state = eqx.combine(jax.tree.unflatten(jax.tree.structure(arrays),
                                                 jax.tree.leaves(eqx.filter(state, eqx.is_array))), static)
    fixed_new, fixed_metrics = make_train_step(fixed, optimizer, lambda s: fixed.optim.lr)(
        fixed_state, tokens[:, :-1], tokens[:, 1:])
    np.testing.assert_allclose(metrics["loss"], fixed_metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(eqx.filter(new.model, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(fixed_new.model, eqx.is_array)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_draws_the_same_depths(tmp_path, token_cache):
    import shutil

    from chimera_jax.train.loop import train
    from chimera_jax.train.metrics import read_metrics

    cfg = config(train_depth="uniform", depth_min=1, depth_max=6)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, vocab_size=None, max_seq_len=None),
        data=dataclasses.replace(cfg.data, corpus="bbc_news", tokenizer="byte", seq_len=16, cache_dir=str(token_cache)),
        train=dataclasses.replace(cfg.train, steps=4, batch_size=2, log_every=1, eval_every=4, eval_batches=1,
                                  checkpoint_every=2, progress=False, run_dir=str(tmp_path / "run")))

    def depths():
        return [m["aux/depth"] for m in read_metrics(cfg.run_dir, "train")]

    train(cfg)
    whole = depths()
    shutil.rmtree(cfg.run_dir / "checkpoints" / "4")  # as if killed after step 2's checkpoint
    train(cfg)  # resumes from step 2: steps 3 and 4 again
    assert depths() == whole and len(set(whole)) > 1, whole


@pytest.mark.parametrize(("time", "n_layers", "match"), [
    ({"train_depth": "uniform"}, L, "needs model.time.depth_max"),
    ({"train_depth": "uniform", "depth_min": 5, "depth_max": 4}, L, "depth_min=5 must be <= model.time.depth_max=4"),
    ({"train_depth": "lognormal", "depth_min": 4, "depth_max": 8}, L, "centres on model.n_layers=3"),
])
def test_bad_depth_ranges_are_one_line_errors(time, n_layers, match):
    with pytest.raises(ConfigError, match=match):
        config(n_layers=n_layers, **time)
    with pytest.raises(ConfigError, match="needs model.time.enabled"):
        ModelConfig(time=TimeConfig(train_depth="uniform", depth_max=4))


def test_training_flops_count_the_mean_drawn_depth():
    from chimera_jax.bench.flops import forward_flops_per_token, train_flops_per_token

    fixed = config(n_layers=6).model
    drawn = config(n_layers=6, train_depth="uniform", depth_min=3, depth_max=12).model  # 7.5 layers on average
    head = 3 * forward_flops_per_token(fixed, 16)["head"]
    assert train_flops_per_token(drawn, 16) - head == pytest.approx(1.25 * (train_flops_per_token(fixed, 16) - head))
    at_12 = forward_flops_per_token(fixed, 16, depth=12)
    assert at_12 == {k: v if k == "head" else 2 * v for k, v in forward_flops_per_token(fixed, 16).items()}


def test_each_loader_runs_the_depth_asked_for(tmp_path, token_cache):
    """eval and the study (runs.evaluate), generate (Generator.from_run) and lm_eval (ChimeraLM) take --depth."""
    from chimera_jax.config import resolve_config
    from chimera_jax.eval.protocol import EvalProtocol
    from chimera_jax.generate.engine import Generator
    from chimera_jax.harness.model import ChimeraLM
    from chimera_jax.runs.evaluate import load_run
    from chimera_jax.train.checkpoint import Checkpointer

    cfg = config()
    cfg = resolve_config(dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, corpus="bbc_news", tokenizer="byte", seq_len=16,
                                      cache_dir=str(token_cache)),
        train=dataclasses.replace(cfg.train, run_dir=str(tmp_path / "run"))), V)
    with Checkpointer(cfg.run_dir) as ckpt:
        ckpt.save(init_state(cfg, make_optimizer(cfg.optim, cfg.train.steps)), cfg)
    assert load_run(cfg.run_dir, EvalProtocol(max_windows=1), depth=5).model.stack.depth == 5
    assert Generator.from_run(cfg.run_dir, depth=7).model.stack.depth == 7
    assert ChimeraLM(str(cfg.run_dir), depth=9).model.stack.depth == 9
    assert ChimeraLM(str(cfg.run_dir)).model.stack.depth == L
