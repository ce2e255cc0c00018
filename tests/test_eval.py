"""Evaluation windows, the protocol, and the one evaluation loop's token and byte accounting."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chimera_jax import data
from chimera_jax.config import DataConfig, ModelConfig, RunConfig
from chimera_jax.eval.perplexity import evaluate, evaluate_model
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.eval.windows import make_windows, window_batches
from chimera_jax.models.builder import build_model
from chimera_jax.tokenizer import count_bytes


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


def run_config(**model) -> RunConfig:
    return RunConfig(model=ModelConfig(**{"max_seq_len": 32, **model}), data=DataConfig(tokenizer="gpt2", seq_len=32))


def test_protocol_takes_the_runs_own_settings_for_unset_fields():
    p = EvalProtocol(split="valid", max_windows=3).resolved_for(run_config())
    assert (p.corpus, p.split, p.tokenizer, p.seq_len, p.stride, p.max_windows) == (
        "bbc_news", "validation", "gpt2", 32, 32, 3)
    p = EvalProtocol(corpus="kjv", seq_len=16, stride=4).resolved_for(run_config())
    assert (p.corpus, p.seq_len, p.stride) == ("kjv", 16, 4)


@pytest.mark.parametrize("fields, message", [
    (dict(stride=33), r"stride must be in 1\.\.seq_len \(32\), got 33"),
    (dict(seq_len=16, stride=0), r"stride must be in 1\.\.seq_len \(16\), got 0"),
    (dict(seq_len=0), "seq_len must be a positive window length, got 0"),
    (dict(max_windows=0), "max_windows must be at least 1"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(split="dev"), "unknown split 'dev'"),
    (dict(corpus="nope"), "unknown corpus 'nope'"),
    (dict(tokenizer="byte"), "tokenizer: the model reads 'gpt2' ids, not 'byte'"),
    (dict(seq_len=64), "seq_len 64 exceeds the model's 32 learned positions"),
])
def test_impossible_protocols_fail_with_one_line_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        EvalProtocol(**fields).resolved_for(run_config(positions="learned"))
    assert "\n" not in str(err.value)


def test_a_rolling_cache_on_a_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="window: a rolling KV cache needs attention layers; this model's mixer "
                                         "is 'ssm'"):
        EvalProtocol(window=8).resolved_for(run_config(mixer="ssm"))
    assert EvalProtocol(window=8).resolved_for(run_config()).window == 8


def test_an_hf_model_has_no_corpus_or_seq_len_to_default_to():
    with pytest.raises(ValueError, match="corpus: this model has no training corpus"):
        EvalProtocol(seq_len=8).resolved(corpus=None, tokenizer="t", seq_len=None)
    with pytest.raises(ValueError, match="seq_len: this model has no training window length"):
        EvalProtocol(corpus="bbc_news").resolved(corpus=None, tokenizer="t", seq_len=None)


def test_describe_names_every_setting():
    text = EvalProtocol(corpus="wikitext-103", split="test", seq_len=512, stride=256, max_windows=4).describe()
    assert "wikitext-103, test split" in text and "seq-len 512, sliding windows, stride 256" in text
    assert "the first 4 windows only (models with different tokenizers score different prefixes" in text
    assert "bits/byte = total nats / ln 2" in text
    assert "non-overlapping windows, every window" in EvalProtocol(seq_len=512).describe()


def test_an_unresolved_protocol_is_refused():
    stream = data.TokenStream("t", np.arange(10, dtype=np.uint16), np.ones(10, np.int64))
    with pytest.raises(ValueError, match="resolve the protocol"):
        evaluate(lambda x, y, w: 0.0, stream, EvalProtocol(seq_len=4))


@pytest.mark.slow
def test_non_overlapping_perplexity_equals_direct_computation():
    cfg = ModelConfig(vocab_size=50, max_seq_len=8, d_model=16, n_layers=1, n_heads=2)
    model = build_model(cfg, jax.random.PRNGKey(0))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (8 * 5 + 1,), 0, 50))
    stream = data.TokenStream("random", tokens, np.full(50, 2, np.int64))
    protocol = EvalProtocol(corpus="bbc_news", tokenizer="t", seq_len=8, batch_size=2).resolved(
        corpus=None, tokenizer="t", seq_len=None)
    result = evaluate_model(model, stream, protocol)
    logits, _ = model(jnp.asarray(tokens[:-1].reshape(5, 8)), inference=True)  # the model takes jax arrays
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[1:].reshape(5, 8))
    assert result["tokens_scored"] == 40 and result["bytes_scored"] == 80
    assert result["loss"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(float(nll.sum()) / np.log(2) / 80, rel=1e-6)
    assert result["protocol"]["seq_len"] == 8 and result["protocol"]["tokenizer"] == "t"


@pytest.mark.parametrize("tokenizer", ["gpt2", "byte"])
@pytest.mark.parametrize("stride", [64, 24])
def test_a_whole_split_scores_the_bytes_of_its_text(tokenizer, stride, token_cache):
    """Bits/byte's denominator over every window is the split's UTF-8 text, document separators included
    (gpt2's end-of-text id stands for the two newlines it replaces), less the context-only first token."""
    cfg = DataConfig(corpus="bbc_news", tokenizer=tokenizer, cache_dir=str(token_cache))
    stream = data.load_stream(cfg, "validation")
    if tokenizer == "gpt2":
        assert (np.asarray(stream.tokens) == 50256).sum() == len(data.load_documents("bbc_news", "validation")) - 1
    protocol = EvalProtocol(stride=stride, batch_size=64).resolved_for(
        RunConfig(data=dataclasses.replace(cfg, seq_len=64)))
    result = evaluate(lambda x, y, w: float(w.sum()), stream, protocol)  # 1 nat per target
    text_bytes = count_bytes(data.load_text("bbc_news", "validation"))
    assert result["tokens_scored"] == len(stream.tokens) - 1
    assert result["bytes_scored"] == text_bytes - stream.token_bytes[stream.tokens[0]]
    assert result["loss"] == 1.0
