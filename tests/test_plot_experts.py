"""Expert load (analysis/expert_load.py) from a run's metrics and from its checkpoint, and chimera-plot-experts."""

from __future__ import annotations

import numpy as np
import pytest

from chimera_jax.analysis import expert_load
from chimera_jax.cli import plot_experts
from chimera_jax.config import ConfigError
from chimera_jax.train.loop import train

MOE = ("--model.moe.enabled", "true", "--model.moe.num_experts", "4", "--model.moe.top_k", "2",
       "--model.moe.d_ff", "32")


@pytest.mark.slow
def test_loads_from_metrics_and_checkpoint_are_shares_per_layer_and_plot(tiny_config):
    cfg = tiny_config("--train.steps", "6", "--train.eval_every", "6", "--train.checkpoint_every", "6", *MOE)
    train(cfg)
    steps, loads = expert_load.loads_from_metrics(cfg.run_dir)
    assert steps.tolist() == [1, 2, 3, 4, 5, 6]
    assert loads.shape == (6, cfg.model.n_layers, 4)
    np.testing.assert_allclose(loads.sum(-1), 1.0, rtol=1e-5)
    from_ckpt, _, step = expert_load.loads_from_checkpoint(cfg.run_dir, batches=1)
    assert step == 6 and from_ckpt.shape == (cfg.model.n_layers, 4)
    np.testing.assert_allclose(from_ckpt.sum(-1), 1.0, rtol=1e-5)

    for extra in ([], ["--from-checkpoint"]):
        out = plot_experts.main(["--checkpoint", str(cfg.run_dir), *extra,
                                 "--out", str(cfg.run_dir / f"plot{len(extra)}.png")])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="step: 99 was not logged"):
        plot_experts.main([str(cfg.run_dir), "--step", "99"])


@pytest.mark.slow
def test_a_dense_run_is_refused_with_a_clear_message(tiny_config):
    cfg = tiny_config("--train.steps", "2", "--train.eval_every", "2", "--train.checkpoint_every", "2")
    train(cfg)
    with pytest.raises(ConfigError, match="not an MoE run"):
        plot_experts.main([str(cfg.run_dir)])
