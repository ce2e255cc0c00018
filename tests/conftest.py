"""Shared fixtures (tiny run configs built through the real YAML + dotted-override path) and the compilation cache.

Many tests compile the same programs (every tiny run's train step: the training loop drops its compiled code when
a run ends), so compiled programs go to a persistent cache shared by the session's workers and its multi-device
processes and the commands it runs: ``$CHIMERA_TEST_XLA_CACHE``, or a fresh temporary folder per session, removed
at its end. ``make test-fast`` keeps one across sessions, so a re-run compiles only what changed. An entry's key
is the program, the XLA flags and the JAX version: an edit never reuses a stale program.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import TINY_YAML

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if not os.environ.get("CHIMERA_TEST_XLA_CACHE"):  # this process starts the session: xdist workers inherit it
    os.environ["CHIMERA_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="chimera_jax-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["CHIMERA_TEST_XLA_CACHE"], ignore_errors=True)
# JAX's environment variables, read when it is imported: the commands the tests run in subprocesses use the cache
# too. This process may have imported JAX already (pytest's plugins): set here as well.
CACHE_SETTINGS = {"jax_compilation_cache_dir": os.environ["CHIMERA_TEST_XLA_CACHE"],
                  "jax_persistent_cache_min_compile_time_secs": 0,  # tiny programs too: the suite is made of them
                  "jax_persistent_cache_min_entry_size_bytes": 0}
os.environ.update({name.upper(): str(value) for name, value in CACHE_SETTINGS.items()})

import jax  # noqa: E402

for name, value in CACHE_SETTINGS.items():
    jax.config.update(name, value)

from chimera_jax.config import RunConfig, load_config  # noqa: E402

# Seconds each file takes on the 2-core machine (rounded, from `make test`'s durations, 2026-12-08). Each pytest
# worker takes whole files (--dist loadfile), in this order (--no-loadscope-reorder): the longest first, so the
# session does not end with one worker running a long file alone. A file not listed counts as FILE_SECONDS_DEFAULT;
# a stale figure costs only speed.
FILE_SECONDS = {
    "test_model.py": 130, "test_cli.py": 120, "test_decode.py": 120, "test_moe.py": 90, "test_hf_parity.py": 80,
    "test_study.py": 80, "test_finetune.py": 70, "test_train.py": 65, "test_mesh.py": 60, "test_bench_train.py": 55,
    "test_notebook.py": 55, "test_depth.py": 50, "test_time_indexed.py": 45, "test_generate_cli.py": 40,
    "test_resume.py": 40, "test_eval.py": 30, "test_checkpoint.py": 30, "test_lm_eval.py": 30,
    "test_long_context.py": 28, "test_ssm.py": 26, "test_data.py": 25, "test_expert_parallel.py": 24,
    "test_two_process.py": 24, "test_cli_errors.py": 21, "test_attention.py": 20, "test_loss.py": 19,
    "test_eval_parity.py": 18, "test_on_a_mesh.py": 18, "test_plot_experts.py": 17, "test_tokenizer.py": 15,
    "test_bridge.py": 11, "test_config.py": 10,
}
FILE_SECONDS_DEFAULT = 20


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """The longest files first (FILE_SECONDS); within a file, the tests' own order."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, FILE_SECONDS_DEFAULT))


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One token cache per test session: each corpus is tokenized once."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture
def tiny_config(tmp_path, token_cache):
    """``tiny_config("--train.steps", "5", ...)`` -> a RunConfig whose run_dir is in tmp_path."""

    def make(*overrides: str, run_dir: Path | None = None) -> RunConfig:
        path = tmp_path / "tiny.yaml"
        path.write_text(TINY_YAML)
        args = ["--data.cache_dir", str(token_cache), "--train.run_dir", str(run_dir or tmp_path / "run"),
                *overrides]
        return load_config(path, args)

    return make


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_code():
    """After each test file, JAX's compiled executables go: XLA:CPU maps each one's code on its own, and a worker
    that keeps them all reaches vm.max_map_count and crashes in XLA's compiler (train/loop.py does the same)."""
    yield
    jax.clear_caches()
