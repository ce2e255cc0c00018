"""Checkpoints: exact resume after SIGKILL, corrupt newest skipped, config mismatch explained, model read alone."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from chimera_jax.config import resolve_config, to_yaml
from chimera_jax.train.checkpoint import Checkpointer, CheckpointError, check_model_config, load_model
from chimera_jax.train.loop import train
from chimera_jax.train.metrics import read_metrics
from chimera_jax.train.optimizer import make_optimizer
from chimera_jax.train.state import init_state

REPO = Path(__file__).resolve().parent.parent


def _losses(run_dir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir, "train")}


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_uninterrupted_losses(tiny_config, tmp_path):
    steps = ["--train.steps", "60", "--train.eval_every", "30"]
    reference = tiny_config(*steps, run_dir=tmp_path / "reference")
    train(reference)

    killed = tiny_config(*steps, run_dir=tmp_path / "killed")
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(to_yaml(killed))
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config_file)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed.run_dir / "checkpoints" / "20").exists():  # orbax renames a finished checkpoint into place
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(_losses(killed.run_dir)) < 60, "the run was killed after it finished"

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _losses(killed.run_dir) == _losses(reference.run_dir)


@pytest.fixture
def two_checkpoints(tiny_config):
    cfg = tiny_config("--train.steps", "20")
    train(cfg)
    return cfg


def _skeleton(cfg):
    cfg = resolve_config(cfg, 256)
    return cfg, init_state(cfg, make_optimizer(cfg.optim, cfg.train.steps))


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_with_warning(two_checkpoints, caplog):
    cfg, skeleton = _skeleton(two_checkpoints)
    for f in (cfg.run_dir / "checkpoints" / "20" / "model").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        state, meta = Checkpointer(cfg.run_dir).restore(skeleton, cfg)
    assert meta["step"] == 10 and int(state.step) == 10
    assert "checkpoint 20" in caplog.text


@pytest.mark.slow
def test_model_config_mismatch_is_named(two_checkpoints):
    cfg, _ = _skeleton(two_checkpoints)
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=64))
    _, skeleton = _skeleton(other)
    with pytest.raises(CheckpointError, match="model.d_model: checkpoint 32 vs config 64") as err:
        Checkpointer(cfg.run_dir).restore(skeleton, other)
    assert "\n" not in str(err.value) and "a new run directory (--train.run_dir)" in str(err.value)


def test_a_changed_seq_len_is_named_as_the_flag_not_the_derived_max_seq_len(tiny_config, tmp_path):
    saved, changed = (resolve_config(tiny_config(*flags), 256) for flags in ([], ["--data.seq_len", "64"]))
    with pytest.raises(CheckpointError, match=r"\(data.seq_len: checkpoint 32 vs config 64\)"):
        check_model_config(saved, changed, tmp_path)
    explicit = resolve_config(tiny_config("--model.max_seq_len", "128"), 256)  # set by the user: named as such
    with pytest.raises(CheckpointError, match=r"\(model.max_seq_len: checkpoint 32 vs config 128\)"):
        check_model_config(saved, explicit, tmp_path)


@pytest.mark.slow
def test_execution_options_are_not_a_model_mismatch(two_checkpoints):
    """Unrolling or rematerialising the layer scan changes execution only: the checkpoint restores and gives
    the same logits."""
    cfg, skeleton = _skeleton(two_checkpoints)
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_unroll=cfg.model.n_layers,
                                                                  remat="block"))
    _, unrolled_skeleton = _skeleton(unrolled)
    state, meta = Checkpointer(cfg.run_dir).restore(unrolled_skeleton, unrolled)
    reference, _ = Checkpointer(cfg.run_dir).restore(skeleton, cfg)
    tokens = jnp.arange(16)[None] % 256
    np.testing.assert_allclose(state.model(tokens, inference=True)[0], reference.model(tokens, inference=True)[0],
                               atol=1e-5)
    assert meta["step"] == 20 and state.model.stack.unroll == cfg.model.n_layers


def test_load_model_takes_config_from_checkpoint(two_checkpoints):
    model, cfg = load_model(two_checkpoints.run_dir)
    assert cfg.model.d_model == 32 and model.embed.weight.shape == (256, 32)


@pytest.mark.slow
def test_model_loads_without_the_optimizer_item(two_checkpoints):
    """Evaluation reads the model item alone: with the optimizer's gone it gives the full restore's logits,
    while resuming from that checkpoint fails naming the missing item."""
    cfg, skeleton = _skeleton(two_checkpoints)
    reference, _ = Checkpointer(cfg.run_dir).restore(skeleton, cfg)
    for step in (10, 20):
        shutil.rmtree(cfg.run_dir / "checkpoints" / str(step) / "train")

    model, loaded_cfg = load_model(cfg.run_dir)
    tokens = jnp.arange(16)[None] % 256
    np.testing.assert_array_equal(model(tokens, inference=True)[0], reference.model(tokens, inference=True)[0])
    assert loaded_cfg == cfg
    with pytest.raises(CheckpointError, match="has no train item"):
        Checkpointer(cfg.run_dir).restore(skeleton, cfg)
