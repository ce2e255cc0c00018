"""Training: the step compiles once, loss falls, accumulation and bf16 behave, NaNs stop the run, Ctrl-C and SIGTERM
save the step done (resuming gives the uninterrupted run), a finished run says so, a shorter one is refused."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_YAML

from chimera_jax import data
from chimera_jax.cli import train as train_cli
from chimera_jax.config import ConfigError, RunConfig, load_config, resolve_config, to_yaml
from chimera_jax.train import loop
from chimera_jax.train import step as step_module
from chimera_jax.train.checkpoint import Checkpointer, load_model
from chimera_jax.train.interrupt import STOP_SIGNALS, Interrupted, StopRequests
from chimera_jax.train.loop import NonFiniteLoss, train
from chimera_jax.train.mesh import place_batch
from chimera_jax.train.metrics import read_metrics
from chimera_jax.train.optimizer import decay_mask, lr_schedule, make_optimizer
from chimera_jax.train.state import init_state
from chimera_jax.train.step import make_train_step


def _setup(cfg):
    cfg = resolve_config(cfg, 256)
    opt = make_optimizer(cfg.optim, cfg.train.steps)
    return cfg, opt, init_state(cfg, opt)


def _batch(cfg, step, batch_size=None):
    tokens = data.load_stream(cfg.data, "train").tokens
    return data.get_batch(tokens, cfg.data.seq_len, batch_size or cfg.train.batch_size, cfg.train.seed, step)


@pytest.mark.slow
def test_step_compiles_once_and_loss_falls(tiny_config):
    cfg, opt, state = _setup(tiny_config("--train.steps", "40"))
    step = make_train_step(cfg, opt, lr_schedule(cfg.optim, 40), max_traces=1)
    losses = []
    for i in range(40):
        state, metrics = step(state, *_batch(cfg, i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch(tiny_config):
    cfg, opt, state = _setup(tiny_config("--train.batch_size", "4"))
    inputs, targets = _batch(cfg, 0)
    big, _ = make_train_step(cfg, opt, lr_schedule(cfg.optim, 20))(state, inputs, targets)
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=2, grad_accum=2))
    accum, _ = make_train_step(cfg2, opt, lr_schedule(cfg.optim, 20))(state, inputs, targets)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(big.model, eqx.is_array)),
                    jax.tree_util.tree_leaves(eqx.filter(accum.model, eqx.is_array)), strict=False):
        np.testing.assert_allclose(a, b, atol=2e-6)


def _arrays(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_array))]


@pytest.mark.slow
def test_donated_step_equals_the_plain_one_and_a_non_finite_step_changes_nothing(tiny_config, monkeypatch):
    cfg, opt, state = _setup(tiny_config())
    schedule = lr_schedule(cfg.optim, 20)
    batch = _batch(cfg, 0)
    plain, _ = make_train_step(cfg, opt, schedule)(state, *batch)
    donated, _ = make_train_step(cfg, opt, schedule, donate=True)(state, *batch)
    assert state.model.embed.weight.is_deleted() and not plain.model.embed.weight.is_deleted()
    for a, b in zip(_arrays(plain), _arrays(donated), strict=True):
        np.testing.assert_array_equal(a, b)
    good = _arrays(donated)
    monkeypatch.setattr(step_module, "head_cross_entropy", lambda *args: jnp.array(jnp.nan))
    stuck, metrics = make_train_step(cfg, opt, schedule, donate=True)(donated, *_batch(cfg, 1))
    assert np.isnan(float(metrics["loss"])) and int(stuck.step) == 1
    for a, b in zip(good, _arrays(stuck), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_bf16_compute_keeps_f32_parameters(tiny_config):
    cfg, opt, state = _setup(tiny_config("--train.precision", "bf16"))
    new_state, metrics = make_train_step(cfg, opt, lr_schedule(cfg.optim, 20))(state, *_batch(cfg, 0))
    assert np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree_util.tree_leaves(eqx.filter(new_state.model, eqx.is_inexact_array))} == {
        jnp.dtype(jnp.float32)}


def test_weight_decay_only_on_matrices(tiny_config):
    cfg, _, state = _setup(tiny_config())
    mask = decay_mask(eqx.filter(state.model, eqx.is_inexact_array))
    stacked = mask.stack.groups[0]
    assert stacked.mixer.w_q.weight and stacked.ffn.w_in.weight and mask.embed.weight
    assert not stacked.mixer.w_q.bias and not stacked.norm_mixer.scale and not mask.final_norm.scale


@pytest.fixture(scope="module")
def finished(tmp_path_factory, token_cache) -> tuple[RunConfig, dict]:
    """The tiny run (helpers.TINY_YAML: 20 steps, validation and checkpoints every 10) trained once: ``(cfg, summary)``.
    Tests read it, or resume it to find it complete, and write nothing in it."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "tiny.yaml").write_text(TINY_YAML)
    cfg = load_config(folder / "tiny.yaml", ["--data.cache_dir", str(token_cache),
                                             "--train.run_dir", str(folder / "run")])
    return cfg, train(cfg, max_traces=1)


def test_train_loop_writes_metrics_and_checkpoints(finished):
    cfg, summary = finished
    assert Checkpointer(cfg.run_dir).steps() == [10, 20]
    val = read_metrics(cfg.run_dir, "validation")
    assert [m["step"] for m in val] == [10, 20]
    assert val[-1]["loss"] == pytest.approx(summary["val_loss"])
    assert val[-1]["perplexity"] == pytest.approx(np.exp(val[-1]["loss"]))
    assert (cfg.run_dir / "tb").is_dir() and (cfg.run_dir / "config.yaml").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_state(tiny_config, monkeypatch):
    cfg = tiny_config("--train.steps", "4", "--train.checkpoint_every", "2")
    train(cfg)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))
    monkeypatch.setattr(step_module, "head_cross_entropy", lambda *args: jnp.array(jnp.nan))
    with pytest.raises(NonFiniteLoss, match="step 5"):
        train(longer)
    assert max(Checkpointer(cfg.run_dir).steps()) == 4


def _signal_during_step(monkeypatch, step: int, signum: int) -> None:
    """The loop's batch for step ``step`` (0-based) sends ``signum`` to this process: a Ctrl-C or SIGTERM arriving
    while that step runs."""
    def batch(tokens, cfg, s, mesh):
        if s == step:
            os.kill(os.getpid(), signum)
        return place_batch(tokens, cfg, s, mesh)

    monkeypatch.setattr(loop, "place_batch", batch)


def _metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in read_metrics(run_dir)]


def test_a_signal_is_kept_for_the_loop_and_the_handlers_come_back():
    """Within StopRequests a SIGTERM only records itself; the handlers before come back at once (a second signal
    acts as usual) and on exit; another thread, which cannot install handlers, leaves them alone."""
    before = [signal.getsignal(s) for s in STOP_SIGNALS]
    with StopRequests() as stop:
        assert signal.getsignal(signal.SIGINT) not in before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        assert [signal.getsignal(s) for s in STOP_SIGNALS] == before
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == before
    errors = []

    def in_a_thread() -> None:
        with StopRequests() as stop:
            errors.append(stop.signum)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == [None]


@pytest.mark.slow
def test_ctrl_c_saves_the_step_done_and_resuming_gives_the_uninterrupted_run(finished, tiny_config, monkeypatch,
                                                                            caplog):
    reference, _ = finished
    cfg = tiny_config()
    assert dataclasses.replace(cfg, train=reference.train) == reference  # the same run, in another directory
    handlers = [signal.getsignal(s) for s in STOP_SIGNALS]
    _signal_during_step(monkeypatch, 6, signal.SIGINT)
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupted) as stopped:
        train(cfg)
    assert (stopped.value.step, stopped.value.status) == (7, 130)
    assert "interrupted at step 7: saved, resume with the same command" in caplog.text
    assert Checkpointer(cfg.run_dir).steps() == [7]  # not a checkpoint_every step: saved for the interruption
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == handlers
    monkeypatch.undo()
    train(cfg)
    assert _metrics(cfg.run_dir) == _metrics(reference.run_dir)
    for a, b in zip(*(jax.tree_util.tree_leaves(load_model(c.run_dir)[0]) for c in (cfg, reference)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("raised", "stderr"), [("Interrupted(7, 2)", ""),
                                                  ("KeyboardInterrupt()", "interrupted\n")])
def test_the_command_line_exits_with_the_signals_status_and_no_traceback(raised, stderr):
    """Training's Interrupted has logged its line already; a Ctrl-C elsewhere says one word."""
    code = ("import sys, types\nfrom chimera_jax.cli.entry import launch\n"
            "from chimera_jax.train.interrupt import Interrupted\n"
            f"def main(argv):\n    raise {raised}\n"
            "sys.modules['chimera_jax.cli.stopped'] = types.SimpleNamespace(main=main, __doc__='')\nlaunch('stopped')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "CHIMERA_MALLOC": "off"})
    assert (done.returncode, done.stderr) == (130, stderr)


@pytest.mark.slow
def test_a_finished_run_says_so_a_shorter_one_is_refused_and_changed_settings_are_named(finished, tmp_path,
                                                                                       caplog, capsys):
    cfg, first = finished
    config_file = tmp_path / "run.yaml"
    config_file.write_text(to_yaml(cfg))
    again = train_cli.main(["--config", str(config_file), "--resume"])
    assert capsys.readouterr().out.startswith(
        f"tiny already complete at step 20 (train.steps=20): nothing to do | val loss {first['val_loss']:.4f} ppl ")
    assert (again["val_loss"], again["final_train_loss"]) == (first["val_loss"], first["final_train_loss"])
    with pytest.raises(ConfigError, match=r"^--resume: no checkpoint in .*nope/checkpoints to resume from"):
        train_cli.main(["--config", str(config_file), "--train.run_dir", str(tmp_path / "nope"), "--resume"])
    assert not (tmp_path / "nope").exists()

    shorter = load_config(config_file, ["--train.steps", "15", "--optim.lr", "1e-3"])
    with caplog.at_level(logging.INFO), pytest.raises(
            ConfigError, match="^train.steps=15: the run in .* is already past that step, at step 20"):
        train(shorter)
    assert ("resuming with changed settings (checkpoint -> now): optim.lr 0.003 -> 0.001, train.steps 20 -> 15"
            in caplog.text)
    assert "steps: 20" in (cfg.run_dir / "config.yaml").read_text()  # nothing trained: the run's config kept


def test_split_too_short_fails_before_compute(tiny_config, tmp_path):
    short, one_line = tmp_path / "short.txt", tmp_path / "one_line.txt"
    short.write_text("ab\n" * 40)  # 5% of 120 characters: a validation split of 6 tokens, seq_len 32
    one_line.write_text("too short " * 3)
    with pytest.raises(ConfigError, match="data.seq_len=32: .*validation has 6 tokens"):
        train(tiny_config("--data.corpus", f"text:{short}"))
    with pytest.raises(ConfigError, match="no validation text"):
        train(tiny_config("--data.corpus", f"text:{one_line}"))


@pytest.mark.slow
def test_a_run_on_the_fallback_corpus_records_it_and_resumes_on_it(tiny_config, tmp_path):
    """Trained on the fallback while the corpus was missing; resumed after it appeared: still the fallback."""
    corpus = tmp_path / "arrives_later.txt"
    cfg = tiny_config("--train.steps", "10", "--data.corpus", f"text:{corpus}", "--data.fallback", "bbc_news")
    assert train(cfg)["corpus"] == "bbc_news"
    assert "corpus: bbc_news" in (cfg.run_dir / "config.yaml").read_text()
    corpus.write_text("now it exists " * 2000)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=20))
    assert train(longer)["corpus"] == "bbc_news"


def _memory_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts Linux memory maps")
@pytest.mark.slow
def test_a_finished_run_leaves_no_compiled_code_mapped(tiny_config, tmp_path):
    """XLA:CPU maps each executable's code on its own; run after run in one process must not pile them up
    towards vm.max_map_count (where XLA's compiler crashed the test session)."""
    counts = []
    for i in range(2):  # the first run maps what any run maps once (libraries, the allocator's arenas)
        train(tiny_config("--train.steps", "2", "--model.d_model", str(32 + 16 * i), run_dir=tmp_path / f"r{i}"))
        counts.append(_memory_maps())
    assert counts[1] - counts[0] < 100, counts  # each tiny run compiles ~650 maps' worth of code
