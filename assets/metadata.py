"""Small helpers that turn results into Dagster metadata an engineer can act on."""

from __future__ import annotations

from typing import Any, Iterable

import dagster as dg


def markdown_table(rows: Iterable[dict[str, Any]], columns: list[str] | None = None, limit: int = 20) -> str:
    rows = list(rows)[:limit]
    if not rows:
        return "_none_"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        text = "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")[:120]

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def md(rows: Iterable[dict[str, Any]], columns: list[str] | None = None, limit: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(rows, columns, limit))
