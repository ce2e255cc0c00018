"""The generate command on a tiny trained run: greedy and seeded text, batches, stop texts, JSON, streaming,
and bad input stopped with one line before anything compiles."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from helpers import TINY_YAML

from chimera_jax.cli.generate import GenerateArgs, main
from chimera_jax.config import ConfigError, load_config
from chimera_jax.generate.engine import DECODE_CHUNK, Generator

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "scripts" / "generate.py")
SHORT, LONG = "The ", "A longer prompt"
NEW = 12


class Pieces(io.StringIO):
    """stdout that remembers each write, to see text arrive piece by piece."""

    def __init__(self):
        super().__init__()
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.pieces.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def run(tmp_path_factory, token_cache) -> str:
    """Two steps of a byte-level model with untied embeddings and 32 learned positions: near its random
    initialisation, so every context has its own greedy continuation (a tied one repeats its last byte)."""
    from chimera_jax.train.loop import train

    folder = tmp_path_factory.mktemp("generate")
    (folder / "tiny.yaml").write_text(TINY_YAML)
    cfg = load_config(folder / "tiny.yaml", [
        "--data.cache_dir", str(token_cache), "--train.run_dir", str(folder / "run"), "--train.steps", "2",
        "--train.eval_every", "2", "--train.checkpoint_every", "2", "--model.positions", "learned",
        "--model.max_seq_len", "32", "--model.tie_embeddings", "false"])
    train(cfg)
    return str(cfg.run_dir)


@pytest.fixture(scope="module")
def greedy(run, tmp_path_factory):
    """One greedy call of a single prompt: the Generation, what reached stdout piece by piece, the JSON."""
    path = tmp_path_factory.mktemp("json") / "out.json"
    out = Pieces()
    with redirect_stdout(out):
        generation = main(["--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW), "--json", str(path)])
    return generation, out.pieces, json.loads(path.read_text())


@pytest.mark.slow
def test_greedy_streams_and_is_the_same_again_in_other_chunks_and_without_cache(run, greedy):
    generation, pieces, _ = greedy
    text = generation.texts[0]
    assert generation.new_tokens == [NEW] and len(text) > 0
    assert "".join(pieces) == text + "\n" and len(pieces) > 2  # streamed as produced, then a newline
    out = Pieces()
    with redirect_stdout(out):  # 11 steps in calls of 5, the last running 4 past the end
        chunked = main(["--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW), "--decode-chunk", "5"])
    recomputed = main(["--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW), "--no-cache"])
    assert chunked.tokens == recomputed.tokens == generation.tokens and "".join(out.pieces) == text + "\n"
    assert GenerateArgs(checkpoint=run).decode_chunk == DECODE_CHUNK


def test_json_has_the_results_and_the_settings(greedy, run):
    generation, _, record = greedy
    assert record["text"] == generation.texts[0] and record["prompt"] == SHORT
    assert (record["prompt_tokens"], record["new_tokens"]) == ([len(SHORT)], [NEW])
    assert {"prefill_ms", "first_token_ms", "decode_tokens_per_s", "compile_s"} <= record.keys()
    settings = record["settings"]
    assert (settings["checkpoint"], settings["max_new_tokens"], settings["temperature"], settings["no_cache"]) == (
        run, NEW, 0.0, False)


@pytest.mark.slow
def test_a_batch_of_mixed_lengths_gives_each_prompt_its_text_alone(run, greedy, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{SHORT}\n\n{LONG}\n")  # the blank line is skipped
    batch = main(["--checkpoint", run, "--prompts", str(prompts), "--max-new-tokens", str(NEW)])
    alone = main(["--checkpoint", run, "--prompt", LONG, "--max-new-tokens", str(NEW)])
    assert batch.prompt_tokens == [len(SHORT), len(LONG)]
    assert batch.texts == [greedy[0].texts[0], alone.texts[0]] and batch.texts[0] != batch.texts[1]
    out = capsys.readouterr().out
    assert f"--- 1: {SHORT!r}\n{batch.texts[0]}\n--- 2: {LONG!r}\n{batch.texts[1]}\n" in out


@pytest.mark.slow
def test_a_seed_reproduces_sampled_text_and_another_seed_differs(run):
    def sample(seed: int) -> str:
        return main(["--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW), "--temperature", "1.5",
                     "--top-k", "100", "--top-p", "0.95", "--seed", str(seed)]).texts[0]

    first = sample(1)
    assert sample(1) == first and sample(2) != first


def test_stop_cuts_the_text_before_the_first_stop_text(run, greedy):
    text = greedy[0].texts[0]
    start = next(i for i in range(2, len(text) - 1) if text[i : i + 2].isascii())  # a stop inside the text
    stop = text[start : start + 2]
    cut = main(["--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW), "--stop", "never", stop])
    assert cut.texts[0] == text[: text.find(stop)]
    assert cut.new_tokens[0] < NEW


BEFORE_LOADING = [  # (arguments after --checkpoint RUN, a part of the one-line message)
    (["--prompt", ""], "prompt 1 is empty"),
    (["--prompt", "a", ""], "prompt 2 is empty"),
    ([], "no prompt given"),
    (["--prompt", "a", "--prompts", "p.txt"], "not both"),
    (["--prompts", "no/such/prompts.txt"], "prompts: no such file"),
    (["--prompt", "a", "--top-p", "0"], r"top_p=0.0 must lie in (0, 1]"),
    (["--prompt", "a", "--top-p", "1.5"], r"top_p=1.5 must lie in (0, 1]"),
    (["--prompt", "a", "--temperature", "-1"], "temperature=-1.0 must be >= 0"),
    (["--prompt", "a", "--top-k", "0"], "top_k=0 must be >= 1"),
    (["--prompt", "a", "--no-cache", "--window", "8"], "window: --no-cache keeps no cache"),
    (["--prompt", "a", "--sink-tokens", "4"], "sink_tokens: --sink-tokens needs --window"),
    (["--prompt", "a", "--window", "0"], "window >= 1"),
    (["--prompt", "a", "--decode-chunk", "0"], "decode_chunk: --decode-chunk 0 must be >= 1"),
]
BEFORE_COMPILING = [
    (["--prompt", "x" * 30, "--max-new-tokens", "3"], "a prompt of 30 tokens plus max_new_tokens=3 passes the "
                                                      "model's 32 learned positions"),
    (["--prompt", "a", "--max-new-tokens", "0"], "max_new_tokens=0 must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BEFORE_LOADING + BEFORE_COMPILING,
                         ids=[m.split(":")[0][:30] for _, m in BEFORE_LOADING + BEFORE_COMPILING])
def test_bad_input_is_one_line_before_anything_compiles(run, args, message, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("compiled or loaded before the input was checked")

    monkeypatch.setattr(Generator, "_compile", refuse)
    if (args, message) in BEFORE_LOADING:
        monkeypatch.setattr(Generator, "from_run", refuse)
    with pytest.raises(ConfigError) as err:
        main(["--checkpoint", run, *args])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_run_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint: .* is not a run directory"):
        main(["--checkpoint", str(tmp_path / "nothing"), "--prompt", "a"])


def test_a_run_s_generator_knows_its_training_context(run):
    """What a generation past it without a rolling cache warns about (tests/test_decode.py)."""
    assert Generator.from_run(run).context == 32


@pytest.mark.slow
def test_the_script_streams_to_stdout_and_fails_with_one_line(run, greedy):
    ok = subprocess.run([sys.executable, SCRIPT, "--checkpoint", run, "--prompt", SHORT, "--max-new-tokens", str(NEW)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == greedy[0].texts[0] + "\n"
    assert ok.stderr.strip().splitlines()[-1].startswith(f"prompt tokens {len(SHORT)}  new tokens {NEW}  prefill ")
    bad = subprocess.run([sys.executable, SCRIPT, "--checkpoint", run, "--prompt", "x" * 30, "--max-new-tokens", "3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("error: a prompt of 30 tokens plus max_new_tokens=3 passes the model's 32 learned "
                                  "positions")


def test_the_command_checks_its_arguments_before_jax_is_imported():
    code = "import sys, chimera_jax.cli.generate\nprint('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
