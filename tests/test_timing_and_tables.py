"""The timing helper and the table writer every bench and report shares (chimera_jax/timing.py, markdown.py)."""

from __future__ import annotations

import itertools

from chimera_jax.markdown import table
from chimera_jax.timing import time_ms


def test_time_ms_warms_up_untimed_then_times_each_repeat_per_call():
    calls = []
    ticks = itertools.count()  # a clock that advances 1 s per reading
    times = time_ms(lambda: calls.append(1), 3, warmup=2, calls=4, clock=lambda: float(next(ticks)))
    assert len(calls) == 2 + 3 * 4
    assert times == [1000 / 4] * 3  # two readings per repeat, one second apart, over 4 calls


def test_table_right_aligns_numeric_columns_and_formats_numbers_to_read_at_a_glance():
    text = table(["name", "n", "ms", "note"], [["a", 12345, 0.01234, "x"], ["b", 7, 1234.4, 3]])
    assert text.splitlines() == ["| name | n | ms | note |", "|---|---:|---:|---|",
                                 "| a | 12,345 | 0.0123 | x |", "| b | 7 | 1,234 | 3 |"]
    assert table(["a", "b"], [], align=None).splitlines()[1] == "|---|---|"  # no rows: nothing is numeric
    assert table(["a", "b"], [["1.0M", "x"]], align="rl").splitlines()[1] == "|---:|---|"
