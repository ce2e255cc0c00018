"""Scoring through the rolling KV cache (eval/streaming.py): a cache that keeps everything is plain
evaluation, chunks equal one token at a time, the StreamingLLM layout equals its attention mask written out,
sink logits at -inf are no sinks, the state does not grow with the text, and impossible settings fail early."""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decode import perturbed

from chimera_jax import data
from chimera_jax.config import ConfigError, DataConfig, ModelConfig, RunConfig, TimeConfig
from chimera_jax.eval.perplexity import evaluate_model
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.eval.streaming import stream
from chimera_jax.models.builder import build_model
from chimera_jax.models.kv_cache import CacheLayout
from chimera_jax.models.layers import sinusoidal_positions

BASE = ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
ROPE = dataclasses.replace(BASE, positions="rope", n_kv_heads=2, norm="rmsnorm", ffn="swiglu", bias=False)
CONFIGS = {
    "sinusoidal": BASE,
    "rope": ROPE,
    "rope_sinks": dataclasses.replace(ROPE, attention_sinks=True),
    "ti_ssm": dataclasses.replace(BASE, mixer="ssm", positions="none", time=TimeConfig(enabled=True)),
}
ROLLING = CacheLayout(window=8, sinks=2)
TOL = dict(atol=1e-5, rtol=1e-5)


@functools.cache  # built once per session: building and perturbing dominate these tests' time
def model_of(name: str) -> eqx.Module:
    return perturbed(build_model(CONFIGS[name], jax.random.PRNGKey(0)))


def random_tokens(shape: tuple[int, ...], seed: int = 2) -> np.ndarray:
    return np.asarray(jax.random.randint(jax.random.PRNGKey(seed), shape, 0, 64), np.int32)


@pytest.mark.parametrize("name", ["rope", "ti_ssm"])
@pytest.mark.slow
def test_a_window_covering_the_sequence_is_plain_evaluation(name):
    model = model_of(name)
    tokens_stream = data.TokenStream("random", random_tokens((24 * 3 + 1,)), np.full(64, 1, np.int64))
    plain = EvalProtocol(corpus="bbc_news", tokenizer="t", seq_len=24, batch_size=2)
    results = [evaluate_model(model, tokens_stream, p.resolved(corpus=None, tokenizer="t", seq_len=None))
               for p in (plain, dataclasses.replace(plain, window=24))]
    assert results[0]["tokens_scored"] == results[1]["tokens_scored"] == 72
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], abs=1e-5)
    # several chunks, the last one padded: still the whole-sequence forward pass
    tokens = random_tokens((2, 24))
    chunked, _ = stream(model, tokens, CacheLayout(window=24), 5)
    np.testing.assert_allclose(chunked, model(jnp.asarray(tokens), inference=True)[0], **TOL)


@pytest.mark.parametrize("chunk", [8, 6])
def test_chunks_through_the_rolling_cache_equal_one_token_at_a_time(chunk):
    """N = 40 is five windows of 8 past the sinks: the ring buffer wraps, and a chunk of 6 (not dividing 40)
    ends on padding."""
    model = model_of("rope_sinks")
    tokens = random_tokens((2, 40))
    chunked, _ = stream(model, tokens, ROLLING, chunk)
    step = eqx.filter_jit(lambda m, t, s, p: m.extend(t, s, p))
    state, single = model.init_state(2, ROLLING), []
    for i in range(40):
        logits, state = step(model, tokens[:, i:i + 1], state, jnp.full((2, 1), i))
        single.append(logits[:, 0])
    np.testing.assert_allclose(chunked, jnp.stack(single, axis=1), **TOL)


def streaming_llm_oracle(model: eqx.Module, tokens: np.ndarray, layout: CacheLayout) -> jax.Array:
    """The decoder written out with plain jnp over the whole sequence, query q seeing key p iff
    p < sinks or q - window < p <= q (sinusoidal positions: no re-positioning of sink keys)."""
    B, T = tokens.shape
    q, p = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = (p <= q) & ((p < layout.sinks) | (p > q - layout.window))
    x = model.embed(jnp.asarray(tokens))
    x = x + sinusoidal_positions(jnp.arange(T), x.shape[-1])
    params, static = eqx.partition(model.stack.groups[0], eqx.is_array)
    for layer in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
        block = eqx.combine(jax.tree_util.tree_map(lambda a: a[layer], params), static)  # noqa: B023
        attn, h = block.mixer, block.norm_mixer(x)
        heads = [f(h).reshape(B, T, attn.n_heads, -1) for f in (attn.w_q, attn.w_k, attn.w_v)]
        scores = jnp.einsum("bqhd,bkhd->bhqk", heads[0], heads[1]) / math.sqrt(heads[0].shape[-1])
        probs = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
        x = x + attn.w_o(jnp.einsum("bhqk,bkhd->bqhd", probs, heads[2]).reshape(B, T, -1))
        x = x + block.ffn(block.norm_ffn(x), inference=True)[0]
    x = model.final_norm(x)
    return model.embed.attend(x) if model.head is None else model.head(x)


def test_the_rolling_cache_is_the_streaming_llm_mask():
    model = model_of("sinusoidal")  # multi-head, positions added to the embeddings
    tokens = random_tokens((2, 40))
    chunked, _ = stream(model, tokens, ROLLING, 8)
    np.testing.assert_allclose(chunked, streaming_llm_oracle(model, tokens, ROLLING), **TOL)
    far = np.abs(np.asarray(chunked) - np.asarray(model(jnp.asarray(tokens), inference=True)[0]))
    assert far[:, 10:].max() > 1e-2  # past sinks + window the cache forgets: full attention differs


def test_sink_logits_at_minus_infinity_are_no_sinks():
    with_sinks = model_of("rope_sinks")
    where = lambda m: m.stack.groups[0].mixer.sink_logits  # noqa: E731
    logits = where(with_sinks)
    without = eqx.tree_at(where, with_sinks, None)
    tokens = random_tokens((2, 40))
    reference, _ = stream(without, tokens, ROLLING, 8)
    off, _ = stream(eqx.tree_at(where, with_sinks, jnp.full_like(logits, -1e4)), tokens, ROLLING, 8)
    on, _ = stream(eqx.tree_at(where, with_sinks, jnp.zeros_like(logits)), tokens, ROLLING, 8)
    np.testing.assert_allclose(off, reference, **TOL)
    assert float(jnp.abs(on - reference).max()) > 1e-2


@pytest.mark.parametrize("name", ["rope", "ti_ssm"])
@pytest.mark.slow
def test_the_state_does_not_grow_with_the_text(name):
    model = model_of(name)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)  # noqa: E731
    empty = shapes(model.init_state(1, ROLLING))
    for n in (16, 64):
        _, state = stream(model, random_tokens((1, n)), ROLLING, 8)
        assert shapes(state) == empty


def run_config(**model) -> RunConfig:
    return RunConfig(model=ModelConfig(max_seq_len=32, **model), data=DataConfig(tokenizer="byte", seq_len=32))


@pytest.mark.parametrize("positions, fields, message", [
    ("learned", dict(seq_len=64, window=16), "seq_len 64 exceeds the model's 32 learned positions"),
    ("rope", dict(sink_tokens=4), "sink_tokens needs window"),
    ("rope", dict(window=0), "window must be at least 1"),
    ("rope", dict(window=16, sink_tokens=-1), "sink_tokens must be >= 0"),
])
def test_impossible_long_context_settings_fail_with_one_line(positions, fields, message):
    with pytest.raises(ConfigError, match=message) as err:
        EvalProtocol(**fields).resolved_for(run_config(positions=positions))
    assert "\n" not in str(err.value)


def test_rope_goes_past_the_training_length():
    p = EvalProtocol(seq_len=512, window=124, sink_tokens=4).resolved_for(run_config(positions="rope"))
    assert (p.seq_len, p.window, p.sink_tokens) == (512, 124, 4)
    assert "keeps the first 4 tokens (attention sinks) and the last 124 tokens" in p.describe()
