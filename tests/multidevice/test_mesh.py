"""Training on a mesh of 8 devices computes what one device computes, with parameters and moments really split."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from chimera_jax.config import ConfigError
from chimera_jax.train.loop import train

MESHES = {"data 8": ("--mesh.data", "8"), "data 2, fsdp 4": ("--mesh.data", "2", "--mesh.fsdp", "4"),
          "data 2, fsdp 2, expert 2": ("--mesh.data", "2", "--mesh.fsdp", "2", "--mesh.expert", "2")}


def _split(array: jax.Array) -> tuple[int, ...]:
    """How many pieces each dimension of ``array`` is cut into on its devices."""
    return tuple(full // part for full, part in zip(array.shape, array.addressable_shards[0].data.shape, strict=True))


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("family", ["dense", "moe"])
def test_mesh_logs_the_single_device_losses_and_diagnostics_with_parameters_and_moments_split(
        run_config, train_steps, single_device_metrics, family, mesh):
    cfg = run_config(*MESHES[mesh], moe=family == "moe")
    history, state = train_steps(cfg, jax.devices())
    want = single_device_metrics(cfg)
    np.testing.assert_allclose([m["loss"] for m in history], [m["loss"] for m in want], rtol=2e-6)
    if family == "moe":  # the routing statistics of every layer and step (expert loads, entropies, aux losses)
        assert {"expert_load", "router_entropy", "balance_loss"} <= set(history[0]["aux"])
        for got, expected in zip(history, want, strict=True):
            jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                                   got["aux"], expected["aux"])

    fsdp, expert = cfg.mesh.fsdp, cfg.mesh.expert
    adam = state.opt_state[1][0]
    for tree in (state.model, adam.mu, adam.nu):  # each moment split as its parameter
        assert _split(tree.embed.weight) == (fsdp, 1)  # [vocab 256, 32]: the larger dimension
        assert _split(tree.stack.groups[0].mixer.w_q.weight) == (1, fsdp, 1)  # [layers, 32, 32]: never the layers
        assert _split(tree.stack.groups[0].norm_mixer.scale) == (1, 1)  # vectors stay whole
        if family == "moe":  # [layers, experts 4, 32, 64]
            assert _split(tree.stack.groups[0].ffn.experts.w_in.weight) == (1, expert, 1, fsdp)
    assert {shard.device for shard in state.model.embed.weight.addressable_shards} == set(jax.devices())


def test_capacity_dispatch_on_an_expert_mesh_logs_the_single_device_losses(run_config, train_steps,
                                                                           single_device_losses):
    cfg = run_config("--model.moe.dispatch", "capacity", "--model.moe.capacity_factor", "2.0",  # none dropped per shard
                     *MESHES["data 2, fsdp 2, expert 2"], moe=True)
    history, _ = train_steps(cfg, jax.devices())
    np.testing.assert_allclose([m["loss"] for m in history], single_device_losses(cfg), rtol=2e-6)


@pytest.mark.parametrize(("flags", "message"), [
    (("--mesh.data", "3"), "mesh.data=3 x mesh.fsdp=1 x mesh.expert=1 must multiply to the 8 devices present"),
    (("--mesh.fsdp", "3"), "mesh.data=-1 x mesh.fsdp=3 x mesh.expert=1 must multiply to the 8 devices present"),
    (("--train.batch_size", "4"), "train.batch_size=4 must be divisible by the 8 devices of the mesh"),
])
def test_a_mesh_that_does_not_fit_fails_at_start_up_in_one_line(run_config, flags, message):
    cfg = run_config(*flags)
    with pytest.raises(ConfigError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value) and not cfg.run_dir.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (("--mesh.expert", "3", "--mesh.data", "1"), "mesh.expert=3 must divide model.moe.num_experts=4"),
    (("--mesh.data", "-1", "--mesh.fsdp", "-1"), "mesh: only one axis can be -1"),
])
def test_an_impossible_mesh_config_fails_when_parsed(run_config, flags, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_config(*flags, moe=True)
    assert "\n" not in str(err.value)
