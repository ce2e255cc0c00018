"""One evaluation path: a trained checkpoint scores the same in JAX, through its HF export in torch, and in the
training loop's validation (same stream, same windows, same tokens and bytes; figures within float error).

bbc_news has many documents, so the gpt2 stream holds end-of-text separators between them: the case where
the JAX and HF paths used to count different bytes and score different streams.
"""

from __future__ import annotations

import numpy as np
import pytest

from chimera_jax.config import CONFIG_DIR, load_config
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.runs.evaluate import evaluate_checkpoint, load_run
from chimera_jax.train.checkpoint import load_run_config
from chimera_jax.train.loop import train, validation_protocol
from chimera_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # torch parity: trained runs scored in JAX and in transformers

TOL = 1e-4
LLAMA = ("--model.positions", "rope", "--model.norm", "rmsnorm", "--model.ffn", "swiglu", "--model.bias", "false")
RUNS = {"gpt2": ("--data.tokenizer", "gpt2"), "byte": ("--data.tokenizer", "byte", *LLAMA)}  # GPT-2 / Llama exports


@pytest.fixture(scope="module", params=list(RUNS))
def run_dir(request, tmp_path_factory, token_cache) -> str:
    """A tiny model trained a few steps on bbc_news with the gpt2 or the byte tokenizer (one run per module)."""
    run_dir = tmp_path_factory.mktemp(f"run_{request.param}")
    cfg = load_config(CONFIG_DIR / "nano_gpt2.yaml", [
        "--model.d_model", "32", "--model.n_layers", "2", "--model.n_heads", "2", "--model.dropout", "0.0",
        "--data.seq_len", "32", "--train.steps", "4", "--train.batch_size", "4", "--train.eval_every", "4",
        "--train.eval_batches", "3", "--train.checkpoint_every", "4", "--train.progress", "false",
        "--data.cache_dir", str(token_cache), "--train.run_dir", str(run_dir), *RUNS[request.param]])
    train(cfg)
    return str(run_dir)


def test_jax_and_its_hf_export_score_the_same_stream_alike(run_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from chimera_jax.bridge.hf_eval import evaluate_hf

    protocol = EvalProtocol(max_windows=20, batch_size=4, stride=24)  # the run's corpus, tokenizer and seq_len
    ours = evaluate_checkpoint(run_dir, protocol)
    theirs = evaluate_hf(run_dir, protocol, repeats=0)
    assert ours["tokens_scored"] == theirs["tokens_scored"] == 32 + 19 * 24
    assert ours["bytes_scored"] == theirs["bytes_scored"]
    assert abs(ours["loss"] - theirs["loss"]) < TOL
    assert abs(ours["bits_per_byte"] - theirs["bits_per_byte"]) < TOL
    assert ours["protocol"] == theirs["protocol"]
    assert theirs["byte_check"] == 1.0  # the stream's bytes are exactly the split's text
    run = load_run(run_dir, protocol)
    scored = np.asarray(run.stream.tokens[1:ours["tokens_scored"] + 1])
    assert ours["bytes_scored"] == run.stream.token_bytes[scored].sum()
    if run.protocol.tokenizer == "gpt2":  # separators were scored, as the 2 bytes of text they replace
        assert (scored == 50256).any() and run.stream.token_bytes[50256] == 2


def test_the_loops_validation_is_evaluate_checkpoint_on_its_protocol(run_dir):
    cfg = load_run_config(run_dir)
    last = read_metrics(run_dir, "validation")[-1]
    result = evaluate_checkpoint(run_dir, validation_protocol(cfg))
    assert result["tokens_scored"] == 3 * 4 * 32
    assert result["loss"] == pytest.approx(last["loss"], rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(last["bits_per_byte"], rel=1e-6)
