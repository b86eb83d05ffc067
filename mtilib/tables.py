"""Markdown tables without extra dependencies (reports, docs/results.md, docs/benchmarks.md)."""

from __future__ import annotations

import math


def _cell(value, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value).replace("|", "\\|")


def markdown_table(rows, columns: list[str] | None = None, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured markdown table from a list of dicts or a pandas DataFrame.

    ``columns`` selects and orders columns (default: the keys of the first row). Missing values and
    NaN print as "–", floats with ``floatfmt``.
    """
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines)
