"""A checkpoint saved split over 8 devices resumes on 1 and on 4 with the losses of the uninterrupted run."""

from __future__ import annotations

import shutil

import jax
import numpy as np

from chimera_jax.train.checkpoint import load_model
from chimera_jax.train.loop import train
from chimera_jax.train.metrics import read_metrics

# The time-indexed SSM with two micro-batches per step, its stack a loop over depth as the preset runs it: the
# stack and the accumulation scan on a mesh too.
TI_SSM = ("--model.mixer", "ssm", "--model.positions", "none", "--model.time.enabled", "true",
          "--model.ssm.kind", "ssd", "--model.ssm.head_dim", "32", "--model.scan_unroll", "8",
          "--train.grad_accum", "2")


def _losses(run_dir, split: str = "train") -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir, split)}


def test_checkpoint_saved_on_8_devices_resumes_on_1_and_on_4(run_config, tmp_path):
    full = run_config(*TI_SSM, "--train.checkpoint_every", "5", "--mesh.data", "2", "--mesh.fsdp", "4",
                      run_dir=tmp_path / "full")
    summary = train(full)
    assert summary["devices"] == 8 and summary["mesh"] == {"data": 2, "fsdp": 4, "expert": 1}

    for devices, mesh in ((1, ()), (4, ("--mesh.data", "2", "--mesh.fsdp", "2"))):
        resumed = run_config(*TI_SSM, *mesh, run_dir=tmp_path / f"on{devices}")
        shutil.copytree(full.run_dir, resumed.run_dir)
        shutil.rmtree(resumed.run_dir / "checkpoints" / "10")  # resume from step 5
        assert train(resumed, devices=jax.devices()[:devices])["devices"] == devices
        # steps 6-10 run on the new mesh from the restored state: the 8-device run's losses, to f32 rounding
        got, want = _losses(resumed.run_dir), _losses(full.run_dir)
        assert sorted(got) == list(range(1, 11))
        np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=2e-6)
        np.testing.assert_allclose(_losses(resumed.run_dir, "validation")[10], _losses(full.run_dir, "validation")[10],
                                   rtol=2e-6)

    model, _ = load_model(full.run_dir)  # evaluation reads a split checkpoint onto one device
    assert model.embed.weight.sharding.device_set == {jax.devices()[0]}
