"""The multi-device tests run in a pytest process of their own with 8 CPU devices (the Makefile's ``test``):
JAX fixes its device count when it first uses a backend, so the rest of the suite cannot share a process."""

from __future__ import annotations

import dataclasses
import os

# Compiling dominates these tests: XLA's backend optimisations off halve it (set before JAX starts a backend).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from chimera_jax import data  # noqa: E402
from chimera_jax.config import MeshConfig, RunConfig, resolve_config  # noqa: E402
from chimera_jax.train.mesh import make_mesh, place_batch, shard_state  # noqa: E402
from chimera_jax.train.optimizer import lr_schedule, make_optimizer  # noqa: E402
from chimera_jax.train.state import TrainerState, init_state  # noqa: E402
from chimera_jax.train.step import make_train_step  # noqa: E402

DEVICES = 8

try:
    jax.config.update("jax_num_cpu_devices", DEVICES)  # refused once a backend is in use: the count check says so
except RuntimeError:
    pass
if len(jax.devices()) < DEVICES:
    pytest.exit(f"tests/multidevice needs {DEVICES} devices and found {len(jax.devices())}: run it in its own "
                f"pytest process (make test), or with XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES}",
                returncode=1)

# A tiny run every test here shares: 10 steps of 8 sequences, one per device.
TINY = ("--train.steps", "10", "--train.batch_size", "8", "--train.checkpoint_every", "10", "--train.eval_every", "10")
MOE = ("--model.moe.enabled", "true", "--model.moe.num_experts", "4", "--model.moe.d_ff", "64")


@pytest.fixture
def run_config(tiny_config):
    """``run_config(*flags, moe=False, run_dir=None)``: the shared tiny run (a tiny MoE with ``moe``) plus ``flags``."""
    return lambda *flags, moe=False, run_dir=None: tiny_config(*TINY, *(MOE if moe else ()), *flags, run_dir=run_dir)


def train_steps(cfg: RunConfig, devices: list[jax.Device]) -> tuple[list[dict], TrainerState]:
    """The training loop's own pieces (state placed, batches placed, donated step) on a mesh of ``devices``,
    without its evaluation and files: ``(every step's metrics on the host, final state)``."""
    cfg = resolve_config(cfg, 256)
    mesh = make_mesh(cfg, devices)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    state = shard_state(init_state(cfg, optimizer), mesh)
    step = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, cfg.train.steps), donate=True, mesh=mesh)
    tokens = data.load_stream(cfg.data, "train").tokens
    history = []
    for i in range(cfg.train.steps):
        state, metrics = step(state, *place_batch(tokens, cfg, i, mesh))
        history.append(jax.device_get(metrics))
    return history, state


@pytest.fixture(scope="session")
def single_device_metrics():
    """``single_device_metrics(cfg)``: every step's metrics of ``cfg`` trained on one device, computed once per
    config."""
    cache: dict[str, list[dict]] = {}

    def history(cfg: RunConfig) -> list[dict]:
        cfg = dataclasses.replace(cfg, mesh=MeshConfig(), train=dataclasses.replace(cfg.train, run_dir=None))
        key = repr(cfg)
        if key not in cache:
            cache[key] = train_steps(cfg, jax.devices()[:1])[0]
        return cache[key]

    return history


@pytest.fixture
def single_device_losses(single_device_metrics):
    """``single_device_losses(cfg)``: the losses of ``cfg`` trained on one device."""
    return lambda cfg: [metrics["loss"] for metrics in single_device_metrics(cfg)]


@pytest.fixture(name="train_steps")
def train_steps_fixture():
    """``train_steps(cfg, devices) -> (every step's metrics, final state)``."""
    return train_steps
