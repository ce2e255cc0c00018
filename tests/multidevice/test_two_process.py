"""Two processes on 127.0.0.1, four CPU devices each, train as one 8-device run: the single-device losses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from chimera_jax.config import to_yaml
from chimera_jax.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_log_the_single_device_losses(run_config, single_device_losses, tmp_path):
    cfg = run_config("--mesh.data", "2", "--mesh.fsdp", "2", "--mesh.expert", "2", moe=True)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(to_yaml(cfg))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"}
    coordinator = ["--distributed.coordinator", f"127.0.0.1:{_free_port()}", "--distributed.num_processes", "2"]
    procs = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config_file),
                               *coordinator, "--distributed.process_id", str(i)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    losses = [m["loss"] for m in read_metrics(cfg.run_dir, "train")]
    np.testing.assert_allclose(losses, single_device_losses(cfg), rtol=2e-6)
    assert "done tiny" in outputs[0] and "done tiny" not in outputs[1]  # only process 0 reports
    # each process wrote the shards it holds
    assert {p.name for p in (cfg.run_dir / "checkpoints" / "10" / "model").glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}
