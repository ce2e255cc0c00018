"""An HF tokenizer as ours (``HFTokenizer``): the ``chimera_jax.tokenizer.Tokenizer`` protocol, so an HF model's
text goes through ``chimera_jax.data.load_stream`` (documents, separators, bytes per token, the token cache)
exactly as a chimera run's does, and a run fine-tuned from an HF model keeps the model's own tokenizer (``save``:
a copy in the run, ``data.tokenizer: hf:$RUN/tokenizer``). Imports nothing of chimera_jax.tokenizer, which
loads ``hf:`` names through it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chimera_jax.hf.spec import load_hf_tokenizer
from chimera_jax.optional import require

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

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.hf.decode([int(i) for i in ids])

    def save(self, folder: Path) -> None:
        """Write the HF tokenizer's files (``save_pretrained``) to ``folder``, which then loads as ``hf:folder``
        with the same ids. Written whole or not at all: the processes of one run may race to save it, and a
        half-written folder would load as another tokenizer."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            self.hf.save_pretrained(staging)
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # else another process saved it first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

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


def imported_tokenizer(spec: str) -> HFTokenizer:
    """The tokenizer of the HF model ``spec`` (a hub name, folder, ``.gguf`` or packaged name) as ours."""
    return as_chimera(load_hf_tokenizer(spec), spec)
