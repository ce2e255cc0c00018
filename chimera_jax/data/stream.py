"""A split as a token stream: cached tokens plus what each token stands for in the original text."""

from __future__ import annotations

import dataclasses

import numpy as np

from chimera_jax.config import DataConfig
from chimera_jax.data.cache import cache_key, cache_paths, read_tokens, token_dtype, write_tokens
from chimera_jax.data.sources import source
from chimera_jax.data.splits import DOC_SEPARATOR, SPLIT_RULE_VERSION, canonical_split
from chimera_jax.data.tokenize import token_byte_table, tokenize_documents
from chimera_jax.tokenizer import Tokenizer, count_bytes, get_tokenizer

PROGRESS_MIN_CHARS = 20_000_000  # progress=None shows a bar only for splits larger than this
_BYTES_CHUNK = 1 << 22  # num_bytes sums in pieces: a whole-stream gather of int64 would be 8 bytes a token


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """A split's tokens and the bytes of original text each id stands for.

    The bytes scored for a set of target positions are ``token_bytes[targets]`` summed: the one byte count
    (bits/byte's denominator) every evaluation uses.
    """

    name: str  # "bbc_news/validation (gpt2)", for messages
    tokens: np.ndarray  # 1-D, uint16 (uint32 when the vocabulary exceeds 65,536), memory-mapped
    token_bytes: np.ndarray  # int64 [vocab]: see token_byte_table
    text_bytes: int | None = None  # UTF-8 length of the split's text, recorded when it was tokenized

    @property
    def byte_check(self) -> float:
        """``num_bytes / text_bytes``: 1.0 when bits/byte's denominator counts exactly the text, as it must;
        a tokenizer whose token strings do not spell its bytes (see ``HFTokenizer.id_byte_lengths``) shows here."""
        return self.num_bytes / self.text_bytes

    @property
    def num_bytes(self) -> int:
        """Bytes of the whole stream: the UTF-8 length of ``load_text(corpus, split)``."""
        return sum(int(self.token_bytes[self.tokens[i : i + _BYTES_CHUNK]].sum())
                   for i in range(0, len(self.tokens), _BYTES_CHUNK))


def load_stream(cfg: DataConfig, split: str, tokenizer: Tokenizer | None = None,
                progress: bool | None = None) -> TokenStream:
    """``cfg.corpus``/``split`` tokenized by ``tokenizer`` (default: ``cfg.tokenizer``'s), from the cache or
    tokenized once and cached. A hit reads no raw text. ``progress``: None shows a bar only for large splits.
    """
    split = canonical_split(split)
    src = source(cfg.corpus, split, cfg)
    tok = tokenizer if tokenizer is not None else get_tokenizer(cfg.tokenizer)
    dtype = token_dtype(tok.vocab_size)
    paths = cache_paths(cfg, split, tok.name, cache_key(cfg.corpus, split, tok.name, src.identity), dtype)
    name, token_bytes = f"{cfg.corpus}/{split} ({tok.name})", token_byte_table(tok)
    cached = read_tokens(*paths, dtype)
    if cached is None:
        docs = src.read()
        if progress is None:
            progress = sum(len(d) for d in docs) > PROGRESS_MIN_CHARS
        fresh = TokenStream(name, tokenize_documents(docs, tok, dtype, progress=progress), token_bytes)
        meta = dict(corpus=cfg.corpus, split=split, tokenizer=tok.name, split_rule=SPLIT_RULE_VERSION,
                    source=src.identity, dtype=dtype.str, num_tokens=len(fresh.tokens), num_bytes=fresh.num_bytes,
                    text_bytes=count_bytes(DOC_SEPARATOR.join(docs)), num_documents=len(docs))
        write_tokens(*paths, fresh.tokens, meta)
        cached = read_tokens(*paths, dtype)
    tokens, meta = cached
    return TokenStream(name, tokens, token_bytes, meta["text_bytes"])
