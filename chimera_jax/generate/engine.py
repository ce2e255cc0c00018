"""Autoregressive generation from any model family.

With a cache (the default), the prompts are prefilled once and each new token is one step over the
decoding state (``Decoder.extend``: a KV cache per attention layer, convolution and scan states per SSM
layer, one state per depth of a time-indexed stack). One host call runs ``decode_chunk`` steps in a
``lax.scan``, since at small batches the host's dispatch of a call costs a good part of a step; the host
then sees the tokens (EOS, stop texts, the stream) a chunk at a time and drops those past a row's end.
Without a cache, every token re-runs the whole sequence through ``Decoder.__call__``, one call per token:
the reference the cache is tested against and the baseline benchmarks divide by.

Shapes are fixed per generation: prompts are right-padded to a bucket (a power of two, at least
``MIN_BUCKET``) and the cache is sized for the bucket plus ``max_new_tokens``, so a generation compiles
its functions once and another prompt length in the same bucket compiles nothing. The last chunk may run
past ``max_new_tokens`` (a generation shorter than a chunk runs just its steps): those steps feed their
token as padding (position -1), which writes no cache slot and leaves SSM states as they were, so they need
no room and no learned position. Token ``i`` of a generation is drawn with ``fold_in(PRNGKey(seed), i)`` in
every mode and chunk size: the same seed gives the same text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from chimera_jax.config import check_rolling_cache
from chimera_jax.generate.loading import decoding_layout, load_for_decoding
from chimera_jax.generate.sampling import Sampling, next_tokens
from chimera_jax.models.kv_cache import CacheLayout
from chimera_jax.models.transformer import Decoder
from chimera_jax.tokenizer import Tokenizer, get_tokenizer

log = logging.getLogger(__name__)

GREEDY = Sampling()
DECODE_CHUNK = 16  # cached decoding steps per host call
MIN_BUCKET = 16
CACHE_ROUND = 64  # full caches are sized in multiples of this, so nearby lengths share a compile
# Per backend. On CPU, XLA's default live-range analysis copies a donated KV cache (twice) before a step writes
# the new token into it, because the attention read it first; the region-based analysis sees that the read
# comes before the write, and the cache is updated in place.
COMPILER_OPTIONS = {"cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}}
# Added for the decoding steps, whose matmuls have as many rows as the batch: at a few rows XLA:CPU's Eigen
# kernels beat the YNNPACK ones it picks by default, where a prefill's many rows run faster on YNNPACK.
DECODE_OPTIONS = {"cpu": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def bucket(n: int) -> int:
    """The padded prompt length for a longest prompt of ``n`` tokens."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


@dataclass
class Generation:
    """What one ``generate`` call produced, and how fast (compile time excluded from the rates)."""

    texts: list[str]
    tokens: list[list[int]]  # the new tokens of each prompt, up to (not including) EOS or a stop text
    prompt_tokens: list[int]
    compile_s: float
    prefill_ms: float  # the prompts' forward pass, state included
    first_token_ms: float  # request to first new tokens on the host: prefill, sampling, transfer
    # after the first token, tokens of the whole batch per second, counting each row's steps up to max_new_tokens
    # (a last chunk's steps past it are timed but not counted); None: no step
    decode_tokens_per_s: float | None

    @property
    def new_tokens(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def as_json(self) -> dict:
        """The ``--json`` record: ``text`` is a string for one prompt, a list for several."""
        record = asdict(self)
        texts = record.pop("texts")
        record.pop("tokens")
        return {"text": texts[0] if len(texts) == 1 else texts, "new_tokens": self.new_tokens, **record}


class Generator:
    """A model ready to decode. Compiled functions are kept per shape, so a notebook or a benchmark that
    calls ``generate`` again with the same shapes compiles nothing.

    ``layout``: the attention layers' KV cache; None sizes a full cache per generation, a
    ``CacheLayout(window, sinks)`` keeps the first ``sinks`` and the last ``window`` tokens (generation past
    the training context with constant memory). ``context``: the length the model was trained on, if known; the
    first generation to run past it without a rolling cache logs a warning.
    """

    def __init__(self, model: Decoder, tokenizer: Tokenizer, *, layout: CacheLayout | None = None,
                 context: int | None = None):
        # Each layer, and each MoE expert, with arrays of its own (loading.py): a step reads weights in place.
        self.model, self.tokenizer, self.layout, self.context = model, tokenizer, layout, context
        self.warned_past_context = False
        params, self.static = eqx.partition(decoding_layout(model), eqx.is_array)
        # Compiled steps take flat lists of arrays: flattening the modules on every call costs more, at
        # this size, than the step itself.
        self.params, self.param_def = jax.tree_util.tree_flatten(params)
        self.max_positions = model.pos_embed.shape[0] if model.positions == "learned" else None
        self._compiled: dict[tuple, Callable] = {}
        self.compile_s = 0.0

    @classmethod
    def from_run(cls, run_dir: str | Path, *, step: int | None = None, depth: int | None = None,
                 layout: CacheLayout | None = None) -> Generator:
        """Load a run's model for decoding (MoE layers dispatch dropless: nothing dropped at any batch)."""
        model, cfg = load_for_decoding(run_dir, step=step, depth=depth)
        if layout is not None:
            check_rolling_cache(cfg.model)
        return cls(model, get_tokenizer(cfg.data.tokenizer), layout=layout,
                   context=cfg.model.max_seq_len or cfg.data.seq_len)

    # ---- input checks: each a one-line error, raised before anything compiles ----
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        if not prompts:
            raise ValueError("no prompt given")
        ids = self.tokenizer.encode_batch(list(prompts))
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"prompt {i + 1} is empty: generation needs at least one token to continue")
        return ids

    def check_lengths(self, lengths: Sequence[int], max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        longest = max(lengths)
        if self.max_positions is not None and longest + max_new_tokens > self.max_positions:
            raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} passes the "
                             f"model's {self.max_positions} learned positions")

    def warn_past_context(self, longest: int, max_new_tokens: int, rolling: bool) -> None:
        """A warning, the first time only, when a generation runs past the length the model was trained on without
        a rolling cache to keep attention within it (the text may degrade there)."""
        if rolling or self.context is None or longest + max_new_tokens <= self.context or self.warned_past_context:
            return
        self.warned_past_context = True
        log.warning("a prompt of %d tokens plus max_new_tokens=%d runs past the %d tokens this model was trained on "
                    "(model.max_seq_len): the text may degrade past there; a rolling KV cache (--window W, "
                    "Generator(layout=CacheLayout(W))) keeps attention within it", longest, max_new_tokens,
                    self.context)

    # ---- compiled pieces: lowered from shapes, so nothing runs (or is timed) while compiling ----
    def _compile(self, name: tuple, fn: Callable, *args, donate: tuple[int, ...] = (),
                 options: dict[str, dict] | None = None) -> Callable:
        if name not in self._compiled:
            start = time.perf_counter()
            lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
            backend = jax.default_backend()
            self._compiled[name] = lowered.compile({**COMPILER_OPTIONS.get(backend, {}),
                                                    **(options or {}).get(backend, {})})
            self.compile_s += time.perf_counter() - start
        return self._compiled[name]

    def _model(self, params: list) -> Decoder:
        return eqx.combine(jax.tree_util.tree_unflatten(self.param_def, params), self.static)

    def _cached_fns(self, batch: int, width: int, layout: CacheLayout, sampling: Sampling, chunk: int):
        """``(prefill, sample, decode)`` for ``batch`` prompts padded to ``width`` and a cache of ``layout``.

        ``decode(params, key, limit, carry) -> (tokens [chunk, batch], carry)`` runs ``chunk`` steps, with
        ``carry = (token, state leaves, position, index)`` all on the device, so a call sends nothing from the
        host but ``limit``: steps drawing token ``limit`` or later feed theirs as padding. The carry is
        donated, the tokens returned beside it are not, so the host may read them later.
        """
        def prefilled(params, tokens, positions):
            model = self._model(params)
            logits, state = model.extend(tokens, model.init_state(batch, layout), positions)
            last = jnp.maximum((positions >= 0).sum(axis=1) - 1, 0)
            return logits[jnp.arange(batch), last], state

        ints = jax.ShapeDtypeStruct((batch, width), jnp.int32)
        logits, state = jax.eval_shape(prefilled, self.params, ints, ints)
        state_def = jax.tree_util.tree_structure(state)

        def prefill(params, tokens, positions):
            last, state = prefilled(params, tokens, positions)
            return last, jax.tree_util.tree_leaves(state)

        def sample(logits, key, index):
            return next_tokens(logits, jax.random.fold_in(key, index), sampling)

        def decode(params, key, limit, carry):
            model = self._model(params)

            def step(carry, _):
                token, state, position, index = carry
                state = jax.tree_util.tree_unflatten(state_def, state)
                fed = jnp.where(index < limit, position, -1)  # past the last token kept: padding, a no-op
                logits, state = model.extend(token[:, None], state, fed[:, None])
                token = next_tokens(logits[:, 0], jax.random.fold_in(key, index), sampling)
                return (token, jax.tree_util.tree_leaves(state), position + 1, index + 1), token

            carry, tokens = jax.lax.scan(step, carry, length=chunk)
            return tokens, carry

        row, key, index = (jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.uint32),
                           jax.ShapeDtypeStruct((), jnp.int32))
        carry = (row, jax.tree_util.tree_leaves(state), row, index)
        return (self._compile(("prefill", batch, width, layout), prefill, self.params, ints, ints),
                self._compile(("sample", batch, sampling), sample, logits, key, index),
                # the carry is donated: the cache is updated in place, not copied every token
                self._compile(("decode", batch, layout, sampling, chunk), decode, self.params, key, index, carry,
                              donate=(3,), options=DECODE_OPTIONS))

    def _recompute_fn(self, batch: int, span: int, sampling: Sampling):
        """``(params, key, carry) -> (tokens [1, batch], carry)`` with ``carry = (token, buffer [batch, span],
        current, index)``: one token for every row by re-running the whole buffer."""
        def recompute(params, key, carry):
            _, buffer, current, index = carry
            logits, _ = self._model(params)(buffer, inference=True)
            rows = jnp.arange(batch)
            token = next_tokens(logits[rows, current - 1], jax.random.fold_in(key, index), sampling)
            return token[None], (token, buffer.at[rows, current].set(token, mode="drop"), current + 1, index + 1)

        row = jax.ShapeDtypeStruct((batch,), jnp.int32)
        carry = (row, jax.ShapeDtypeStruct((batch, span), jnp.int32), row, jax.ShapeDtypeStruct((), jnp.int32))
        return self._compile(("recompute", batch, span, sampling), recompute, self.params,
                             jax.ShapeDtypeStruct((2,), jnp.uint32), carry, donate=(2,))

    # ---- generation ----
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, sampling: Sampling = GREEDY, *,
                 seed: int = 0, stop: Sequence[str] = (), cache: bool = True, ignore_eos: bool = False,
                 decode_chunk: int = DECODE_CHUNK, on_text: Callable[[str], None] | None = None) -> Generation:
        """Continue each prompt by up to ``max_new_tokens`` tokens (fewer where EOS or a ``stop`` text comes
        first; the text is cut before it). ``decode_chunk``: cached steps per host call (the tokens are the
        same for any); ``on_text`` receives the text of a single prompt as it is made."""
        ids, lengths, tokens = self._prompt_batch(prompts, max_new_tokens, decode_chunk, on_text)
        self.warn_past_context(int(lengths.max()), max_new_tokens, rolling=cache and self.layout is not None)
        key = jax.random.PRNGKey(seed)
        rows = _Rows(self.tokenizer, ids, stop, None if ignore_eos else self.tokenizer.eos_id, on_text)
        compiled_before = self.compile_s
        run = (self._start_cached(tokens, lengths, key, max_new_tokens, sampling, decode_chunk) if cache
               else self._start_recompute(tokens, lengths, key, max_new_tokens, sampling))
        rows.add(np.asarray(run.first))
        first_token_s = run.elapsed()
        steps = _decode_rest(run, rows, max_new_tokens)
        decode_s = run.elapsed() - first_token_s
        rows.finish()
        return Generation(texts=rows.texts, tokens=rows.tokens, prompt_tokens=lengths.tolist(),
                          compile_s=round(self.compile_s - compiled_before, 3), prefill_ms=1000 * run.prefill_s,
                          first_token_ms=1000 * first_token_s,
                          decode_tokens_per_s=len(ids) * steps / decode_s if steps else None)

    def _prompt_batch(self, prompts: str | Sequence[str], max_new_tokens: int, decode_chunk: int,
                      on_text: Callable[[str], None] | None) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """``(ids, lengths, tokens)``: the prompts' ids, their lengths, and the batch right-padded to its bucket;
        a bad input is a one-line ValueError, raised before anything compiles."""
        ids = self.encode([prompts] if isinstance(prompts, str) else prompts)
        lengths = np.array([len(row) for row in ids])
        self.check_lengths(lengths.tolist(), max_new_tokens)
        if decode_chunk < 1:
            raise ValueError(f"decode_chunk={decode_chunk} must be >= 1")
        if on_text is not None and len(ids) > 1:
            raise ValueError("streaming (on_text) is for a single prompt")
        tokens = np.zeros((len(ids), bucket(int(lengths.max()))), np.int32)
        for row, prompt in zip(tokens, ids, strict=True):
            row[:len(prompt)] = prompt
        return ids, lengths, tokens

    def _start_cached(self, tokens: np.ndarray, lengths: np.ndarray, key: jax.Array, max_new_tokens: int,
                      sampling: Sampling, decode_chunk: int) -> _Started:
        """The prompts prefilled into a fresh decoding state and the first tokens drawn; each later call runs a
        chunk of steps over the state (``_cached_fns``)."""
        batch, width = tokens.shape
        layout = self.layout or CacheLayout(window=CACHE_ROUND * math.ceil((width + max_new_tokens) / CACHE_ROUND))
        # a generation shorter than a chunk runs its steps in one call of just that many
        chunk = max(1, min(decode_chunk, max_new_tokens - 1))
        prefill, sample, decode = self._cached_fns(batch, width, layout, sampling, chunk)
        positions = np.where(np.arange(width) < lengths[:, None], np.arange(width), -1).astype(np.int32)
        start = time.perf_counter()
        last, state = prefill(self.params, tokens, positions)
        jax.block_until_ready(state)
        prefill_s = time.perf_counter() - start
        token = sample(last, key, np.int32(0))
        carry = (token, state, jnp.asarray(lengths, jnp.int32), jnp.ones((), jnp.int32))
        return _Started(token, carry, partial(decode, self.params, key, np.int32(max_new_tokens)), chunk, start,
                        prefill_s)

    def _start_recompute(self, tokens: np.ndarray, lengths: np.ndarray, key: jax.Array, max_new_tokens: int,
                         sampling: Sampling) -> _Started:
        """The first tokens drawn by running the padded prompts through the whole model; so is each later one, a
        call each, over a buffer that holds the prompts and the tokens drawn so far (``_recompute_fn``)."""
        batch, width = tokens.shape
        span = width + max_new_tokens
        if self.max_positions is not None:
            span = min(span, self.max_positions)
        recompute = self._recompute_fn(batch, span, sampling)
        buffer = np.pad(tokens, ((0, 0), (0, span - width)))
        start = time.perf_counter()
        first, carry = recompute(self.params, key,
                                 (np.zeros(batch, np.int32), buffer, lengths.astype(np.int32), np.int32(0)))
        token = first[0]
        jax.block_until_ready(token)
        return _Started(token, carry, partial(recompute, self.params, key), 1, start, time.perf_counter() - start)


@dataclass
class _Started:
    """A generation whose first tokens are drawn: ``call(carry) -> (tokens [per_call, batch], carry)`` draws the
    next ``per_call`` tokens of every row on the device. Timed from ``start``, when the prefill began (compiling
    done)."""

    first: jax.Array  # [batch]: each row's first new token
    carry: tuple
    call: Callable
    per_call: int
    start: float
    prefill_s: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _decode_rest(run: _Started, rows: _Rows, max_new_tokens: int) -> int:
    """Draw each row's tokens after the first until every row is done or has ``max_new_tokens``, handing them to
    ``rows``; returns the steps counted per row (a last call's steps past ``max_new_tokens`` are dropped)."""
    steps, queued, carry = 0, [], run.carry
    while steps + 1 < max_new_tokens and not rows.all_done:
        new, carry = run.call(carry)
        kept = min(run.per_call, max_new_tokens - 1 - steps)
        steps += kept
        if rows.watching:  # EOS, a stop text or the stream needs the tokens on the host as they come
            for row_tokens in np.asarray(new)[:kept]:
                rows.add(row_tokens)
        else:  # else the calls run ahead of the host, which reads them all at the end
            queued.append((new, kept))
    for new, kept in jax.device_get(queued):
        for row_tokens in new[:kept]:
            rows.add(row_tokens)
    return steps


class _Rows:
    """Host-side bookkeeping of each row's new tokens: EOS, stop texts, and streaming a single row."""

    def __init__(self, tokenizer: Tokenizer, ids: list[list[int]], stop: Sequence[str], eos: int | None,
                 on_text: Callable[[str], None] | None):
        self.tokenizer, self.stop, self.eos, self.on_text = tokenizer, [s for s in stop if s], eos, on_text
        self.tokens: list[list[int]] = [[] for _ in ids]
        self.texts = ["" for _ in ids]
        self.done = [False for _ in ids]
        self.streamed = 0
        # text that could still turn out to start a stop text is held back from the stream
        self.hold = max((len(s) for s in self.stop), default=1) - 1

    @property
    def all_done(self) -> bool:
        return all(self.done)

    @property
    def watching(self) -> bool:
        """Whether a token can end a row or must be shown at once."""
        return self.eos is not None or bool(self.stop) or self.on_text is not None

    def add(self, new: np.ndarray) -> None:
        for b, token in enumerate(new.tolist()):
            if self.done[b]:
                continue
            if token == self.eos:
                self.done[b] = True
                continue
            self.tokens[b].append(token)
            if self.stop or (self.on_text is not None and b == 0):
                self._update_text(b)
        self._stream(final=False)

    def _update_text(self, b: int) -> None:
        text = self.tokenizer.decode(self.tokens[b])
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.done[b] = text[:cut], True
            self.tokens[b] = _tokens_within(self.tokenizer, self.tokens[b], cut)
        self.texts[b] = text

    def finish(self) -> None:
        if not self.stop:  # with stop texts every row's text is already current (and maybe cut)
            self.texts = [self.tokenizer.decode(tokens) for tokens in self.tokens]
        self._stream(final=True)

    def _stream(self, final: bool) -> None:
        if self.on_text is None:
            return
        text = self.texts[0]
        end = len(text) if final or self.done[0] else len(text) - self.hold
        if not final and text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            end = min(end, len(text) - 1)
        if end > self.streamed:
            self.on_text(text[self.streamed:end])
            self.streamed = end


def _tokens_within(tokenizer: Tokenizer, tokens: list[int], chars: int) -> list[int]:
    """The longest prefix of ``tokens`` whose text fits in the first ``chars`` characters."""
    while tokens and len(tokenizer.decode(tokens)) > chars:
        tokens = tokens[:-1]
    return tokens
