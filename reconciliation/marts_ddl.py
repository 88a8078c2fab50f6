"""The ``marts`` tables reconciliation writes, with their columns, and small helpers
shared by the builders (run clock, one-transaction writes, markdown for metadata).

The columns named in ``shared/spec/outputs.md`` are a public contract: never rename or
drop one here. Extra columns are fine (analysts get more context) and are added to the
persistent tables of an existing warehouse by :func:`ensure_marts`.

Per-run marts (``inventory_drift``, ``forecast_order_alignment``,
``replenishment_proposal``, ``projection``) are replaced by every run; they and the drift
history (``inventory_drift_history``, every run) are Parquet files in the lake with views
in DuckDB (see ``mart_store.py``). Persistent tables (``exception_state`` behind the
``exceptions`` view, ``exception_events``, ``kpis``) keep every run in the DuckDB file;
each builder makes its own write idempotent per ``run_as_of``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

import duckdb

from contracts.warehouse import columns_of, empty_select

# --- column lists ------------------------------------------------------------------------
INVENTORY_DRIFT_COLUMNS = """
    item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR,
    erp_qty DOUBLE, wms_qty DOUBLE, wms_aligned_qty DOUBLE,
    planning_qty DOUBLE, planning_aligned_qty DOUBLE,
    erp_present BOOLEAN, wms_present BOOLEAN, planning_present BOOLEAN,
    diff_wms DOUBLE, diff_planning DOUBLE,
    status_wms VARCHAR, status_planning VARCHAR,          -- match | within_tolerance | drift | unverifiable
    drift_value_wms DOUBLE, drift_value_planning DOUBLE,  -- |diff| x standard cost; null when unverifiable
    status VARCHAR,                                       -- unverifiable > drift > within_tolerance > match
    erp_as_of TIMESTAMPTZ, wms_as_of TIMESTAMPTZ, planning_as_of TIMESTAMPTZ,
    run_as_of TIMESTAMPTZ,
    -- context (not in the outward contract, stable all the same)
    material_group VARCHAR, standard_cost DOUBLE, currency VARCHAR,
    -- net WMS movement from erp_as_of to the snapshot's time (negative of the movements in
    -- between when the snapshot is older): <system>_aligned_qty = <system>_qty - this
    wms_movement_qty DOUBLE, planning_movement_qty DOUBLE,
    abs_tol DOUBLE, rel_tol DOUBLE,
    tolerance_source VARCHAR,      -- location | material_group | global
    allowed_diff DOUBLE,           -- abs_tol + rel_tol x |erp_qty|
    severity_wms VARCHAR, severity_planning VARCHAR,      -- high | medium | low when the pair drifts
    unverifiable_erp BOOLEAN, unverifiable_wms BOOLEAN, unverifiable_planning BOOLEAN,
    unverifiable_reason VARCHAR
"""

FORECAST_ORDER_ALIGNMENT_COLUMNS = """
    item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR,
    on_hand DOUBLE, safety_stock DOUBLE, lead_time_weeks INTEGER,
    demand_horizon DOUBLE, supply_horizon DOUBLE, coverage_ratio DOUBLE,
    first_shortage_week INTEGER, shortage_qty DOUBLE, excess_qty DOUBLE, proposal_qty DOUBLE,
    status VARCHAR,                -- shortage_in_lead_time | needs_order | excess | aligned
    run_as_of TIMESTAMPTZ,
    -- context
    lead_time_days INTEGER, order_multiple DOUBLE, base_uom VARCHAR,
    has_forecast BOOLEAN,          -- a forecast row in weeks 0..H-1 (the alignment-rate population)
    avg_weekly_demand DOUBLE, projected_end DOUBLE, excess_threshold DOUBLE,
    last_supply_week INTEGER,      -- latest week an outstanding PO line supplies (null: none)
    open_line_after_lead_time BOOLEAN,  -- one supplies a week in L..H-1 (excess needs it)
    late_supply_qty DOUBLE,        -- open quantity of past-due lines (counted in week 0)
    proposal_count INTEGER, first_proposal_week INTEGER,
    forecast_version VARCHAR, week0_start DATE, horizon_weeks INTEGER
"""

REPLENISHMENT_PROPOSAL_COLUMNS = """
    item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR,
    week INTEGER, need_date DATE, quantity DOUBLE, base_uom VARCHAR, matnr VARCHAR,
    forecast_version VARCHAR, run_as_of TIMESTAMPTZ,
    projected_before DOUBLE,       -- P'_w (with earlier proposals) that triggered it
    safety_stock DOUBLE, order_multiple DOUBLE
"""

# stored: one row per item-location, element k of each array = week k
WEEKLY_PROJECTION_COLUMNS = """
    item_id VARCHAR, location_id VARCHAR, week0_start DATE,
    demand DOUBLE[], supply DOUBLE[], projected DOUBLE[], projected_with_proposals DOUBLE[],
    proposal DOUBLE[], run_as_of TIMESTAMPTZ
"""

# marts.projection, a view: one row per item-location and week
PROJECTION_VIEW = """
SELECT item_id, location_id, CAST(week AS INTEGER) AS week, CAST(week0_start + 7 * CAST(week AS INTEGER) AS DATE)
       AS week_start, demand, supply, projected, projected_with_proposals, proposal, run_as_of
FROM (
    SELECT item_id, location_id, week0_start, run_as_of,
           unnest(range(len(demand))) AS week, unnest(demand) AS demand, unnest(supply) AS supply,
           unnest(projected) AS projected, unnest(projected_with_proposals) AS projected_with_proposals,
           unnest(proposal) AS proposal
    FROM marts.weekly_projection
)
"""

EXCEPTIONS_COLUMNS = """
    exception_id VARCHAR, exception_type VARCHAR, severity VARCHAR,
    status VARCHAR,                -- open | resolved
    item_id VARCHAR, location_id VARCHAR, reference VARCHAR, planner_code VARCHAR,
    details VARCHAR,               -- JSON text
    first_seen_at TIMESTAMPTZ, last_seen_at TIMESTAMPTZ, resolved_at TIMESTAMPTZ,
    age_days INTEGER
"""

EXCEPTION_EVENTS_COLUMNS = """
    exception_id VARCHAR, exception_type VARCHAR,
    event VARCHAR,                 -- opened | resolved | reopened
    "at" TIMESTAMPTZ
"""

KPIS_COLUMNS = """
    run_as_of TIMESTAMPTZ, kpi VARCHAR, value DOUBLE
"""

PER_RUN_TABLES = {
    "marts.inventory_drift": INVENTORY_DRIFT_COLUMNS,
    "marts.forecast_order_alignment": FORECAST_ORDER_ALIGNMENT_COLUMNS,
    "marts.replenishment_proposal": REPLENISHMENT_PROPOSAL_COLUMNS,
    "marts.weekly_projection": WEEKLY_PROJECTION_COLUMNS,
}
# per-run marts and the drift history are Parquet in the lake with views in DuckDB
# (mart_store.py); these keep their rows in the DuckDB file
PERSISTENT_TABLES = {
    "marts.exception_state": EXCEPTIONS_COLUMNS,
    "marts.exception_events": EXCEPTION_EVENTS_COLUMNS,
    "marts.kpis": KPIS_COLUMNS,
    # the input fingerprint and contract result of each mart's last build (incremental.py)
    "marts.build_state": "mart VARCHAR PRIMARY KEY, fingerprint VARCHAR, built_at TIMESTAMPTZ, contract VARCHAR",
}

# marts.exceptions, a view: an open exception was seen by the newest merged run, so its
# last_seen_at and age_days follow that run's as_of (marts.exception_clock) instead of
# being rewritten on every open row by every run; resolved rows keep their stored values
def age_days_sql(now: str, first_seen: str) -> str:
    """An exception's age: whole days from ``first_seen`` to ``now`` (SQL expressions)."""
    return f"CAST(floor((epoch({now}) - epoch({first_seen})) / 86400) AS INTEGER)"


EXCEPTIONS_VIEW = f"""
SELECT e.exception_id, e.exception_type, e.severity, e.status, e.item_id, e.location_id, e.reference,
       e.planner_code, e.details, e.first_seen_at,
       CASE WHEN e.status = 'open' AND c.as_of IS NOT NULL THEN c.as_of ELSE e.last_seen_at END AS last_seen_at,
       e.resolved_at,
       CASE WHEN e.status = 'open' AND c.as_of IS NOT NULL
            THEN {age_days_sql("c.as_of", "e.first_seen_at")}
            ELSE e.age_days END AS age_days
FROM marts.exception_state e
LEFT JOIN (SELECT max(as_of) AS as_of FROM marts.exception_clock) c ON true
"""
LAKE_MARTS = {**PER_RUN_TABLES, "marts.inventory_drift_history": INVENTORY_DRIFT_COLUMNS}
MARTS_DDL = {**LAKE_MARTS, **PERSISTENT_TABLES}


def ensure_marts(con: duckdb.DuckDBPyConnection) -> None:
    """Create the marts schema and every marts table or view that is missing (a lake mart
    that was never built is an empty view with its columns); add columns that a newer
    version of this module defines to persistent tables of an older warehouse."""
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    existing = {f"marts.{t}": k for t, k in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'marts'").fetchall()}
    if existing.get("marts.exceptions") == "BASE TABLE" and "marts.exception_state" not in existing:
        # an older warehouse: its table becomes the state, its newest merged run the clock
        con.execute("ALTER TABLE marts.exceptions RENAME TO exception_state")
        con.execute("CREATE TABLE marts.exception_clock AS SELECT max(last_seen_at) AS as_of "
                    "FROM marts.exception_state")
        existing.update({"marts.exception_state": "BASE TABLE", "marts.exception_clock": "BASE TABLE"})
        del existing["marts.exceptions"]
    for name, cols in LAKE_MARTS.items():
        if name not in existing:
            con.execute(f"CREATE VIEW {name} AS {empty_select(cols)}")
    if existing.get("marts.projection") != "VIEW":  # a table in a warehouse of an older version
        con.execute("DROP TABLE IF EXISTS marts.projection")
        con.execute(f"CREATE VIEW marts.projection AS {PROJECTION_VIEW}")
    for name, cols in PERSISTENT_TABLES.items():
        if name not in existing:
            con.execute(f"CREATE TABLE {name} ({cols})")
            continue
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'marts' AND table_name = ?",
            [name.split(".")[1]]).fetchall()}
        for col, typ in columns_of(cols):
            if col.strip('"') not in have:
                con.execute(f"ALTER TABLE {name} ADD COLUMN {col} {typ}")
    if "marts.exception_clock" not in existing:
        con.execute("CREATE TABLE marts.exception_clock (as_of TIMESTAMPTZ)")
    if "marts.exceptions" not in existing:
        con.execute(f"CREATE VIEW marts.exceptions AS {EXCEPTIONS_VIEW}")


# --- run clock ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunClock:
    """``as_of`` (aware, UTC), its UTC date, and week 0 (the ISO week containing it)."""

    as_of: datetime
    run_date: date
    week0_start: date  # Monday of week 0

    def week_start(self, week: int) -> date:
        return self.week0_start + timedelta(days=7 * week)


def run_clock(as_of: datetime | str) -> RunClock:
    """Normalise ``as_of`` (aware datetime, naive = UTC, or ISO-8601 text) to a RunClock."""
    if isinstance(as_of, str):
        as_of = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    as_of = as_of.astimezone(timezone.utc)
    run_date = as_of.date()
    return RunClock(as_of=as_of, run_date=run_date, week0_start=run_date - timedelta(days=run_date.weekday()))


# --- writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All-or-nothing writes: a builder that fails leaves the marts as they were.

    When the caller already holds a transaction, the builder joins it (commit/rollback
    stay with the caller).
    """
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.TransactionException:
        yield
        return
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# --- metadata ----------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:,.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:200]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small markdown table for Dagster metadata (``MetadataValue.md``)."""
    if not rows:
        return "_none_"
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def plain(value: Any) -> Any:
    """A JSON-able scalar for metadata (no numpy / Decimal / NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
