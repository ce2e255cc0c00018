"""One run over several processes: each drives its own devices, and together they form one global mesh.

``jax.distributed.initialize`` connects the processes (on CPU their collectives go through gloo, JAX's
default there); from then on ``jax.devices()`` lists every process's devices, and a jitted step runs on
all of them, each process feeding and reading only its own shards (train/mesh.py).
"""

from __future__ import annotations

import logging

import jax

from chimera_jax.config import DistributedConfig


def initialize(cfg: DistributedConfig) -> None:
    """Join the run's other processes, once per process and before JAX uses a device; a no-op for a
    single-process run. Only process 0 then logs at INFO: the others would repeat its every line."""
    if not cfg.enabled or jax.distributed.is_initialized():
        return
    if cfg.cluster:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
    if not is_primary():
        logging.getLogger("chimera_jax").setLevel(logging.WARNING)


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, config) and shows progress: process 0."""
    return jax.process_index() == 0
