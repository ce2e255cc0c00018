"""The Markdown table every report prints: benchmarks, the comparison table, studies, lm-eval's summary."""

from __future__ import annotations

from collections.abc import Sequence


def cell(x: object) -> str:
    """A number at a precision that reads at a glance (thousands separated); anything else as ``str``."""
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 1 else f"{x:.1f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def table(head: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """``head`` above ``rows``; ``align`` is ``l`` or ``r`` per column, by default ``r`` where every cell of the
    column is a number (none without rows). Strings are written as given, so a caller that formats its own
    numbers names the columns to right-align."""
    if align is None:
        numeric = [bool(rows) and all(isinstance(row[i], int | float) for row in rows) for i in range(len(head))]
        align = "".join("r" if n else "l" for n in numeric)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(map(cell, row)) + " |" for row in rows)]
    return "\n".join(lines)
