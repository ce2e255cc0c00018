"""The inference bench's rows: an MoE row is the dense preset with its FFN made a preset's experts, at equal
active parameters; a name that is neither dense, ti_ssm nor an MoE preset is refused before any work."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import pytest

from chimera_jax.bench.inference import preset_config
from chimera_jax.config import ConfigError, load_config, preset_path
from chimera_jax.models.builder import build_model
from chimera_jax.models.params import param_report


@pytest.mark.parametrize("name", ["moe", "moe_e4"])
def test_an_moe_row_is_dense_with_the_presets_experts_at_equal_active_parameters(name):
    dense, row = preset_config("dense", True, 256), preset_config(name, True, 256)
    experts = load_config(preset_path(name)).model.moe
    assert (row.model.moe.num_experts, row.model.moe.top_k) == (experts.num_experts, experts.top_k)
    assert row.model.moe.dispatch == "dropless"
    # everything but the FFN is the dense model's
    assert dataclasses.replace(row.model, moe=dense.model.moe) == dense.model
    report = lambda cfg: param_report(eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0)))  # noqa: E731
    router = row.model.n_layers * row.model.d_model * experts.num_experts
    assert abs(report(row)["active"] - report(dense)["total"]) <= router + row.model.n_layers * row.model.d_model


def test_an_unknown_row_is_refused_naming_the_moe_presets():
    with pytest.raises(ConfigError, match=r"unknown 'standard': dense, ti_ssm, or an MoE preset \(.*moe_e4"):
        preset_config("standard", True, 256)
