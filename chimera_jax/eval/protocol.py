"""The evaluation protocol: which text, which tokenizer and which windows a figure was measured on.

Every evaluation in the project (``chimera-eval``, ``chimera-compare``, ``chimera-eval-hf``, the training
loop's validation) takes one of these, so a perplexity or bits/byte never travels without the settings
that make it meaningful. ``None`` fields mean "the model's own"; ``resolved`` fills them for one model
and checks the result, so a bad setting fails before any data is read, with a one-line ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from chimera_jax.config import ConfigError, DataConfig, RunConfig, check_rolling_cache
from chimera_jax.tokenizer import TOKENIZERS

NORMALISATION = ("perplexity = exp(mean nats per scored target token); bits/byte = total nats / ln 2 / UTF-8 bytes "
                 "of the text the scored targets stand for (a document separator token: the separator it replaces)")


@dataclass
class EvalProtocol:
    corpus: str | None = None  # None: the corpus the run trained on
    split: str = "validation"
    tokenizer: str | None = None  # None: the model's own (a chimera run's data.tokenizer, an HF model's)
    seq_len: int | None = None  # window length; None: the run's data.seq_len
    stride: int | None = None  # None: seq_len (non-overlapping windows); smaller: sliding windows
    max_windows: int | None = None  # score only the first N windows
    batch_size: int = 8  # windows per forward pass
    data_dir: str | None = None  # local copy of a hub corpus
    window: int | None = None  # None: full attention over each window; W: a rolling KV cache of the last W tokens
    sink_tokens: int = 0  # with window: also keep the first S tokens in the cache (StreamingLLM's attention sinks)

    def resolved(self, *, corpus: str | None, tokenizer: str, seq_len: int | None,
                 data_dir: str | None = None) -> EvalProtocol:
        """Every field set, for a model whose own corpus, tokenizer and window length are these, and checked.

        A model reads only its own tokenizer's ids, so a ``tokenizer`` that names another is an error.
        """
        from chimera_jax.data import canonical_split, check_corpus

        if self.tokenizer not in (None, tokenizer):
            raise ConfigError(f"tokenizer: the model reads {tokenizer!r} ids, not {self.tokenizer!r}")
        out = dataclasses.replace(self, corpus=self.corpus or corpus, tokenizer=tokenizer,
                                  seq_len=seq_len if self.seq_len is None else self.seq_len,
                                  data_dir=self.data_dir or data_dir)
        if out.corpus is None:
            raise ConfigError("corpus: this model has no training corpus to default to; name one")
        try:
            check_corpus(out.corpus)
            out = dataclasses.replace(out, split=canonical_split(out.split))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if out.seq_len is None:
            raise ConfigError("seq_len: this model has no training window length to default to; set one")
        if out.seq_len < 1:
            raise ConfigError(f"seq_len must be a positive window length, got {out.seq_len}")
        out = dataclasses.replace(out, stride=out.seq_len if out.stride is None else out.stride)
        if not 1 <= out.stride <= out.seq_len:
            raise ConfigError(f"stride must be in 1..seq_len ({out.seq_len}), got {out.stride}")
        if out.max_windows is not None and out.max_windows < 1:
            raise ConfigError(f"max_windows must be at least 1 (or unset for every window), got {out.max_windows}")
        if out.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {out.batch_size}")
        if out.window is not None and out.window < 1:
            raise ConfigError(f"window must be at least 1 token (or unset for full attention), got {out.window}")
        if out.sink_tokens < 0:
            raise ConfigError(f"sink_tokens must be >= 0, got {out.sink_tokens}")
        if out.sink_tokens and out.window is None:
            raise ConfigError("sink_tokens needs window: sink tokens are kept in a rolling KV cache of that window")
        return out

    def resolved_for(self, cfg: RunConfig) -> EvalProtocol:
        """``resolved`` for a chimera run: its corpus, tokenizer and seq_len. A seq_len past the training length
        is the run's to extrapolate to (rope, sinusoidal, none), except learned positions: their table bounds it,
        with a rolling cache too, since a token's position is its place in the text."""
        out = self.resolved(corpus=cfg.data.corpus, tokenizer=cfg.data.tokenizer, seq_len=cfg.data.seq_len,
                            data_dir=cfg.data.data_dir)
        max_len = cfg.model.max_seq_len or cfg.data.seq_len
        if cfg.model.positions == "learned" and out.seq_len > max_len:
            raise ConfigError(f"seq_len {out.seq_len} exceeds the model's {max_len} learned positions")
        if out.window is not None:
            check_rolling_cache(cfg.model)
        return out

    @property
    def is_resolved(self) -> bool:
        return None not in (self.corpus, self.tokenizer, self.seq_len, self.stride)

    def data_config(self, base: DataConfig | None = None) -> DataConfig:
        """The data settings that load this protocol's token stream (``base`` keeps e.g. its cache folder).

        A ``DataConfig`` names only our tokenizers: an HF model's tokenizer is handed to ``load_stream`` as an
        object (bridge/hf_eval.py), and the config keeps ``base``'s, which that stream does not use.
        """
        if not self.is_resolved:
            raise ValueError("resolve the protocol for a model first (EvalProtocol.resolved_for)")
        base = base or DataConfig()
        tokenizer = self.tokenizer if self.tokenizer in TOKENIZERS else base.tokenizer
        return dataclasses.replace(base, corpus=self.corpus, fallback=None, tokenizer=tokenizer,
                                   seq_len=self.seq_len, data_dir=self.data_dir)

    def as_dict(self) -> dict:
        """What every result records: the settings that make its figures meaningful."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "data_dir"},
                "normalisation": NORMALISATION}

    def describe(self) -> str:
        """The protocol in words, printed above every table; unset fields read as each model's own."""
        own = "each model's own"
        corpus, tokenizer, seq_len = self.corpus or f"{own} training corpus", self.tokenizer or own, self.seq_len or own
        if self.stride in (None, self.seq_len):
            windows = "non-overlapping windows"
        else:
            windows = f"sliding windows, stride {self.stride} (each target scored once, with the most context)"
        limit = f"the first {self.max_windows} windows only" if self.max_windows else "every window"
        if self.max_windows and self.tokenizer is None:
            limit += " (models with different tokenizers score different prefixes of the text)"
        if self.window is None:
            attention = "full attention over each window"
        else:
            sinks = f"the first {self.sink_tokens} tokens (attention sinks) and " if self.sink_tokens else ""
            attention = f"a rolling KV cache that keeps {sinks}the last {self.window} tokens (chunked decoding)"
        return "\n".join([
            f"text: {corpus}, {self.split} split, documents joined by each "
            f"tokenizer's end-of-text id (or its encoding of the separator text when it has none)",
            f"tokenizer: {tokenizer}",
            f"windows: seq-len {seq_len}, {windows}, {limit}; batch {self.batch_size}",
            f"attention: {attention}",
            f"normalisation: {NORMALISATION}",
        ])
