"""The bridge's torch-free parts: torch stays optional, export compatibility, strict weight filling, the table."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from chimera_jax.bridge.compare import markdown_table, rank, report, trained_on
from chimera_jax.bridge.convert import export_architecture, fill_model, model_arrays, skeleton_shapes
from chimera_jax.bridge.measure import tokens_per_second
from chimera_jax.config import CONFIG_DIR, ConfigError, ModelConfig, load_config
from chimera_jax.errors import UserError
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.hf.spec import pretrained_args
from chimera_jax.models.builder import build_model
from chimera_jax.optional import INSTALL_HINT, require


def test_core_package_works_without_torch():
    """With torch and transformers unimportable, the core package and the bridge's own modules still import.

    (tensorboardX, which the training metrics use, imports torch by itself when it is installed: so we
    block the import rather than look at ``sys.modules``.)
    """
    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None\n"
            "import chimera_jax, chimera_jax.data, chimera_jax.models.builder, chimera_jax.eval.perplexity\n"
            "import chimera_jax.train.loop, chimera_jax.train.checkpoint\n"
            "import chimera_jax.bridge.convert, chimera_jax.bridge.compare, chimera_jax.bridge.hf_eval\n"
            "import chimera_jax.bridge.hf_tokenizer, chimera_jax.runs.evaluate\n"
            "from chimera_jax.bridge.hf_load import load_hf\n"
            "try:\n    load_hf('gpt2')\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "the PyTorch bridge needs 'torch'" in out and "pip install -e '.[torch]'" in out


def test_missing_torch_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
        require("torch")
    assert "torch==2.13.0" in INSTALL_HINT


@pytest.mark.parametrize("preset, arch", [("dense", "gpt2"), ("nano_gpt2", "gpt2"), ("modern", "llama")])
def test_every_dense_preset_has_an_hf_equivalent(preset, arch):
    assert export_architecture(load_config(CONFIG_DIR / f"{preset}.yaml").model) == arch


def test_models_without_an_hf_equivalent_are_refused_with_reasons():
    cfg = ModelConfig(positions="rope", norm="layernorm", ffn="gelu")
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, enabled=True))
    with pytest.raises(ConfigError, match=r"as gpt2: positions='rope'.*moe is enabled.*as llama: norm='layernorm'"):
        export_architecture(cfg)  # a ConfigError: the commands print it as one line


def test_fill_model_round_trips_and_is_strict():
    cfg = ModelConfig(vocab_size=11, max_seq_len=8, d_model=8, n_layers=2, n_heads=2)
    model = build_model(cfg, jax.random.PRNGKey(0))
    skeleton = jax.eval_shape(lambda: model)
    arrays = model_arrays(model)
    assert set(arrays) == set(skeleton_shapes(skeleton))
    assert arrays["stack.groups[0].mixer.w_q.weight"].shape == (2, 8, 8)  # the stacked layer axis
    refilled = model_arrays(fill_model(skeleton, arrays))
    assert all(np.array_equal(refilled[k], arrays[k]) for k in arrays)
    with pytest.raises(KeyError, match="no weights for embed.weight"):
        fill_model(skeleton, {k: v for k, v in arrays.items() if k != "embed.weight"})
    with pytest.raises(KeyError, match="no place for"):
        fill_model(skeleton, {**arrays, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        fill_model(skeleton, {**arrays, "embed.weight": np.zeros((3, 8))})


def test_model_specs_resolve_to_pretrained_arguments(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert pretrained_args(str(gguf)) == (str(tmp_path), {"gguf_file": "m.gguf"})
    assert pretrained_args("EleutherAI/pythia-70m") == ("EleutherAI/pythia-70m", {})
    assert pretrained_args(str(tmp_path)) == (str(tmp_path), {})
    for missing, message in [(tmp_path / "none", "no such HF model folder"), (tmp_path / "x.gguf", "no such GGUF")]:
        with pytest.raises(UserError, match=message):  # one line from eval_hf / lm_eval, not a traceback
            pretrained_args(str(missing))


def test_tokens_per_second_warms_up_once_then_times_the_repeats():
    calls = []
    tps = tokens_per_second(lambda: calls.append(1), n_tokens=100, repeats=3)
    assert len(calls) == 4 and tps > 0


def test_wikitext_sizes_count_as_in_domain_for_each_other():
    assert trained_on("wikitext-103", "wikitext-2") == "in-domain (wikitext-103)"
    assert trained_on("bbc_news", "wikitext-2") == "zero-shot (bbc_news)"


def _result(model: str, ppl: float, bpb: float) -> dict:
    return {"model": model, "framework": "jax", "device": "cpu", "protocol": {"tokenizer": "byte", "seq_len": 512},
            "perplexity": ppl, "bits_per_byte": bpb, "tokens_scored": 10, "bytes_scored": 10, "params_total": 2_000_000,
            "params_active": 1_000_000, "tokens_per_s": 5.0, "memory_mb": 1.0, "memory_kind": "peak process RSS",
            "byte_check": 1.0, "trained_on": "zero-shot (x)"}


def test_table_ranks_by_bits_per_byte_not_perplexity():
    results = [_result("low-ppl", 3.0, 1.5), _result("low-bpb", 30.0, 1.0), {"model": "offline", "error": "boom"}]
    assert [r["model"] for r in rank(results)] == ["low-bpb", "low-ppl"]
    table = markdown_table(results).splitlines()
    assert table[0].startswith("| Rank | Model | Total params | Active params | PPL | Bits/byte | Tok/s | Memory MiB")
    assert table[2].startswith("| 1 | low-bpb | 2.0M | 1.0M | 30.00 | 1.0000 |")
    text = report(results, EvalProtocol(corpus="wikitext-103", split="validation", seq_len=512))
    assert "ranked by bits per byte" in text and "seq-len 512, non-overlapping" in text
    assert "low-bpb: jax on cpu, tokenizer byte, seq-len 512, 10 tokens / 10 bytes scored" in text
    assert "Not evaluated:\n  offline: boom" in text
