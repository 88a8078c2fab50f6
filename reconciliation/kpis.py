"""Run KPIs (``marts.kpis``: one row per run and KPI), read back from the marts.

Definitions (decisions where the spec is silent):

* ``drift_rate``: item-locations of ``marts.inventory_drift`` whose ``status`` is ``drift``,
  over all its item-locations (unverifiable ones included in the denominator); null when
  there are none. ``drift_count``, ``unverifiable_count`` and ``item_locations_reconciled``
  give the parts.
* ``drift_value_total``: Σ drift value of the *pairs* whose status is ``drift`` (a key
  drifting against both systems counts twice: two problems).
* ``alignment_rate``: ``aligned`` item-locations over those with a forecast in the horizon
  (``has_forecast``); null when none has one.
* ``open_exceptions`` and ``open_exceptions_<severity>``; ``exceptions_opened`` /
  ``_reopened`` / ``_resolved``: lifecycle events of this run.
* ``files_rejected``: file versions the ingestion of this run (``ingest.manifest.run_as_of
  = as_of``) rejected; ``files_rejected_open``: open ``FEED_REJECTED`` exceptions (rejected
  files still hurting the run, whichever run read them).
* ``extra``: any further ``{kpi: number}`` from the caller (files accepted, payload
  batches, …); it overrides a KPI of the same name.

Writing is idempotent per ``run_as_of``: the run's rows are replaced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import duckdb

from contracts.settings import Settings
from contracts.warehouse import table_exists

from .marts_ddl import ensure_marts, markdown_table, plain, run_clock, transaction

_KPI_SQL = """
SELECT * FROM (
    SELECT
        (SELECT count(*) FILTER (WHERE status = 'drift') / nullif(count(*), 0) FROM marts.inventory_drift)
            AS drift_rate,
        (SELECT coalesce(sum(drift_value_wms) FILTER (WHERE status_wms = 'drift'), 0)
              + coalesce(sum(drift_value_planning) FILTER (WHERE status_planning = 'drift'), 0)
         FROM marts.inventory_drift) AS drift_value_total,
        (SELECT count(*) FROM marts.inventory_drift) AS item_locations_reconciled,
        (SELECT count(*) FILTER (WHERE status = 'drift') FROM marts.inventory_drift) AS drift_count,
        (SELECT count(*) FILTER (WHERE status = 'unverifiable') FROM marts.inventory_drift) AS unverifiable_count,
        (SELECT count(*) FILTER (WHERE has_forecast AND status = 'aligned')
                / nullif(count(*) FILTER (WHERE has_forecast), 0)
         FROM marts.forecast_order_alignment) AS alignment_rate,
        (SELECT count(*) FROM marts.forecast_order_alignment) AS item_locations_planned,
        (SELECT count(*) FILTER (WHERE status = 'shortage_in_lead_time') FROM marts.forecast_order_alignment)
            AS shortage_count,
        (SELECT count(*) FILTER (WHERE status = 'needs_order') FROM marts.forecast_order_alignment)
            AS needs_order_count,
        (SELECT count(*) FILTER (WHERE status = 'excess') FROM marts.forecast_order_alignment) AS excess_count,
        (SELECT count(*) FROM marts.replenishment_proposal) AS proposals,
        (SELECT coalesce(sum(quantity), 0) FROM marts.replenishment_proposal) AS proposal_qty_total,
        (SELECT count(*) FILTER (WHERE status = 'open') FROM marts.exceptions) AS open_exceptions,
        (SELECT count(*) FILTER (WHERE status = 'open' AND severity = 'high') FROM marts.exceptions)
            AS open_exceptions_high,
        (SELECT count(*) FILTER (WHERE status = 'open' AND severity = 'medium') FROM marts.exceptions)
            AS open_exceptions_medium,
        (SELECT count(*) FILTER (WHERE status = 'open' AND severity = 'low') FROM marts.exceptions)
            AS open_exceptions_low,
        (SELECT count(*) FILTER (WHERE status = 'open' AND exception_type = 'FEED_REJECTED') FROM marts.exceptions)
            AS files_rejected_open,
        (SELECT count(*) FILTER (WHERE event = 'opened') FROM marts.exception_events WHERE "at" = $as_of)
            AS exceptions_opened,
        (SELECT count(*) FILTER (WHERE event = 'reopened') FROM marts.exception_events WHERE "at" = $as_of)
            AS exceptions_reopened,
        (SELECT count(*) FILTER (WHERE event = 'resolved') FROM marts.exception_events WHERE "at" = $as_of)
            AS exceptions_resolved
)
"""


def compute_kpis(con: duckdb.DuckDBPyConnection, as_of: datetime) -> dict[str, float | None]:
    cur = con.execute(_KPI_SQL, {"as_of": as_of})
    names = [d[0] for d in cur.description]
    values = dict(zip(names, cur.fetchone()))
    if table_exists(con, "ingest.manifest"):
        values["files_rejected"] = con.execute(
            "SELECT count(*) FROM ingest.manifest WHERE outcome = 'rejected' AND run_as_of = $as_of", {"as_of": as_of}
        ).fetchone()[0]
    else:
        values["files_rejected"] = 0
    return {k: plain(v) for k, v in values.items()}


def build_kpis(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime | str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Replace this run's rows of ``marts.kpis``; returns the KPIs and a markdown table."""
    del settings  # KPIs are read back from the marts; kept for a uniform signature
    clock = run_clock(as_of)
    with transaction(con):
        ensure_marts(con)
        kpis = compute_kpis(con, clock.as_of)
        for key, value in (extra or {}).items():
            value = plain(value)
            if isinstance(value, str):
                raise ValueError(f"KPI {key!r} must be a number, got {value!r}")
            kpis[str(key)] = value
        con.execute("DELETE FROM marts.kpis WHERE run_as_of = $as_of", {"as_of": clock.as_of})
        con.executemany(
            "INSERT INTO marts.kpis (run_as_of, kpi, value) VALUES (?, ?, ?)",
            [[clock.as_of, k, None if v is None else float(v)] for k, v in kpis.items()],
        )
    return {**kpis, "kpis": markdown_table(["kpi", "value"], sorted(kpis.items()))}
