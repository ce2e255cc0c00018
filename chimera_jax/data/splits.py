"""Split rules: which documents of a corpus belong to which split, and how a split's documents join into one text.

Corpora without official splits are split deterministically by document (every 20th document goes to
validation, the next to test: 90/5/5), or by character ranges when there are too few documents.
"""

from __future__ import annotations

from collections.abc import Sequence

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation"}
HOLDOUT_EVERY = 20  # document i goes to validation when i % 20 == 18, to test when i % 20 == 19
SPLIT_RULE_VERSION = 1  # part of every cache key: bump it when a split rule or a corpus reader changes
DOC_SEPARATOR = "\n\n"  # joins documents in load_text; a tokenizer's EOS id stands for it in a token stream


def canonical_split(split: str) -> str:
    """``valid``/``val`` -> ``validation``; anything else unknown is an error."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or 'valid')")
    return name


def split_of_index(i: int) -> str:
    """The split of the i-th document of a corpus without official splits (90/5/5)."""
    r = i % HOLDOUT_EVERY
    return "validation" if r == HOLDOUT_EVERY - 2 else "test" if r == HOLDOUT_EVERY - 1 else "train"


def select_split(items: Sequence, split: str) -> list:
    """The items whose position puts them in ``split``: a split by document, stable across runs."""
    return [x for i, x in enumerate(items) if split_of_index(i) == split]


def char_range_split(text: str, split: str) -> str:
    """90/5/5 of one long text by character ranges, cut at line starts so no line is split."""

    def cut(fraction: float) -> int:
        i = text.find("\n", int(len(text) * fraction))
        return len(text) if i < 0 else i + 1

    a, b = cut(0.90), cut(0.95)
    return {"train": text[:a], "validation": text[a:b], "test": text[b:]}[split]
