"""Turn results into Dagster metadata an engineer can act on."""

from typing import Any, Iterable

import dagster as dg

from reconciliation.marts_ddl import markdown_table


def md(rows: Iterable[dict[str, Any]], columns: list[str] | None = None, limit: int = 20) -> dg.MetadataValue:
    """A markdown table of dict rows (the first ``limit``), for ``MaterializeResult`` metadata."""
    rows = list(rows)[:limit]
    columns = columns or (list(rows[0]) if rows else [])
    return dg.MetadataValue.md(markdown_table(columns, [[r.get(c) for c in columns] for r in rows]))
