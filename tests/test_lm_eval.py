"""The lm-eval backend on a tiny GPT-2-BPE checkpoint: per-example parity with lm-eval's own HF backend on the
model's HF export (the BBC topic task), rolling log-likelihood against our evaluation loop, generation stopped
at ``until``, batching that changes no number, the task's data, and one-line errors before any model loads."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from helpers import TINY_YAML  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from chimera_jax.cli.lm_eval import main  # noqa: E402
from chimera_jax.config import ConfigError, load_config, resolve_config  # noqa: E402
from chimera_jax.data.stream import TokenStream  # noqa: E402
from chimera_jax.eval.perplexity import evaluate_model  # noqa: E402
from chimera_jax.eval.protocol import EvalProtocol  # noqa: E402
from chimera_jax.harness.model import TASKS_DIR, ChimeraLM  # noqa: E402
from chimera_jax.train.checkpoint import load_model  # noqa: E402

pytestmark = pytest.mark.slow  # lm-eval: a trained run through the harness and transformers

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 32  # the model's length: every BBC prompt is longer, so both backends truncate it from the left
TOL = 1e-4


def saved_run(folder: Path, tokenizer: str) -> str:
    """A random tiny model (sinusoidal positions: it exports as GPT-2) saved as a run's checkpoint, every
    parameter perturbed so that biases and norm scales are not their initial 0 and 1; untied embeddings, so
    that greedy text does not just repeat the last token."""
    from chimera_jax.tokenizer import VOCAB_SIZES
    from chimera_jax.train.checkpoint import Checkpointer
    from chimera_jax.train.optimizer import make_optimizer
    from chimera_jax.train.state import init_state

    (folder / "tiny.yaml").write_text(TINY_YAML)
    cfg = load_config(folder / "tiny.yaml", ["--data.tokenizer", tokenizer, "--data.seq_len", str(SEQ_LEN),
                                             "--model.tie_embeddings", "false",
                                             "--train.run_dir", str(folder / "run")])
    cfg = resolve_config(cfg, VOCAB_SIZES[tokenizer])
    state = init_state(cfg, make_optimizer(cfg.optim, cfg.train.steps))
    leaves, treedef = jax.tree_util.tree_flatten(state.model)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    checkpointer = Checkpointer(cfg.run_dir)
    checkpointer.save(state.__class__(jax.tree_util.tree_unflatten(treedef, noisy), state.opt_state, state.step,
                                      state.key), cfg)
    checkpointer.close()
    return str(cfg.run_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return saved_run(tmp_path_factory.mktemp("lm_eval"), "gpt2")


@pytest.fixture(scope="module")
def both(run, tmp_path_factory) -> tuple[dict, dict, Path]:
    """One command scoring the checkpoint (our backend) and its HF export (lm-eval's hf backend)."""
    from chimera_jax.bridge.convert import export_run

    folder = tmp_path_factory.mktemp("hf")
    export_run(run, folder / "model")
    out = folder / "results"
    runs = main(["--checkpoint", run, "--hf", str(folder / "model"), "--tasks", "bbc_topic", "--limit", "10",
                 "--num-fewshot", "1", "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    ours, theirs = runs.values()
    return ours, theirs, out


def loglikelihoods(results: dict) -> dict[int, tuple[list, np.ndarray]]:
    """``{doc_id: (the requests' arguments, their log-likelihoods)}`` from lm-eval's logged samples."""
    return {s["doc_id"]: ([(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()],
                          np.array([float(r[0][0]) for r in s["resps"]])) for s in results["samples"]["bbc_topic"]}


def test_our_backend_and_lm_evals_hf_backend_agree_per_example(both):
    ours, theirs, _ = both
    a, b = loglikelihoods(ours), loglikelihoods(theirs)
    assert sorted(a) == sorted(b) == list(range(10))
    for doc in a:
        assert a[doc][0] == b[doc][0]  # the same 5 (prompt, choice) requests, few-shot example included
        assert len(a[doc][1]) == 5
        np.testing.assert_allclose(a[doc][1], b[doc][1], rtol=0, atol=TOL)
    spread = np.concatenate([v for _, v in a.values()])
    assert spread.max() - spread.min() > 0.1  # the numbers compared differ between choices and articles
    assert ours["results"]["bbc_topic"]["acc,none"] == theirs["results"]["bbc_topic"]["acc,none"]


def test_results_are_saved_as_lm_eval_saves_them(both):
    _, _, out = both
    for folder in ("chimera", "hf"):
        saved = [p.name for p in next(out.glob(f"{folder}__*")).iterdir()]
        assert any(n.startswith("results_") and n.endswith(".json") for n in saved), saved
        assert any(n.startswith("samples_bbc_topic_") and n.endswith(".jsonl") for n in saved), saved


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def lm(run) -> ChimeraLM:
    return ChimeraLM(checkpoint=run, batch_size=4)


def text_of_tokens(lm: ChimeraLM, n: int) -> str:
    """A BBC-like text that encodes to exactly ``n`` tokens."""
    tok = lm.chimera_tokenizer
    ids = tok.encode("The government said on Monday that the economy grew faster than expected in the third "
                     "quarter, as shoppers spent more and firms hired staff. " * 4)
    return next(t for t in (tok.decode(ids[:k]) for k in range(n, n + 8)) if len(tok.encode(t)) == n)


@pytest.mark.parametrize("n_tokens", [SEQ_LEN - 7, 2 * SEQ_LEN], ids=["one window", "two windows"])
def test_rolling_loglikelihood_is_our_evaluation_loops_nll(lm, run, n_tokens):
    """A text scored from the end-of-text id in windows of the model's length is the evaluation loop's total
    nats over the same tokens (non-overlapping windows: what lm-eval's disjoint windows are at this length)."""
    text = text_of_tokens(lm, n_tokens)
    (rolling,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    tok = lm.chimera_tokenizer
    stream = TokenStream("text", np.array([tok.eos_id, *tok.encode(text)]), tok.id_byte_lengths())
    protocol = EvalProtocol(corpus="text", tokenizer="gpt2", seq_len=SEQ_LEN, stride=SEQ_LEN, batch_size=2)
    model, _ = load_model(run)
    result = evaluate_model(model, stream, protocol)
    assert result["tokens_scored"] == n_tokens
    assert rolling == pytest.approx(-result["loss"] * n_tokens, abs=TOL * n_tokens)


CONTEXTS = ["The minister said", "Shares in the firm rose sharply after the", "A", "Film critics praised the new"]
CONTINUATIONS = [" today", " results were announced on Friday", " B", " release of the year by far"]


def test_bucketed_batches_give_the_numbers_of_one_request_at_a_time(lm, run):
    requests = instances("loglikelihood", list(zip(CONTEXTS * 2, CONTINUATIONS + CONTINUATIONS[::-1],
                                                   strict=True)))
    batched = lm.loglikelihood(requests, disable_tqdm=True)
    alone = ChimeraLM(checkpoint=run, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    np.testing.assert_allclose([x for x, _ in batched], [x for x, _ in alone], rtol=0, atol=1e-5)
    assert [g for _, g in batched] == [g for _, g in alone]
    widths = {inputs.shape for _, inputs, _ in lm._batches([([1] * n, [1] * n) for n in (3, 9, 17, 25, 32)])}
    assert widths == {(4, 32), (4, 16)}  # rows of 17..32 inputs share one width, 3 gets the smallest


def test_generate_until_cuts_at_the_first_stop_text(lm):
    settings = {"until": [], "max_gen_toks": 12, "do_sample": False}
    free = lm.generate_until(instances("generate_until", [(c, settings) for c in CONTEXTS]), disable_tqdm=True)
    assert all(free) and len(set(free)) == len(CONTEXTS)
    # a stop text first found in the second half of some continuation
    k, stop = next((k, t[i:i + 3]) for k, t in enumerate(free) for i in range(len(t) // 2, len(t) - 3)
                   if t.find(t[i:i + 3]) == i)
    requests = [(CONTEXTS[k], {**settings, "until": [stop]}), (CONTEXTS[k - 1], settings)]
    stopped = lm.generate_until(instances("generate_until", requests), disable_tqdm=True)
    assert stopped == [free[k][:free[k].find(stop)], free[k - 1]]  # each with its own settings, in the order given
    assert 0 < len(stopped[0]) < len(free[k])


def test_the_task_holds_out_the_test_articles():
    sys.path.insert(0, str(TASKS_DIR / "bbc_topic"))
    try:
        from utils import TOPICS, article_records
    finally:
        sys.path.pop(0)
    train, test = article_records("train", 40), article_records("test", 40)
    assert not {r["file"] for r in train} & {r["file"] for r in test}
    assert {r["topic"] for r in test} == set(TOPICS.values())
    # a fixed shuffle, not the corpus's topic folders one after another: --limit 10 scores every topic
    assert {r["topic"] for r in test[:10]} == set(TOPICS.values())
    assert [r["file"] for r in article_records("test", 5)] == [r["file"] for r in test]
    for r in test:
        assert TOPICS[r["file"].split("/")[0]] == r["topic"] == list(TOPICS.values())[r["label"]]
        assert len(r["text"].split()) == 40 and "\n" not in r["text"]


def test_bad_input_is_one_line_before_any_model_loads(run, tmp_path, monkeypatch):
    import lm_eval.tasks

    def refuse(*_, **__):
        raise AssertionError("a model loaded before the input was checked")

    monkeypatch.setattr(ChimeraLM, "__init__", refuse)
    # an unknown name sends the command to lm-eval's whole catalogue, slow to index: here only our tasks
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                        include_defaults=False))
    cases = [(["--checkpoint", str(tmp_path / "none"), "--tasks", "bbc_topic"], "is not a run directory"),
             (["--checkpoint", run, "--tasks", "bbc_topik"], "unknown task(s) bbc_topik"),
             (["--checkpoint", run], "name at least one task"),
             (["--hf", str(tmp_path / "none"), "--tasks", "bbc_topic"], "is not a local HF folder"),
             (["--checkpoint", run, "--tasks", "bbc_topic", "--limit", "0"], "limit must be positive")]
    for args, message in cases:
        with pytest.raises(ConfigError) as err:
            main(args)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_the_script_imports_the_harness_not_itself(tmp_path):
    """scripts/lm_eval.py shares the harness's module name; its error comes after lm-eval's modules are imported."""
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "lm_eval.py"), "--hf", str(tmp_path / "none"),
                          "--tasks", "bbc_topic"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: hf: {tmp_path / 'none'} is not a local HF folder, a .gguf " \
                                                  "file, or one of smollm2", bad.stderr
    code = "import chimera_jax.harness.model as b, lm_eval.api.registry as r; print(r.get_model('chimera') " \
           "is b.ChimeraLM)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"


@pytest.fixture(scope="module")
def byte_export(tmp_path_factory) -> tuple[str, Path]:
    """A byte-level run (no EOS id: documents are joined by two newlines) and its HF export."""
    from chimera_jax.bridge.convert import export_run

    folder = tmp_path_factory.mktemp("lm_eval_byte")
    byte_run = saved_run(folder, "byte")
    return byte_run, export_run(byte_run, folder / "model")


def test_a_byte_level_export_gets_our_end_of_text_in_lm_eval_only(byte_export):
    import transformers

    from chimera_jax.harness.model import hf_tokenizer_for_lm_eval

    _, folder = byte_export
    saved, for_lm_eval = transformers.AutoTokenizer.from_pretrained(folder), hf_tokenizer_for_lm_eval(str(folder))
    assert saved.eos_token_id is None  # the export is the byte tokenizer: a newline is text, counted as 1 byte
    assert for_lm_eval.eos_token_id == ord("\n") == ChimeraLM(checkpoint=byte_export[0]).eot_token_id
    text = "a\nb \u010a caf\u00e9"  # U+010A spells the newline byte in the byte-level alphabet: still text here
    assert for_lm_eval.encode(text) == list(text.encode("utf-8"))
    assert for_lm_eval.decode(for_lm_eval.encode(text), skip_special_tokens=True) == text


def test_a_byte_level_export_scores_in_lm_evals_hf_backend_as_in_ours(byte_export, tmp_path):
    byte_run, folder = byte_export
    ours, theirs = main(["--checkpoint", byte_run, "--hf", str(folder), "--tasks", "bbc_topic", "--limit", "2",
                         "--num-fewshot", "0", "--batch-size", "2", "--device", "cpu",
                         "--out", str(tmp_path)]).values()
    a, b = loglikelihoods(ours), loglikelihoods(theirs)
    assert sorted(a) == sorted(b) == [0, 1]
    for doc in a:
        assert a[doc][0] == b[doc][0]
        np.testing.assert_allclose(a[doc][1], b[doc][1], rtol=0, atol=TOL)


def test_byte_level_generation_stops_at_the_end_of_text_in_both_backends(byte_export):
    """lm-eval's HF backend adds the EOS text (here a newline) to every request's stop texts; ours does too."""
    from lm_eval.models.huggingface import HFLM

    from chimera_jax.harness.model import hf_tokenizer_for_lm_eval

    byte_run, folder = byte_export
    hf = HFLM(pretrained=str(folder), tokenizer=hf_tokenizer_for_lm_eval(str(folder)), device="cpu",
              dtype="float32", batch_size=2)
    requests = instances("generate_until", [(c, {"until": [], "max_gen_toks": 24, "do_sample": False})
                                            for c in ["Shares in the firm rose", "Film critics praised"]])
    ours = ChimeraLM(checkpoint=byte_run, batch_size=2).generate_until(requests, disable_tqdm=True)
    assert ours == hf.generate_until(requests, disable_tqdm=True)
    assert all("\n" not in text for text in ours) and any(ours)


def test_when_the_hf_model_fails_the_scored_table_is_printed_then_one_line(byte_export, monkeypatch, capsys):
    import chimera_jax.harness.run as harness_run

    def hf_fails(label, model, *args, **kwargs):
        if model == "hf":
            raise RuntimeError("tokenizer exploded\nsecond line")
        return real(label, model, *args, **kwargs)

    byte_run, folder = byte_export
    real = harness_run.evaluate
    monkeypatch.setattr(harness_run, "evaluate", hf_fails)
    with pytest.raises(ConfigError, match=f"hf:{folder}: lm-eval's hf backend failed \\(RuntimeError: tokenizer"):
        main(["--checkpoint", byte_run, "--hf", str(folder), "--tasks", "bbc_topic", "--limit", "2",
              "--batch-size", "2", "--device", "cpu"])
    table = capsys.readouterr().out.split("| model | task |")[-1]
    assert f"| chimera:{byte_run} | bbc_topic |" in table and "| hf:" not in table
