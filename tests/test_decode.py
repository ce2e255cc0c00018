"""Incremental decoding: every family's cached state reproduces full recompute; the generation engine is
deterministic, reproducible from its seed, batch-independent and compiles once; sampling keeps exactly
the top-k / top-p tokens."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import ModelConfig, MoEConfig, RunConfig, SSMConfig, TimeConfig
from chimera_jax.generate.engine import DECODE_CHUNK, GREEDY, Generator
from chimera_jax.generate.loading import decoding_layout, dropless
from chimera_jax.generate.sampling import Sampling, next_tokens, restrict
from chimera_jax.models.builder import build_model
from chimera_jax.models.dispatch import dense_dispatch, dropless_dispatch
from chimera_jax.models.expert_list import ExpertList
from chimera_jax.models.kv_cache import CacheLayout
from chimera_jax.models.layers import MLP
from chimera_jax.models.routing import Routing
from chimera_jax.models.time_indexed import with_depth
from chimera_jax.tokenizer import get_tokenizer

BASE = ModelConfig(vocab_size=64, max_seq_len=48, d_model=32, n_layers=2, n_heads=4)
FAMILIES = {
    "learned": dataclasses.replace(BASE, positions="learned"),
    "sinusoidal": BASE,
    "rope_gqa": dataclasses.replace(BASE, positions="rope", n_kv_heads=2, norm="rmsnorm", ffn="swiglu", bias=False),
    "rope_sinks": dataclasses.replace(BASE, positions="rope", attention_sinks=True),
    "moe": dataclasses.replace(BASE, moe=MoEConfig(enabled=True, num_experts=4, top_k=2, dispatch="dropless")),
    "ti_mlp": dataclasses.replace(BASE, time=TimeConfig(enabled=True)),
    "ti_ssm": dataclasses.replace(BASE, mixer="ssm", positions="none", time=TimeConfig(enabled=True)),
    "ssm_sequential": dataclasses.replace(BASE, mixer="ssm", positions="none", ssm=SSMConfig(scan="sequential")),
    "ti_ssd": dataclasses.replace(BASE, mixer="ssm", positions="none", time=TimeConfig(enabled=True),
                                  ssm=SSMConfig(kind="ssd", head_dim=16, chunk=4)),
}
MOE_EVERY_2 = dataclasses.replace(BASE, n_layers=4, moe=MoEConfig(enabled=True, num_experts=4, every=2))


def perturbed(model, scale: float = 0.3, seed: int = 1):
    """Random init plus noise on every float array: the tiny init is near-uniform, and a decoding bug
    (a wrong position, a stale state) must move the logits far beyond the tolerance. The noise is drawn
    by numpy: drawn by JAX op by op, each array's shape would compile its own kernels."""
    rng = np.random.default_rng(seed)

    def noisy(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray((np.asarray(leaf) + scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype))
        return leaf

    return jax.tree_util.tree_map(noisy, model)


@functools.cache
def model_of(family: str, vocab_size: int = BASE.vocab_size, n_layers: int | None = None):
    """One model per family and size for the whole module (models are immutable): each costs seconds to build."""
    cfg = MOE_EVERY_2 if family == "moe_every_2" else FAMILIES[family]
    cfg = dataclasses.replace(cfg, vocab_size=vocab_size, n_layers=n_layers or cfg.n_layers)
    return perturbed(build_model(cfg, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("family", [*FAMILIES, "ti_ssm_at_depth_3"])
@pytest.mark.slow
def test_cached_decoding_gives_the_logits_of_full_recompute(family):
    """Prompts of lengths 5, 3 and 8 prefilled in one padded batch, then 6 tokens each one at a time: every
    step's logits equal ``Decoder.__call__`` over the whole sequence at that position."""
    if family == "ti_ssm_at_depth_3":  # trained at 2 layers, run at 3: one state per depth
        model = with_depth(model_of("ti_ssm"), 3)
    else:
        model = model_of(family)
    T, width, lengths = 16, 8, np.array([5, 3, 8])
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, T), 0, 64)
    positions = np.where(np.arange(width) < lengths[:, None], np.arange(width), -1)
    current = lengths + np.arange(6)[:, None]  # [step, row]: the position each step adds

    @eqx.filter_jit
    def run(m, tokens, positions, current):
        """The full pass, the prompts' logits and every step's, in one compile."""
        prefilled, state = m.extend(tokens[:, :width], m.init_state(3, CacheLayout(window=32)), positions)

        def step(state, at):
            logits, state = m.extend(tokens[jnp.arange(3), at][:, None], state, at[:, None])
            return state, logits[:, 0]

        return m(tokens, inference=True)[0], prefilled, jax.lax.scan(step, state, current)[1]

    full, prefilled, stepped = map(np.asarray, run(model, tokens, jnp.asarray(positions), jnp.asarray(current)))
    rows = np.arange(3)
    np.testing.assert_allclose(prefilled[rows, lengths - 1], full[rows, lengths - 1], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(stepped, full[rows, current], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sinusoidal", "moe_every_2", "ti_ssm"])
@pytest.mark.slow
def test_the_decoding_layout_computes_what_the_trained_model_does(family):
    """Generation unrolls the stack into one block per layer (each time-indexed depth gated once) and splits
    each MoE layer's experts into modules of their own: the trained model's logits, full pass and decoding (a
    prompt, then steps of one token per row), with the layers in order (MoE every 2nd layer of 4)."""
    model = model_of(family)
    listed = decoding_layout(model)
    assert family != "moe_every_2" or isinstance(listed.stack.blocks[1].ffn.experts, ExpertList)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 12), 0, 64)
    expected = eqx.filter_jit(lambda m, t: m(t, inference=True)[0])(model, tokens)

    @eqx.filter_jit
    def full_and_decoded(m, t):
        state = m.init_state(2, CacheLayout(window=16))
        logits, state = m.extend(t[:, :10], state, jnp.broadcast_to(jnp.arange(10), (2, 10)))
        steps = [logits]
        for i in range(10, 12):
            logits, state = m.extend(t[:, i:i + 1], state, jnp.full((2, 1), i))
            steps.append(logits)
        return m(t, inference=True)[0], jnp.concatenate(steps, axis=1)

    for logits in full_and_decoded(listed, tokens):
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("choices", [
    [[2, 0]],  # 2 assignments < 5 experts: one switch per assignment
    [[1, 3], [0, 4], [0, 3]],  # expert by expert, each within the fair share (2 rows), expert 2 unused
    [[3, 1], [3, 0], [3, 4], [3, 1], [3, 2], [1, 3], [3, 0]],  # expert 3 on every token: past the share, to N
], ids=["by_assignment", "by_expert", "overflow"])
@pytest.mark.slow
def test_expert_list_dispatch_equals_the_dense_oracle(choices):
    """The decoding layout's dropless dispatch gives every token its experts' gated sum, whichever static row
    count its experts' rows are padded to; an expert no token chose contributes nothing."""
    num_experts, d = 5, 8
    experts = perturbed(eqx.filter_vmap(lambda k: MLP(d, 12, key=k, activation="swiglu"))(
        jax.random.split(jax.random.PRNGKey(0), num_experts)))
    idx = jnp.asarray(choices, jnp.int32)
    logits = jax.random.normal(jax.random.PRNGKey(7), (idx.shape[0], num_experts))
    probs = jax.nn.softmax(logits)
    routing = Routing(logits, probs, idx, jnp.take_along_axis(probs, idx, axis=-1))
    x = jax.random.normal(jax.random.PRNGKey(1), (idx.shape[0], d))
    expected, _ = eqx.filter_jit(dense_dispatch)(experts, x, routing)
    got, kept = jax.jit(dropless_dispatch)(ExpertList.split(experts), x, routing)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert bool(kept.all())


@pytest.mark.slow
def test_a_stale_state_would_be_caught():
    """The tolerance above means something: decoding token 1 from an empty state is far off."""
    model = model_of("ti_ssm")
    tokens = jnp.asarray([[3, 7]])
    full = eqx.filter_jit(lambda m, t: m(t, inference=True)[0])(model, tokens)
    wrong, _ = eqx.filter_jit(lambda m, *args: m.extend(*args))(model, tokens[:, 1:],
                                                                model.init_state(1, CacheLayout(window=8)),
                                                                jnp.asarray([[1]]))
    assert float(jnp.abs(wrong[0, 0] - full[0, 1]).max()) > 1e-2


def byte_generator(family: str = "rope_gqa", **kwargs) -> Generator:
    """One layer: the engine's tests are about the loop around the model, and a layer less compiles faster."""
    return Generator(model_of(family, 256, 1), get_tokenizer("byte"), **kwargs)


@pytest.fixture(scope="module")
def generator() -> Generator:
    return byte_generator()


PROMPTS = ["The cat sat", "A", "Once upon a time there"]
SAMPLED = Sampling(temperature=1.0, top_k=40, top_p=0.95)


@pytest.mark.slow
def test_greedy_is_deterministic_and_the_cache_changes_nothing(generator):
    cached = generator.generate(PROMPTS, max_new_tokens=12, ignore_eos=True)
    assert cached.tokens == generator.generate(PROMPTS, max_new_tokens=12, ignore_eos=True).tokens
    assert cached.tokens == generator.generate(PROMPTS, max_new_tokens=12, ignore_eos=True, cache=False).tokens
    assert cached.new_tokens == [12, 12, 12] and cached.prompt_tokens == [11, 1, 22]
    assert len({tuple(t) for t in cached.tokens}) == 3 and all(len(set(t)) > 1 for t in cached.tokens)


@pytest.mark.slow
def test_each_prompt_decodes_as_it_would_alone(generator):
    together = generator.generate(PROMPTS, max_new_tokens=10, ignore_eos=True)
    for prompt, tokens in zip(PROMPTS, together.tokens, strict=True):
        assert generator.generate(prompt, max_new_tokens=10, ignore_eos=True).tokens[0] == tokens


@pytest.mark.slow
def test_sampling_reproduces_from_its_seed_in_both_modes(generator):
    sampling = SAMPLED
    first = generator.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=7, ignore_eos=True)
    assert first.tokens == generator.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=7,
                                              ignore_eos=True).tokens
    assert first.tokens == generator.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=7, cache=False,
                                              ignore_eos=True).tokens
    assert first.tokens != generator.generate(PROMPTS, max_new_tokens=12, sampling=sampling, seed=8,
                                              ignore_eos=True).tokens


@pytest.fixture(scope="module", params=["dense", "moe", "ti_ssm"])
def any_state(request, generator) -> Generator:
    """A generator for each kind of decoding state: KV caches, KV caches with routed experts, SSM states."""
    return generator if request.param == "dense" else byte_generator(request.param)


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.slow
def test_decoding_a_chunk_per_call_gives_the_tokens_of_one_step_per_call(any_state, sampling):
    """20 new tokens: the first from the prefill, then 19 steps in two calls of 16 (the second running 13 steps
    past the end) or in 19 calls of one step. The same tokens, and a seed draws the same samples."""
    one = any_state.generate(PROMPTS, 20, sampling, seed=7, ignore_eos=True, decode_chunk=1)
    chunked = any_state.generate(PROMPTS, 20, sampling, seed=7, ignore_eos=True)
    assert DECODE_CHUNK == 16 and chunked.new_tokens == [20, 20, 20]
    assert chunked.tokens == one.tokens and len({tuple(t) for t in one.tokens}) == 3


def test_eos_and_stop_texts_within_a_chunk_end_rows_as_one_step_per_call(any_state, monkeypatch):
    """A row's EOS, or a stop text, drawn in the middle of a chunk: the tokens after it are dropped exactly
    as when the host sees every token as it comes."""
    free = any_state.generate(PROMPTS, 20, ignore_eos=True, decode_chunk=1).tokens
    # a token first drawn after the first one and before the last: from a chunk's middle or its second step
    row, at = next((b, i) for b, tokens in enumerate(free) for i in range(2, 19) if tokens[i] not in tokens[:i])
    monkeypatch.setattr(any_state.tokenizer, "eos_id", free[row][at])
    ended = [any_state.generate(PROMPTS, 20, decode_chunk=chunk) for chunk in (1, DECODE_CHUNK)]
    assert ended[0].tokens == ended[1].tokens and ended[1].tokens[row] == free[row][:at]
    monkeypatch.undo()
    texts = [any_state.tokenizer.decode(tokens) for tokens in free]
    row, start = next((b, i) for b, text in enumerate(texts) for i in range(2, 15)  # a stop text's first place
                      if text[i] != "\ufffd" and text.find(text[i]) == i)
    cut = [any_state.generate(PROMPTS, 20, ignore_eos=True, stop=[texts[row][start]], decode_chunk=chunk)
           for chunk in (1, DECODE_CHUNK)]
    assert cut[0].tokens == cut[1].tokens and cut[0].texts == cut[1].texts
    assert cut[1].texts[row] == texts[row][:start] and cut[1].new_tokens[row] < 20


@contextlib.contextmanager
def count_compiles():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.slow
def test_one_compile_per_generation_and_none_within_a_bucket():
    """20 new tokens take two calls of the decoding chunk: one compile; 30 (same cache size) compile nothing."""
    generator = byte_generator("sinusoidal")
    with count_compiles() as compiles:
        generator.generate(["abc", "hello"], max_new_tokens=20, ignore_eos=True)
    assert len(generator._compiled) == 3  # prefill, first-token sampling, the decode chunk
    with count_compiles() as more:
        generator.generate(["a prompt of 14", "xy"], max_new_tokens=30, ignore_eos=True)  # same bucket (16)
    assert compiles and not more
    with count_compiles() as longer:
        generator.generate(["a prompt longer than sixteen bytes", "xy"], max_new_tokens=20, ignore_eos=True)
    assert longer  # a new bucket compiles its prefill


def test_stop_text_cuts_the_output(generator):
    full = generator.generate("The cat sat", max_new_tokens=16, ignore_eos=True).texts[0]
    stop = full[5:7]
    cut = generator.generate("The cat sat", max_new_tokens=16, ignore_eos=True, stop=[stop])
    assert cut.texts[0] == full[:full.index(stop)]
    assert get_tokenizer("byte").decode(cut.tokens[0]) == cut.texts[0]


def test_streamed_text_is_the_final_text(generator):
    pieces: list[str] = []
    result = generator.generate("Once", max_new_tokens=14, ignore_eos=True, on_text=pieces.append)
    assert "".join(pieces) == result.texts[0] and len(pieces) > 1


def test_past_the_training_context_a_full_cache_warns_once(generator, monkeypatch, caplog):
    monkeypatch.setattr(generator, "context", 27)  # as if trained on 27 tokens (from_run: the run's max_seq_len)
    monkeypatch.setattr(generator, "warned_past_context", False)
    with caplog.at_level("WARNING", logger="chimera_jax.generate"):
        generator.generate("The cat sat", max_new_tokens=16, ignore_eos=True)  # 11 + 16 tokens: within it
        assert not caplog.records
        for cache in (True, False):
            generator.generate(PROMPTS, max_new_tokens=12, ignore_eos=True, cache=cache)  # 22 + 12: past it
    [record] = caplog.records
    assert "a prompt of 22 tokens plus max_new_tokens=12 runs past the 27 tokens this model was trained on" in (
        record.getMessage())


@pytest.mark.slow
def test_rolling_cache_decodes_past_the_cache_size(caplog):
    generator = byte_generator("rope_sinks", layout=CacheLayout(window=8, sinks=2), context=16)
    with caplog.at_level("WARNING", logger="chimera_jax.generate"):
        result = generator.generate(PROMPTS, max_new_tokens=30, ignore_eos=True)  # far past 10 slots
    assert result.new_tokens == [30, 30, 30] and not caplog.records  # past the context, but rolling: no warning
    state = generator.model.init_state(3, CacheLayout(window=8, sinks=2))
    positions = [leaf for leaf in jax.tree_util.tree_leaves(state) if leaf.dtype == jnp.int32]
    assert positions and {p.shape[-2:] for p in positions} == {(3, 11)}  # 2 sinks + 8 window + the spare slot


def test_bad_input_fails_before_compiling():
    generator = byte_generator("learned")  # 48 learned positions
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        generator.generate(["ok", ""], max_new_tokens=4)
    with pytest.raises(ValueError, match="passes the model's 48 learned positions"):
        generator.generate("x" * 40, max_new_tokens=10)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generator.generate("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="decode_chunk=0"):
        generator.generate("x", max_new_tokens=4, decode_chunk=0)
    assert not generator._compiled
    for bad, message in [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                         ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k")]:
        with pytest.raises(ValueError, match=message):
            Sampling(**bad)


def test_restrict_keeps_exactly_the_top_k_and_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept = lambda out: set(np.flatnonzero(np.isfinite(np.asarray(out[0]))).tolist())  # noqa: E731
    assert kept(restrict(logits, top_k=2, top_p=1.0)) == {1, 3}
    assert kept(restrict(logits, top_k=None, top_p=0.7)) == {1, 3}  # 0.4 + 0.3 reaches 0.7
    assert kept(restrict(logits, top_k=None, top_p=0.71)) == {1, 3, 4}
    assert kept(restrict(logits, top_k=None, top_p=0.01)) == {1}  # the most likely token always stays
    assert kept(restrict(logits, top_k=3, top_p=0.99)) == {1, 3, 4}
    np.testing.assert_array_equal(restrict(logits, None, 1.0), logits)
    greedy = next_tokens(logits, jax.random.PRNGKey(0), Sampling())
    assert int(greedy[0]) == 1


def test_moe_decodes_dropless_with_the_trained_arrays():
    moe = MoEConfig(enabled=True, num_experts=4, top_k=2, dispatch="capacity", capacity_factor=0.5)
    cfg = dataclasses.replace(BASE, vocab_size=256, moe=moe)
    model = build_model(cfg, jax.random.PRNGKey(0))
    decoding, run = dropless(model, RunConfig(model=cfg))
    assert run.model.moe.dispatch == "dropless"
    moe = decoding.stack.groups[0].ffn
    assert moe.dispatch == "dropless"
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(decoding), strict=True):
        assert a is b
