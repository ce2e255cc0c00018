"""Configs: every preset loads and builds; bad keys, values and combinations fail at parse, naming the field."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from chimera_jax.config import CONFIG_DIR, ConfigError, from_yaml, load_config, parse_args, resolve_config, to_yaml
from chimera_jax.models.builder import build_model
from chimera_jax.models.params import param_report
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


@pytest.mark.parametrize(("argv", "message"), [
    (["--train.stepz", "3"], "unrecognized arguments: --train.stepz 3 (did you mean --train.steps?)"),
    (["--sedes", "2"], "unrecognized arguments: --sedes 2"),
    (["--train.steps"], "argument --train.steps: expected one argument"),
])
def test_unknown_key_or_missing_value_fails_with_one_line_naming_it(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(["--model", "dense", *argv])
    assert str(err.value) == message


def test_wrongly_typed_value_fails_naming_it():
    with pytest.raises(Exception, match="train.steps"):
        parse_args(["--model", "dense", "--train.steps", "many"])


def test_unknown_key_in_yaml_fails_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(Exception, match="d_modle"):
        load_config(bad)


def test_unknown_preset_or_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model: unknown preset 'no_such_model' .*known presets: dense, "):
        parse_args(["--model", "no_such_model"])
    with pytest.raises(ConfigError, match="config: no such file"):
        parse_args(["--config", str(tmp_path / "none.yaml")])


# (flags as a user types them, the field the one-line error must name)
BAD_COMBINATIONS = [
    (["--model", "moe", "--model.moe.top_k", "9", "--model.moe.num_experts", "4"], "model.moe.top_k=9"),
    (["--model", "moe", "--model.moe.top_k", "0"], "model.moe.top_k=0"),
    (["--model", "moe", "--model.moe.num_experts", "0"], "model.moe.num_experts=0"),
    (["--model", "moe", "--model.moe.capacity_factor", "0"], "model.moe.capacity_factor=0"),
    (["--model", "moe", "--model.moe.every", "0"], "model.moe.every=0"),
    (["--model", "moe", "--model.moe.every", "3"], "model.moe.every=3"),
    (["--model", "moe", "--model.time.enabled", "true"], "model.time.enabled"),
    (["--train.batch_size", "0"], "train.batch_size=0"),
    (["--train.steps", "-5"], "train.steps=-5"),
    (["--train.grad_accum", "0"], "train.grad_accum=0"),
    (["--train.log_every", "0"], "train.log_every=0"),
    (["--train.eval_every", "0"], "train.eval_every=0"),
    (["--train.checkpoint_every", "0"], "train.checkpoint_every=0"),
    (["--train.keep_checkpoints", "0"], "train.keep_checkpoints=0"),
    (["--train.eval_batches", "0"], "train.eval_batches=0"),
    (["--model.d_model", "250"], "model.d_model=250"),
    (["--model.n_kv_heads", "3"], "model.n_kv_heads=3"),
    (["--model.positions", "rope", "--model.d_model", "36"], "model.positions=rope"),
    (["--model.n_layers", "0"], "model.n_layers=0"),
    (["--model", "ti_ssm", "--model.positions", "rope"], "model.mixer=ssm"),
    (["--model.positions", "learned", "--model.max_seq_len", "64"], "data.seq_len=128"),
    (["--model.vocab_size", "100"], "model.vocab_size=100"),
    (["--data.tokenizer", "gpt2", "--model.vocab_size", "256"], "model.vocab_size=256"),
    (["--model.dropout", "1.0"], "model.dropout=1.0"),
    (["--model.dropout", "-0.1"], "model.dropout=-0.1"),
    (["--model", "ti_ssm", "--model.time.gate_init", "1.0"], "model.time.gate_init=1.0"),
    (["--model", "ti_ssm", "--model.time.gate_init", "0"], "model.time.gate_init=0"),
    (["--optim.lr", "0"], "optim.lr=0"),
    (["--optim.warmup_steps", "-1"], "optim.warmup_steps=-1"),
    (["--optim.min_lr_ratio", "1.5"], "optim.min_lr_ratio=1.5"),
    (["--optim.min_lr_ratio", "-0.1"], "optim.min_lr_ratio=-0.1"),
    (["--data.seq_len", "0"], "data.seq_len=0"),
]


@pytest.mark.parametrize(("argv", "field"), BAD_COMBINATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_impossible_config_fails_at_parse_naming_the_field(argv, field):
    if argv[0] != "--model":
        argv = ["--model", "dense", *argv]
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert field in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["--model", "moe", "--model.moe.top_k", "8"],  # top_k == num_experts
    ["--model", "moe", "--model.n_layers", "6", "--model.moe.every", "3"],
    ["--model", "dense", "--model.positions", "learned", "--model.max_seq_len", "128"],  # seq_len == max_seq_len
    ["--model", "dense", "--model.n_kv_heads", "2", "--model.dropout", "0", "--optim.min_lr_ratio", "1"],
    ["--model", "ti_ssm", "--model.positions", "none", "--data.tokenizer", "gpt2", "--model.vocab_size", "50304"],
])
def test_boundary_configs_parse(argv):
    parse_args(argv)


def test_yaml_and_replace_are_checked_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  moe: {enabled: true, num_experts: 2, top_k: 3}\n")
    with pytest.raises(ConfigError, match="model.moe.top_k=3"):
        load_config(bad)
    text = to_yaml(load_config(CONFIG_DIR / "dense.yaml")).replace("steps: 1000", "steps: 0")
    with pytest.raises(ConfigError, match="train.steps=0"):
        from_yaml(text)
    cfg = load_config(CONFIG_DIR / "dense.yaml")
    with pytest.raises(ConfigError, match="data.seq_len=256"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, positions="learned", max_seq_len=128),
                            data=dataclasses.replace(cfg.data, seq_len=256))
