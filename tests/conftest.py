"""Shared fixtures: tiny run configs built through the real YAML + dotted-override path."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest
from helpers import TINY_YAML

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from chimera_jax.config import RunConfig, load_config  # noqa: E402


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
