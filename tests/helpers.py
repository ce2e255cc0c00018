"""What test modules import by name (``from helpers import TINY_YAML``): tests/ is on ``sys.path`` through
pyproject's ``pythonpath``. Fixtures stay in conftest.py; a conftest is not a module to import from (pytest loads
tests/conftest.py and tests/multidevice/conftest.py under the one name ``conftest``)."""

from __future__ import annotations

TINY_YAML = """
name: tiny
model: {d_model: 32, n_layers: 2, n_heads: 2}
data: {corpus: bbc_news, tokenizer: byte, seq_len: 32}
optim: {lr: 3.0e-3, warmup_steps: 5}
train: {steps: 20, batch_size: 4, log_every: 1, eval_every: 10, eval_batches: 2, checkpoint_every: 10,
        progress: false}
"""
