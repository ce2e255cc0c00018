"""The command line: one parsing style for every command, and bad input stopped with one line before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chimera_jax.bench
from chimera_jax.bench import BENCHES
from chimera_jax.cli import bench, entry
from chimera_jax.cli.bench import bench_module
from chimera_jax.cli.compare import CompareArgs
from chimera_jax.cli.eval import EvalArgs
from chimera_jax.cli.experiment import ExperimentArgs
from chimera_jax.config import ConfigError
from chimera_jax.flags import parse, parse_known
from chimera_jax.malloc import TUNED

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("train", "eval", "eval_hf", "compare", "export_hf", "experiment", "plot_experts", "generate", "bench",
            "lm_eval", "finetune")
BIN = Path(sys.executable).parent


def console(command: str) -> Path:
    path = BIN / f"chimera-{command.replace('_', '-')}"
    if not path.exists():
        pytest.fail(f"{path} missing: reinstall the package (pip install -e .)")
    return path


def test_documented_spellings_parse_to_the_dataclass():
    args = parse(CompareArgs, ["runs/a", "runs/b", "--hf", "gpt2", "EleutherAI/pythia-70m", "--data", "bbc_news",
                               "--seq-len", "64", "--max-windows=4"], positional="runs", aliases={"data": "corpus"})
    assert (args.runs, args.hf, args.corpus, args.seq_len, args.max_windows) == (
        ["runs/a", "runs/b"], ["gpt2", "EleutherAI/pythia-70m"], "bbc_news", 64, 4)
    assert (args.split, args.stride, args.repeats) == ("test", None, 3)  # the command's defaults
    assert parse(CompareArgs, ["a", "--hf=EleutherAI/pythia 70m"], positional="runs").hf == ["EleutherAI/pythia 70m"]

    args, rest = parse_known(ExperimentArgs, ["moe_ablation", "--seeds", "2", "--data.corpus", "kjv", "--profile",
                                              "smoke", "--model.n-layers", "2"], positional="study")
    assert (args.study, args.seeds, args.profile) == ("moe_ablation", 2, "smoke")
    assert rest == ["--data.corpus", "kjv", "--model.n_layers", "2"]


def test_a_bare_switch_is_true_and_a_bad_argument_is_a_one_line_config_error():
    from chimera_jax.bench.moe import MoEBenchArgs

    args = parse(MoEBenchArgs, ["--skip-train", "--blocks", "16", "32", "--cpu-time", "false"])
    assert (args.skip_train, args.blocks, args.cpu_time, args.skip_layers) == (True, [16, 32], False, False)
    for argv, field in [(["--checkpoint", "r", "--stride", "x"], "stride"), (["--checkpoint", "r", "--bogus", "1"],
                                                                           "--bogus"), ([], "checkpoint")]:
        with pytest.raises(ConfigError, match=field) as err:
            parse(EvalArgs, argv)
        assert "\n" not in str(err.value)


@pytest.fixture
def sandbox(tmp_path):
    """An empty token cache and an empty working directory; the environment without the tuned malloc
    settings, so every command re-executes itself first, as a user's shell would have it."""
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cache.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in TUNED and k != "CHIMERA_MALLOC"}
    env["CHIMERA_CACHE"] = str(cache)

    def run(program: list[str], *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*program, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

    run.cache, run.cwd = cache, cwd
    return run


BAD = [
    ("train", ["--model", "moe", "--model.moe.top_k", "9", "--model.moe.num_experts", "4"], "model.moe.top_k=9"),
    ("train", ["--model", "dense", "--train.batch_size", "0"], "train.batch_size=0"),
    ("train", ["--model", "dense", "--train.steps", "-5"], "train.steps=-5"),
    ("train", ["--model", "dense", "--data.corpus", "no_such_corpus"], "data.corpus"),
    ("train", ["--model", "dense", "--data.fallback", "no_such_corpus"], "data.fallback"),
    ("eval", ["--checkpoint", "no/such/run", "--stride", "4"], "checkpoint"),
    ("eval", ["--checkpoint", "x", "--stride", "four"], "stride"),
    ("experiment", ["time_indexed", "--train.steps", "-5"], "train.steps=-5"),
    ("experiment", ["time_indexed", "--data.corpus", "no_such_corpus"], "data.corpus"),
]


@pytest.mark.parametrize(("command", "args", "field"), BAD, ids=[f"{c} {' '.join(a[-2:])}" for c, a, _ in BAD])
def test_bad_input_fails_with_one_line_before_any_work(sandbox, command, args, field):
    proc = sandbox([sys.executable, str(REPO / "scripts" / f"{command}.py")], *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and field in last
    assert list(sandbox.cache.iterdir()) == [] and list(sandbox.cwd.iterdir()) == []  # nothing read or written


def test_console_command_reexecutes_and_fails_the_same_way(sandbox):
    proc = sandbox([str(console("train"))], "--model", "moe", "--model.moe.top_k", "9", "--model.moe.num_experts", "4")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: model.moe.top_k=9 must be between 1 and model.moe.num_experts=4"


def test_debug_shows_the_traceback(sandbox):
    proc = sandbox([sys.executable, str(REPO / "scripts" / "train.py")], "--train.steps", "-5", "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: train.steps=-5" in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["script", "console"])
@pytest.mark.slow
def test_every_command_answers_help(sandbox, command, kind):
    program = [sys.executable, str(REPO / "scripts" / f"{command}.py")] if kind == "script" else [str(console(command))]
    proc = sandbox(program, "--help")
    assert proc.returncode == 0, proc.stderr
    usage = proc.stdout.split("usage:")[0]  # the command module's docstring, then the parser's flags
    assert f"chimera-{command.replace('_', '-')}" in usage and f"scripts/{command}.py" in usage


RETIRED = {"experiment_ti"}  # quoted in the docs as history: replaced by `scripts/experiment.py time_indexed`


def test_every_documented_command_is_one_whose_help_is_tested():
    """Every command the README, docs/*.md and the Makefile show (``scripts/NAME.py``, ``chimera-NAME``, and the
    bench after ``bench``) is one that the --help tests above run: a script, a console command, a bench."""
    text = "\n".join(p.read_text() for p in [REPO / "README.md", REPO / "Makefile", *(REPO / "docs").glob("*.md")])
    documented = set(re.findall(r"\bscripts/(\w+)\.py", text)) | {
        name.replace("-", "_") for name in re.findall(r"\bchimera-([a-z]+(?:-[a-z]+)*)", text)}
    scripts = {path.stem for path in (REPO / "scripts").glob("*.py")}
    assert documented - RETIRED == set(COMMANDS) == scripts and not RETIRED & scripts
    assert set(re.findall(r"(?:scripts/bench\.py|chimera-bench) ([a-z]\w*)", text)) <= set(BENCHES)
    consoles = re.findall(r"^(chimera-[a-z-]+) = ", (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert sorted(consoles) == sorted(f"chimera-{c.replace('_', '-')}" for c in COMMANDS)


@pytest.mark.slow
def test_eval_reproduces_the_loops_last_validation_loss(tiny_config, tmp_path, capsys):
    from chimera_jax.cli import eval as eval_cli
    from chimera_jax.train.loop import train
    from chimera_jax.train.metrics import read_metrics

    cfg = tiny_config("--train.steps", "10")
    train(cfg)
    last_val = read_metrics(cfg.run_dir, "validation")[-1]
    capsys.readouterr()
    out = tmp_path / "eval.json"
    result = eval_cli.main(["--checkpoint", str(cfg.run_dir), "--split", "validation", "--max-windows",
                            str(cfg.train.eval_batches * cfg.train.batch_size), "--batch-size",
                            str(cfg.train.batch_size), "--json", str(out)])
    assert result["loss"] == pytest.approx(last_val["loss"], rel=1e-6)
    assert json.loads(out.read_text())["tokens_scored"] == result["tokens_scored"]
    assert capsys.readouterr().out.startswith("bbc_news/validation: ")

    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint", str(cfg.run_dir),
                          "--stride", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error: stride") and "\n" not in bad.stderr.strip()


@pytest.mark.slow
def test_export_then_eval_hf_and_compare_a_run(tiny_config, tmp_path):
    """The torch-side commands end to end: a run exported, scored in torch, and tabled beside its JAX score."""
    pytest.importorskip("torch")
    from chimera_jax.cli import compare, eval_hf, export_hf
    from chimera_jax.train.loop import train

    cfg = tiny_config("--train.steps", "2")
    train(cfg)
    folder = export_hf.main(["--checkpoint", str(cfg.run_dir), "--out", str(tmp_path / "hf")])
    protocol = ["--data", "bbc_news", "--split", "validation", "--seq-len", "32", "--max-windows", "4",
                "--repeats", "1"]
    torch_result = eval_hf.main(["--hf", str(cfg.run_dir), *protocol])
    results = compare.main([str(cfg.run_dir), "--hf", str(folder), "no/such-model", *protocol,
                            "--json", str(tmp_path / "t.json")])
    assert [r["model"] for r in results] == [str(cfg.run_dir), str(folder), "no/such-model"]
    assert "error" in results[2] and results[0]["framework"] == "jax" and results[1]["framework"] == "torch"
    for r in results[:2]:  # one stream: the same tokens, bytes and (within f32) loss in both frameworks
        assert (r["tokens_scored"], r["bytes_scored"]) == (torch_result["tokens_scored"], torch_result["bytes_scored"])
        assert r["loss"] == pytest.approx(torch_result["loss"], abs=1e-4)
    assert len(json.loads((tmp_path / "t.json").read_text())["results"]) == 3


@pytest.mark.parametrize("name", [None, *BENCHES])
def test_bench_help_is_the_overview_or_the_named_benchs_alone(name, monkeypatch, capsys):
    monkeypatch.setenv("CHIMERA_MALLOC", "off")  # no re-execution of the test process
    monkeypatch.setattr(sys, "argv", ["scripts/bench.py", *([name] if name else []), "--help"])
    overview = chimera_jax.bench.__doc__
    if name is None:
        entry.launch("bench")
        assert capsys.readouterr().out == overview + "\n"  # once, naming every bench
        assert all(f"chimera-bench {b} [" in overview for b in BENCHES)
        return
    with pytest.raises(SystemExit) as exit_:  # the bench's parser lists its flags and exits
        entry.launch("bench")
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(bench_module(name).__doc__) and "usage:" in out
    assert overview.splitlines()[0] not in out


@pytest.mark.slow
def test_moe_bench_runs_every_section_and_times_one_layer_once(tmp_path, capsys, monkeypatch):
    """A smoke run of ``chimera-bench moe --quick``; the train steps (compiles of seconds each) are recorded instead
    of timed: one layer scanned or unrolled is one program, timed once."""
    from chimera_jax.bench import moe as bench_moe

    steps = []

    def time_train_step(cfg, **timing) -> float:
        steps.append((cfg.model.moe.enabled, cfg.model.n_layers, cfg.model.scan_unroll))
        return 2.0

    monkeypatch.setattr(bench_moe, "time_train_step", time_train_step)
    tiny = ["--quick", "--repeats", "1", "--train-seq", "8", "--train-batch", "1"]
    result = bench.main(["moe", *tiny, "--blocks", "4", "--train-layers", "1", "--json", str(tmp_path / "moe.json")])
    assert json.loads((tmp_path / "moe.json").read_text()) == result
    assert set(result["layer"]["tiny E4 k2 16/32 2x8"]) == {"dense", "capacity", "dropless", "ffn"}
    assert set(result["grouped"]["tiny E4 k2 16/32 2x8"]) == {"ragged_dot", "fair share (CPU default)", "blocks 4"}
    assert steps == [(True, 1, 1), (False, 1, 1)] and list(result["train"]) == ["scan = unrolled"]
    assert capsys.readouterr().out.count("(scan = unrolled)") == 2  # the MoE row and the dense row

    steps.clear()
    result = bench.main(["moe", *tiny, "--train-layers", "2", "--skip-layers"])
    assert steps == [(True, 2, 1), (False, 2, 1), (True, 2, 2), (False, 2, 2)] and "layer" not in result
    assert result["train"]["unrolled"] == {"moe_ms": 2.0, "dense_ms": 2.0, "moe_over_dense": 1.0}


def test_commands_check_their_arguments_before_jax_is_imported():
    """A bad command line costs a fraction of a second: the command modules that parse and check load JAX lazily."""
    light = ("entry", "train", "eval", "eval_hf", "compare", "export_hf", "experiment", "generate")
    code = f"import sys\nfor m in {light!r}: __import__('chimera_jax.cli.' + m)\nprint('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
