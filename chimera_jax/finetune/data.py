"""Fine-tuning records -> fixed-shape token rows with loss masks, through one template; bad records counted.

Every record becomes ``TEMPLATE.format(prompt=...)`` followed by the response and the end marker: the
tokenizer's EOS id, or the encoded document separator when it has none (the byte tokenizer), the marker that
ends a document in pretraining, so the model learns where a response stops.

Padding, not packing: each record is one row of ``seq_len`` tokens (inputs = the ids but the last, targets =
the ids but the first), padded with id 0 on the right. The mask is 1 where the target is a response token or
the end marker, 0 on the prompt, the template and the padding, so the loss never reads a pad or a prompt.
A record whose templated prompt leaves no room for one response token is rejected (``prompt too long``);
a longer response is cut to fit, losing its end marker, and counted as truncated. Records missing a field,
with an empty response, a chosen equal to its rejected, or that are not JSON objects are rejected;
``DataReport.line`` says how many of each.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chimera_jax.config import ConfigError, FinetuneConfig
from chimera_jax.data import DOC_SEPARATOR
from chimera_jax.tokenizer import Tokenizer

TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class Rejected(ValueError):
    """A record that cannot be used; the message is the reason counted in the report."""


class Rows(NamedTuple):
    """Templated records as rows: ``inputs``, ``targets`` int32 and ``mask`` float32, each ``[N, seq_len]``."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray

    def take(self, index: np.ndarray) -> Rows:
        return Rows(*(a[index] for a in self))


@dataclass
class DataReport:
    """What became of a source's records: read, used (of which truncated), rejected by reason."""

    source: str
    read: int = 0
    used: int = 0
    truncated: int = 0
    rejected: Counter = field(default_factory=Counter)

    def line(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.rejected.items()))
        return (f"{self.source}: {self.read} read, {self.used} used ({self.truncated} truncated), "
                f"{sum(self.rejected.values())} rejected" + (f" ({reasons})" if reasons else ""))


def end_ids(tokenizer: Tokenizer) -> list[int]:
    """The end-of-response marker: EOS, or the document separator pretraining joined documents with."""
    return [tokenizer.eos_id] if tokenizer.eos_id is not None else tokenizer.encode(DOC_SEPARATOR)


def encode(tokenizer: Tokenizer, prompt: str, response: str, seq_len: int) -> tuple[tuple[np.ndarray, ...], bool]:
    """One record as ``(inputs, targets, mask)`` rows of ``seq_len`` and whether its response was truncated."""
    context = tokenizer.encode(TEMPLATE.format(prompt=prompt))
    answer = tokenizer.encode(response) + end_ids(tokenizer)
    if len(context) > seq_len:  # the first response token's target would fall outside the row
        raise Rejected("prompt too long")
    room = seq_len + 1 - len(context)  # ids the row holds after the context (inputs and targets overlap by one)
    truncated = len(answer) > room
    ids = np.asarray(context + answer[:room], np.int32)
    inputs, targets, mask = (np.zeros(seq_len, np.int32), np.zeros(seq_len, np.int32), np.zeros(seq_len, np.float32))
    inputs[: len(ids) - 1], targets[: len(ids) - 1] = ids[:-1], ids[1:]
    mask[len(context) - 1 : len(ids) - 1] = 1.0  # targets from the first response token on
    return (inputs, targets, mask), truncated


def text_field(record: object, name: str) -> str:
    if not isinstance(record, dict):
        raise Rejected("not a JSON object")
    if name not in record or record[name] is None:
        raise Rejected(f"missing field '{name}'")
    if not isinstance(record[name], str):
        raise Rejected(f"field '{name}' is not text")
    return record[name]


# Files that ``datasets.load_dataset`` reads by its builder of that name; any other file is read as JSONL.
DATASET_FILES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def read_records(source: str, split: str, limit: int | None, subset: str | None = None) -> list[object]:
    """The raw records of a JSONL file, or of an HF dataset (``read_dataset``): a folder, a parquet / csv / arrow
    file, or a hub name, with its ``subset`` (the dataset's configuration) when it has several."""
    path = Path(source)
    if path.is_file() and path.suffix not in DATASET_FILES:
        return read_jsonl(path, limit)
    if path.suffix in (".jsonl", ".json", *DATASET_FILES) and not path.exists():
        raise ConfigError(f"finetune.data: no such file {source}")
    if subset is not None and path.is_file():
        raise ConfigError(f"finetune.subset={subset}: {source} is one file, with no subsets")
    return read_dataset(source, split, limit, subset)


def read_jsonl(path: Path, limit: int | None) -> list[object]:
    """One record a line; a line that is not JSON is kept as None, to be counted as rejected."""
    records = []
    for line in [line for line in path.read_text().splitlines() if line.strip()][:limit]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append(None)
    return records


def read_dataset(source: str, split: str, limit: int | None, subset: str | None = None) -> list[object]:
    """``split`` of ``datasets.load_dataset``: a local folder (its files' format, splits and subsets inferred, as for
    a hub dataset) or file (its one split is ``train``) works offline, a name needs the network or the HF cache."""
    path = Path(source)
    if path.is_file():
        args, kwargs = (DATASET_FILES[path.suffix],), {"data_files": str(path)}
    else:  # name: the dataset's configuration (None: its only or default one)
        args, kwargs = (source,), {"name": subset}
    try:
        import datasets

        dataset = datasets.load_dataset(*args, split=split, **kwargs)
    except Exception as err:  # noqa: BLE001 - offline, unknown name, bad split: all one line for the user
        where = f"split {split}" + (f", subset {subset}" if subset is not None else "")
        raise ConfigError(f"finetune.data: loading {source} ({where}) as an HF dataset failed: "
                          f"{' '.join(str(err).split())}") from None
    return list(dataset.select(range(min(limit, len(dataset)))) if limit else dataset)


def shared_prompt(chosen: str, rejected: str) -> str:
    """The common prefix of two texts, up to the whitespace before their last shared word (hh-rlhf's
    ``...\n\nAssistant:``). Where it ends does not change DPO's loss: a shared token's log-probability is the
    same in both responses and cancels in the margin."""
    prefix = os.path.commonprefix([chosen, rejected])
    end = max((i for i, c in enumerate(prefix) if c.isspace()), default=0)
    return prefix[:end].rstrip() if end else ""


def prompt_and_responses(record: object, cfg: FinetuneConfig) -> tuple[str, list[str]]:
    """A record's prompt (with its input, if configured) and its responses (``response_fields``), or Rejected."""
    names = response_fields(cfg)
    responses = [text_field(record, name) for name in names]
    if cfg.prompt_field:
        prompt = text_field(record, cfg.prompt_field)
    else:  # whole conversations: the prompt is what both share, cut before a whitespace so no word is split
        prompt = shared_prompt(*responses)
        responses = [r[len(prompt):] for r in responses]
    if cfg.input_field and isinstance(record, dict) and str(record.get(cfg.input_field) or "").strip():
        prompt = f"{prompt}\n\n{text_field(record, cfg.input_field)}"
    for name, response in zip(names, responses, strict=True):
        if not response.strip():
            raise Rejected(f"empty {name}")
    if len(set(responses)) < len(responses):  # a pair with nothing to prefer: its loss has no gradient
        raise Rejected("chosen equals rejected")
    return prompt, responses


def response_fields(cfg: FinetuneConfig) -> tuple[str, ...]:
    """The fields each templated row's response comes from: one row for sft, a chosen and a rejected for dpo."""
    return (cfg.response_field,) if cfg.stage == "sft" else (cfg.chosen_field, cfg.rejected_field)


def encode_records(records: list[object], cfg: FinetuneConfig, tokenizer: Tokenizer, seq_len: int,
                   source: str) -> tuple[tuple[Rows, ...], DataReport]:
    """Each usable record as one row per response field (``response_fields``), and the report of the others."""
    report = DataReport(source, read=len(records))
    names = response_fields(cfg)
    encoded: list[list[tuple[np.ndarray, ...]]] = [[] for _ in names]
    for record in records:
        try:
            prompt, responses = prompt_and_responses(record, cfg)
            rows = [encode(tokenizer, prompt, response, seq_len) for response in responses]
        except Rejected as why:
            report.rejected[str(why)] += 1
            continue
        report.used += 1
        report.truncated += any(truncated for _, truncated in rows)
        for out, (row, _) in zip(encoded, rows, strict=True):
            out.append(row)
    if not report.used:
        raise ConfigError(f"finetune.data: no usable records in {report.line()}")
    return tuple(Rows(*(np.stack(column) for column in zip(*rows, strict=True))) for rows in encoded), report


def split_validation(rows: tuple[Rows, ...], fraction: float) -> tuple[tuple[Rows, ...], tuple[Rows, ...]]:
    """``(train, validation)``: the last ``fraction`` of the records (at least one) held out."""
    n = len(rows[0].inputs)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ConfigError(f"finetune.val_fraction={fraction}: {n} usable record(s) leave none to train on")
    head, tail = np.arange(n - n_val), np.arange(n - n_val, n)
    return tuple(r.take(head) for r in rows), tuple(r.take(tail) for r in rows)


def step_rows(n: int, count: int, seed: int, step: int) -> np.ndarray:
    """The record indices of batch ``step`` (``count`` rows): epochs over the ``n`` records, each in the order
    ``default_rng([seed, epoch])`` shuffles them, so a batch is a pure function of the step (exact resume)."""
    positions = step * count + np.arange(count)
    epochs = positions // n
    orders = {e: np.random.default_rng([seed, e]).permutation(n) for e in np.unique(epochs).tolist()}
    return np.array([orders[e][p] for e, p in zip(epochs.tolist(), (positions % n).tolist(), strict=True)])
