"""Evaluation windows and perplexity; eval.py on a checkpoint reproduces the loop's validation loss."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from chimera_jax.config import ModelConfig
from chimera_jax.eval.perplexity import evaluate
from chimera_jax.eval.windows import make_windows, window_batches
from chimera_jax.models.registry import build_model
from chimera_jax.train.loop import train
from chimera_jax.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import eval as eval_script  # noqa: E402


@pytest.mark.parametrize("n,seq_len,stride", [(100, 16, 16), (100, 16, 5), (17, 16, 16), (18, 16, 3), (2, 4, 4)])
def test_every_target_scored_exactly_once(n, seq_len, stride):
    tokens = np.arange(n)
    scored = []
    for inputs, targets, weights in window_batches(tokens, seq_len, stride, batch_size=3):
        assert inputs.shape == targets.shape == weights.shape == (3, seq_len)
        scored += targets[weights > 0].tolist()
        valid = weights > 0
        np.testing.assert_array_equal(targets[valid], inputs[valid] + 1)  # targets are next tokens
    assert sorted(scored) == list(range(1, n))


def test_sliding_windows_give_each_scored_target_the_most_context():
    windows = make_windows(100, 16, 4)
    assert windows[0].n_score == 16 and all(w.n_score == 4 for w in windows[1:-1])
    assert all(w.length == 16 for w in windows[:-1])


def test_bad_stride_fails():
    with pytest.raises(ValueError, match="stride"):
        make_windows(100, 16, 17)


def test_non_overlapping_perplexity_equals_direct_computation():
    cfg = ModelConfig(vocab_size=50, max_seq_len=8, d_model=16, n_layers=1, n_heads=2)
    model = build_model(cfg, jax.random.PRNGKey(0))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (8 * 5 + 1,), 0, 50))
    result = evaluate(model, tokens, seq_len=8, batch_size=2, token_bytes=np.full(50, 2))
    logits, _ = model(tokens[:-1].reshape(5, 8), inference=True)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[1:].reshape(5, 8))
    assert result["tokens_scored"] == 40
    assert result["loss"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(float(nll.sum()) / np.log(2) / 80, rel=1e-6)


def test_eval_script_reproduces_the_loops_last_validation_loss(tiny_config, tmp_path):
    cfg = tiny_config("--train.steps", "10")
    train(cfg)
    last_val = read_metrics(cfg.run_dir, "validation")[-1]
    out = tmp_path / "eval.json"
    result = eval_script.main(["--checkpoint", str(cfg.run_dir), "--split", "validation",
                               "--max-windows", str(cfg.train.eval_batches * cfg.train.batch_size),
                               "--batch-size", str(cfg.train.batch_size), "--json", str(out)])
    assert result["loss"] == pytest.approx(last_val["loss"], rel=1e-6)
    assert out.exists()
