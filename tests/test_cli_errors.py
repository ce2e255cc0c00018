"""Expected user errors end every command as one ``error: ...`` line and exit status 2 (3: a diverged training
run), through the one entry point (cli/entry.py ``launch``), whichever part of the code raised them: the config,
checkpoints, data or the training loop."""

from __future__ import annotations

import sys

import jax.numpy as jnp
import pytest

from chimera_jax.cli import entry
from chimera_jax.config import load_config, resolve_config, to_yaml
from chimera_jax.train.checkpoint import Checkpointer
from chimera_jax.train.optimizer import make_optimizer
from chimera_jax.train.state import init_state


def launch(command: str, *argv: str, monkeypatch, capsys, status: int = 2) -> str:
    """The command's error line; fails unless it exits with ``status`` and the line ends stderr, which holds no
    traceback and (progress messages aside) no other line."""
    monkeypatch.setenv("CHIMERA_MALLOC", "off")  # no re-execution of the test process
    monkeypatch.setattr(sys, "argv", [f"scripts/{command}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        entry.launch(command)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("evaluating ")]
    assert exit_.value.code == status and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("command", "argv", "line"), [
    ("train", ["--model", "dense", "--train.stepz", "20"], "error: unrecognized arguments: --train.stepz 20"),
    ("train", ["--model", "dense", "--train.steps"], "error: argument --train.steps: expected one argument"),
    ("train", ["--model", "dens"], "error: model: unknown preset 'dens'"),
    ("train", ["--config", "no/such.yaml"], "error: config: no such file no/such.yaml"),
    ("experiment", ["time_indexed", "--profile", "smoke", "--sedes", "2"], "unrecognized arguments: --sedes 2"),
    ("bench", ["train", "--presets", "standard:model.d_modle=3"], "error: unrecognized arguments: --model.d_modle 3"),
    ("bench", ["train", "--presets", "nope"], "error: presets: 'nope' is neither a row (standard, ti_ssm,"),
    ("bench", ["moe", "--bogus", "1"], "error: unrecognized arguments: --bogus 1"),
    ("bench", ["moe", "--train-layers", "0"], "error: repeats, blocks and the train-* sizes must be >= 1"),
    ("bench", ["nope", "--quick"], "error: which bench? The first argument is one of: inference, train, scan, moe"),
    ("plot_experts", ["no/such/run"], "error: checkpoint: no such folder no/such/run"),
    ("compare", ["no/such/run", "--hf", "gpt2"], "error: runs: no/such/run is not a run directory"),
    ("bench", ["inference", "--presets", "dense", "--depths", "3"], "error: depths [3]: each must be >= 1, with the "
     "time-indexed preset ti_ssm in --presets"),
    ("bench", ["depth", "--low", "5", "--high", "4"], "error: need 1 <= --low (5) <= --high (4)"),
])
def test_a_bad_command_line_is_one_error_line(command, argv, line, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert line in launch(command, *argv, monkeypatch=monkeypatch, capsys=capsys)


@pytest.fixture
def run_at_step_0(tiny_config):
    """A run directory holding one checkpoint, at step 0 (an initialised model: no training needed)."""
    cfg = resolve_config(tiny_config(), 256)
    with Checkpointer(cfg.run_dir) as ckpt:
        ckpt.save(init_state(cfg, make_optimizer(cfg.optim, cfg.train.steps)), cfg)
    return cfg.run_dir


def test_a_missing_step_names_the_steps_there(run_at_step_0, monkeypatch, capsys, tmp_path):
    for command, argv in [("eval", []), ("export_hf", ["--out", str(tmp_path / "hf")])]:
        line = launch(command, "--checkpoint", str(run_at_step_0), "--step", "7", *argv, monkeypatch=monkeypatch,
                      capsys=capsys)
        assert line == f"error: {run_at_step_0} has no checkpoint at step 7; its steps: 0"


def test_a_depth_the_run_cannot_take_is_one_error_line(run_at_step_0, monkeypatch, capsys, tmp_path):
    """Before any model loads: --depth of a model without a shared block, or below 1."""
    (run_at_step_0 / "config.yaml").write_text(to_yaml(resolve_config(load_config(run_at_step_0.parent / "tiny.yaml"),
                                                                      256)))
    for command, argv in [("eval", []), ("generate", ["--prompt", "x"]), ("lm_eval", ["--tasks", "bbc_topic"])]:
        line = launch(command, "--checkpoint", str(run_at_step_0), "--depth", "3", *argv, monkeypatch=monkeypatch,
                      capsys=capsys)
        assert line == f"error: depth: {run_at_step_0} is not time-indexed (model.time.enabled=false): only a " \
                       "shared block runs at another depth"
    line = launch("eval", "--checkpoint", str(run_at_step_0), "--depth", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert line == "error: depth must be >= 1, got 0"


def test_missing_data_is_one_error_line(run_at_step_0, monkeypatch, capsys, tmp_path):
    line = launch("eval", "--checkpoint", str(run_at_step_0), "--data", f"text:{tmp_path / 'none.txt'}",
                  monkeypatch=monkeypatch, capsys=capsys)
    assert line.startswith(f"error: text:{tmp_path / 'none.txt'}: no such file or folder")
    line = launch("eval", "--checkpoint", str(run_at_step_0), "--data", "wikitext-103", "--split", "train",
                  "--data_dir", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert line.startswith("error: 'wikitext-103' split 'train' was not found. Searched: data.data_dir: ")


def test_a_corpus_too_small_to_train_on_is_one_error_line(tmp_path, monkeypatch, capsys):
    empty, short = tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.touch()
    short.write_text("a short line\n" * 40)  # 520 bytes: train 481, validation 26 (byte tokens)
    train = ("--model", "dense", "--train.run_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"))
    line = launch("train", *train, "--data.corpus", f"text:{empty}", monkeypatch=monkeypatch, capsys=capsys)
    assert line == f"error: text:{empty}: the file is empty: no text to read"
    line = launch("train", *train, "--data.corpus", f"text:{short}", "--data.seq_len", "64", monkeypatch=monkeypatch,
                  capsys=capsys)
    assert line == (f"error: data.seq_len=64: text:{short}/validation has 26 tokens, fewer than seq_len + 1 = 65 "
                    "needed for one training window; lower data.seq_len to at most 25 or use a larger corpus")


def test_a_diverged_run_is_one_error_line_and_exit_status_3(tiny_config, token_cache, tmp_path, monkeypatch, capsys):
    from chimera_jax.train import step

    tiny_config()  # writes tmp_path / "tiny.yaml"
    monkeypatch.setattr(step, "head_cross_entropy", lambda *args: jnp.array(jnp.nan))
    line = launch("train", "--config", str(tmp_path / "tiny.yaml"), "--data.cache_dir", str(token_cache),
                  "--train.run_dir", str(tmp_path / "run"), "--train.steps", "2", monkeypatch=monkeypatch,
                  capsys=capsys, status=3)
    assert line.startswith("error: non-finite loss (nan) at step 1: training diverged (a lower optim.lr")
    assert line.endswith(f"the last good state (step 0) is saved in {tmp_path / 'run' / 'checkpoints'}")


def test_a_missing_run_is_not_created_and_an_empty_one_has_no_checkpoint_yet(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope"
    line = launch("export_hf", "--checkpoint", str(missing), "--out", str(tmp_path / "hf"),
                  monkeypatch=monkeypatch, capsys=capsys)
    assert line == f"error: {missing} is not a run directory (no checkpoints/ in it)"
    assert not missing.exists()

    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for command, argv in [("generate", ["--prompt", "hi"]), ("eval", [])]:
        line = launch(command, "--checkpoint", str(empty), *argv, monkeypatch=monkeypatch, capsys=capsys)
        assert line.startswith(f"error: {empty} has no checkpoint yet")


def test_compare_fails_when_every_model_failed(monkeypatch, capsys):
    from chimera_jax.bridge import compare

    monkeypatch.setattr(compare, "evaluate_isolated", lambda spec, *a, **k: {"model": spec, "error": "OSError: no"})
    line = launch("compare", "--hf", "a", "b", monkeypatch=monkeypatch, capsys=capsys)
    assert line == "error: none of the 2 models could be evaluated (Not evaluated, above)"
