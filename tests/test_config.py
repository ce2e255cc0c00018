"""Configs: every preset loads and builds; bad keys and values fail at start-up, naming the key."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from chimera_jax.config import CONFIG_DIR, from_yaml, load_config, parse_args, to_yaml
from chimera_jax.models.params import param_report
from chimera_jax.models.registry import build_model, resolve_config
from chimera_jax.tokenizer import get_tokenizer

PRESETS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_presets():
    assert {"dense", "modern"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_builds_and_runs_abstractly(path):
    """Full-size presets are built and run with eval_shape: shapes are checked, nothing is allocated."""
    cfg = load_config(path)
    assert cfg.name == path.stem, "a preset's name should match its file, so run dirs are predictable"
    cfg = resolve_config(cfg, get_tokenizer(cfg.data.tokenizer).vocab_size)
    model = eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0))
    tokens = jax.ShapeDtypeStruct((2, cfg.data.seq_len), jnp.int32)
    logits, _ = eqx.filter_eval_shape(lambda m, t: m(t, inference=True), model, tokens)
    assert logits.shape == (2, cfg.data.seq_len, cfg.model.vocab_size)
    report = param_report(model)
    assert 0 < report["active"] <= report["total"]


def test_yaml_round_trip():
    cfg = load_config(CONFIG_DIR / "dense.yaml", ["--train.steps", "7"])
    assert cfg.train.steps == 7
    assert from_yaml(to_yaml(cfg)) == cfg


def test_model_flag_selects_preset_and_overrides_apply():
    cfg, extra = parse_args(["--model", "modern", "--train.steps", "200", "--resume"])
    assert cfg.name == "modern" and cfg.model.positions == "rope" and cfg.train.steps == 200
    assert extra == ["--resume"]


def test_unknown_key_fails_naming_it(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "dense", "--train.stepz", "3"])
    assert "train.stepz" in capsys.readouterr().err


def test_wrongly_typed_value_fails_naming_it():
    with pytest.raises(Exception, match="train.steps"):
        parse_args(["--model", "dense", "--train.steps", "many"])


def test_unknown_key_in_yaml_fails_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(Exception, match="d_modle"):
        load_config(bad)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(SystemExit, match="dense"):
        parse_args(["--model", "no_such_model"])
