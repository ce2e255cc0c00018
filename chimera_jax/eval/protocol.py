"""The evaluation protocol: which text, which tokenizer and which windows a figure was measured on.

Every evaluation in the project (``scripts/eval.py``, ``scripts/compare.py``, ``scripts/eval_hf.py``, the
training loop's validation) takes one of these, so a perplexity or bits/byte never travels without
the settings that make it meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalProtocol:
    corpus: str | None = None  # None: the corpus the run trained on
    split: str = "validation"
    tokenizer: str | None = None  # None: the model's own (a chimera run's data.tokenizer, an HF model's)
    seq_len: int | None = None  # window length; None: the run's data.seq_len
    stride: int | None = None  # None: seq_len (non-overlapping windows); smaller: sliding windows
    max_windows: int | None = None  # score only the first N windows
    batch_size: int = 8  # windows per forward pass
    data_dir: str | None = None  # local copy of a hub corpus
