"""Metrics sinks: one JSON line per logged step and TensorBoard event files, from the same dict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def flatten_metrics(metrics: dict, prefix: str = "") -> tuple[dict, dict]:
    """Split nested metrics into scalars (``name``, per-layer ``name/layer{i}`` plus their mean) and
    arrays kept whole for the JSONL file (per-layer, per-expert loads)."""
    scalars, arrays = {}, {}
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            s, a = flatten_metrics(value, f"{key}/")
            scalars.update(s)
            arrays.update(a)
            continue
        value = np.asarray(value, dtype=np.float64)
        if value.ndim == 0:
            scalars[key] = float(value)
        elif value.ndim == 1:
            scalars[key] = float(value.mean())
            scalars.update({f"{key}/layer{i}": float(v) for i, v in enumerate(value)})
        else:
            arrays[key] = value.tolist()
    return scalars, arrays


class MetricsLogger:
    """Writes ``metrics.jsonl`` and ``tb/`` in the run directory. On resume from step s, lines logged
    after s by the interrupted run are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        kept = [line for line in read_metrics(self.path) if line["step"] <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter  # lazily: it imports torch whenever torch is installed

        self.tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, metrics: dict, split: str = "train") -> dict:
        scalars, arrays = flatten_metrics(metrics)
        self.file.write(json.dumps({"step": step, "split": split, **scalars, **arrays}) + "\n")
        self.file.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(f"{split}/{name}", value, step)
        return scalars

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def read_metrics(path: str | Path, split: str | None = None) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if split is None or line.get("split") == split]


def metrics_at(path: str | Path, step: int, split: str) -> dict:
    """The ``split`` metrics logged at ``step`` (``{}`` if none were): a finished run's last figures, read back."""
    return next((line for line in read_metrics(path, split) if line["step"] == step), {})
