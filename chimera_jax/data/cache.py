"""The token cache: a split's tokens as a raw little-endian file plus a JSON sidecar, keyed on the identity of
the split's source (never its text), so a hit reads no raw text and a changed source misses.

Files: ``<root>/<corpus>/<split>.<tokenizer>.<key16>.u16`` (``.u32`` for vocabularies above 65,536 ids) and
``.json``, where ``<corpus>`` is ``text_<file or folder name>`` for ``text:<path>`` and ``<key16>`` tells
same-named corpora and tokenizers apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from chimera_jax.config import DataConfig
from chimera_jax.data.splits import SPLIT_RULE_VERSION

DEFAULT_CACHE_DIR = Path("~/.cache/chimera_jax/tokens")


def cache_root(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$CHIMERA_CACHE``, else ``~/.cache/chimera_jax/tokens``."""
    return Path(cfg.cache_dir or os.environ.get("CHIMERA_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype that holds every id."""
    return np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


def _file_name(name: str) -> str:
    """``name`` as one path component (tokenizer names such as ``org/model`` hold slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]


def cache_key(corpus: str, split: str, tokenizer: str, identity: dict) -> str:
    """sha256 of everything the tokens are a function of: split rules, corpus, split, tokenizer, source."""
    key = {"split_rule": SPLIT_RULE_VERSION, "corpus": corpus, "split": split, "tokenizer": tokenizer,
           "source": identity}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_paths(cfg: DataConfig, split: str, tokenizer: str, key: str, dtype: np.dtype) -> tuple[Path, Path]:
    """The token file and its ``.json`` sidecar (see the module docstring)."""
    corpus = f"text_{Path(cfg.corpus[5:]).name}" if cfg.corpus.startswith("text:") else cfg.corpus
    stem = f"{split}.{_file_name(tokenizer)}.{key[:16]}"
    folder = cache_root(cfg) / _file_name(corpus)
    return folder / f"{stem}.u{dtype.itemsize * 8}", folder / f"{stem}.json"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tokens(tokens_path: Path, meta_path: Path, dtype: np.dtype) -> tuple[np.ndarray, dict] | None:
    """``(tokens, sidecar)``, the tokens memory-mapped, if the sidecar and a token file of the size it records
    both exist."""
    try:
        meta = json.loads(meta_path.read_text())
        num_tokens, _ = meta["num_tokens"], meta["text_bytes"]  # an entry without either is rebuilt
        if tokens_path.stat().st_size != dtype.itemsize * num_tokens:
            return None
    except (OSError, ValueError, KeyError):
        return None
    if num_tokens == 0:
        return np.zeros(0, dtype), meta  # np.memmap cannot map an empty file
    return np.memmap(tokens_path, dtype=dtype, mode="r", shape=(num_tokens,)), meta


def write_tokens(tokens_path: Path, meta_path: Path, tokens: np.ndarray, meta: dict) -> None:
    """Tokens first, then the sidecar: a sidecar marks a complete entry."""
    _atomic_write(tokens_path, tokens.tobytes())
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
