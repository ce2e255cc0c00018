"""Figures over seeds: mean and spread of one metric, and an arm's paired difference from the baseline.

The spread is the sample standard deviation (n - 1). Differences are paired by seed: seed k of every arm
draws the same training batches (data/batches.py draws windows from ``(seed, step)``), so arm - baseline
at the same seed removes the data order's share of the noise. The 95% interval is Student's t over the
per-seed differences; with one seed there is no spread and no interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # None with one value
    n: int


@dataclass(frozen=True)
class Difference:
    mean: float  # arm - baseline, mean over the paired seeds
    low: float | None  # 95% t-interval; None with one seed
    high: float | None
    n: int
    # |mean| is larger than the larger of the two arms' seed-to-seed std; None with one seed
    exceeds_spread: bool | None

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.low is None else self.low > 0 or self.high < 0


def summarise(values: list[float | None]) -> Summary | None:
    """Mean and std of the values that exist (a metric a run could not measure is None); None if none do."""
    xs = np.array([v for v in values if v is not None], dtype=np.float64)
    if xs.size == 0:
        return None
    return Summary(float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else None, int(xs.size))


def paired_difference(arm: dict[int, float | None], baseline: dict[int, float | None]) -> Difference | None:
    """``arm - baseline`` over the seeds both have (``{seed: value}``), with its 95% t-interval."""
    seeds = sorted(s for s in arm.keys() & baseline.keys() if arm[s] is not None and baseline[s] is not None)
    if not seeds:
        return None
    d = np.array([arm[s] - baseline[s] for s in seeds], dtype=np.float64)
    n = d.size
    if n == 1:
        return Difference(float(d[0]), None, None, 1, None)
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    spread = max(np.std([arm[s] for s in seeds], ddof=1), np.std([baseline[s] for s in seeds], ddof=1))
    return Difference(float(d.mean()), float(d.mean() - half), float(d.mean() + half), n,
                      bool(abs(d.mean()) > spread))


def as_dict(x: Summary | Difference | None) -> dict | None:
    if x is None:
        return None
    out = asdict(x)
    if isinstance(x, Difference):
        out["excludes_zero"] = x.excludes_zero
    return out
