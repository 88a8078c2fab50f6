"""A tiny hand-built warehouse for the delivery layer (payloads, outbox, reports).

The marts tables are created here with only the columns ``shared/spec/outputs.md`` names
(the public contract), so these tests prove that delivery relies on nothing more. The
world: items 104233, 104234, 104235 (planning code ``<script>alert(1)</script>``, an
extract value that must never run in a report) and 104236 (no planning code); plants
1010 and 1020; the run at ``AS_OF`` 2026-11-24 09:00 UTC with the ERP snapshot at 06:00.

PostgreSQL: ``pg_url`` reads ``DISTSYNC_TEST_PG_URL`` (set by ``tests/conftest.py`` from
``[tool.distsync.test]`` in pyproject unless the environment overrides it) and skips
when it is empty; every test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import date, datetime, timezone
from typing import Any, Callable

import duckdb
import polars as pl
import pytest

from contracts.warehouse import create_all

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
T_ERP = datetime(2026, 11, 24, 6, 0, tzinfo=timezone.utc)
SCRIPT = "<script>alert(1)</script>"

MARTS_DDL = {
    "marts.inventory_drift": """item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR, erp_qty DOUBLE,
        wms_qty DOUBLE, wms_aligned_qty DOUBLE, planning_qty DOUBLE, planning_aligned_qty DOUBLE,
        erp_present BOOLEAN, wms_present BOOLEAN, planning_present BOOLEAN, diff_wms DOUBLE,
        diff_planning DOUBLE, status_wms VARCHAR, status_planning VARCHAR, drift_value_wms DOUBLE,
        drift_value_planning DOUBLE, status VARCHAR, erp_as_of TIMESTAMPTZ, wms_as_of TIMESTAMPTZ,
        planning_as_of TIMESTAMPTZ, run_as_of TIMESTAMPTZ""",
    "marts.replenishment_proposal": """item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR,
        week INTEGER, need_date DATE, quantity DOUBLE, base_uom VARCHAR, matnr VARCHAR,
        forecast_version VARCHAR, run_as_of TIMESTAMPTZ""",
    "marts.exceptions": """exception_id VARCHAR, exception_type VARCHAR, severity VARCHAR, status VARCHAR,
        item_id VARCHAR, location_id VARCHAR, reference VARCHAR, planner_code VARCHAR, details VARCHAR,
        first_seen_at TIMESTAMPTZ, last_seen_at TIMESTAMPTZ, resolved_at TIMESTAMPTZ, age_days INTEGER""",
    "marts.forecast_order_alignment": """item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR,
        on_hand DOUBLE, safety_stock DOUBLE, lead_time_weeks INTEGER, demand_horizon DOUBLE,
        supply_horizon DOUBLE, coverage_ratio DOUBLE, first_shortage_week INTEGER, shortage_qty DOUBLE,
        excess_qty DOUBLE, proposal_qty DOUBLE, status VARCHAR, run_as_of TIMESTAMPTZ""",
    "marts.kpis": "run_as_of TIMESTAMPTZ, kpi VARCHAR, value DOUBLE",
}


class World:
    """The connection plus row helpers with defaults (tests state only what they test)."""

    AS_OF = AS_OF
    T_ERP = T_ERP

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def insert(self, table: str, **values: Any) -> None:
        cols = ", ".join(f'"{c}"' for c in values)
        self.con.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' for _ in values)})",
                         list(values.values()))

    def drift(self, item_id: str, location_id: str, erp_qty: float | None, *, status_wms: str = "match",
              planner: str = "P01", erp_present: bool = True, **more: Any) -> None:
        self.insert("marts.inventory_drift", item_id=item_id, location_id=location_id, planner_code=planner,
                    erp_qty=erp_qty if erp_present else 0.0, erp_present=erp_present, wms_qty=erp_qty,
                    wms_present=True, status_wms=status_wms, status_planning=more.pop("status_planning", "match"),
                    status=more.pop("status", status_wms), erp_as_of=T_ERP if erp_present else None,
                    run_as_of=AS_OF, **more)

    def exception(self, exception_type: str, severity: str, *, item_id: str | None = None,
                  location_id: str | None = None, reference: str | None = None, planner: str = "P01",
                  status: str = "open", details: dict | None = None, first_seen: datetime = AS_OF,
                  resolved_at: datetime | None = None, age_days: int = 0) -> str:
        eid = uuid.uuid4().hex
        self.insert("marts.exceptions", exception_id=eid, exception_type=exception_type, severity=severity,
                    status=status, item_id=item_id, location_id=location_id, reference=reference,
                    planner_code=planner, details=json.dumps(details or {}), first_seen_at=first_seen,
                    last_seen_at=resolved_at or AS_OF, resolved_at=resolved_at, age_days=age_days)
        return eid

    def feed(self, system: str, feed: str, *, stale: bool = False, newest_file: str | None = None,
             outcome: str = "accepted", extract_ts: datetime = T_ERP, reason: str | None = None) -> None:
        newest_file = newest_file or f"{system}/{feed}/{feed}_{extract_ts:%Y%m%dT%H%M%SZ}.csv"
        self.insert("ingest.feed_status", system=system, feed=feed, current_files=1, newest_file=newest_file,
                    newest_extract_ts=extract_ts, age_hours=(AS_OF - extract_ts).total_seconds() / 3600,
                    freshness_limit_hours=24, stale=stale, run_as_of=AS_OF)
        self.insert("ingest.manifest", file_path=newest_file, system=system, feed=feed, extract_ts=extract_ts,
                    outcome=outcome, reason=reason, ingested_at=AS_OF, run_as_of=AS_OF)

    def proposal(self, item_id: str, location_id: str, week: int, quantity: float, *,
                 forecast_version: str = "FV-46", base_uom: str = "EA") -> None:
        need = date.fromordinal(date(2026, 11, 23).toordinal() + 7 * week)
        self.insert("marts.replenishment_proposal", item_id=item_id, location_id=location_id, planner_code="P01",
                    week=week, need_date=need, quantity=quantity, base_uom=base_uom,
                    matnr=item_id.zfill(18), forecast_version=forecast_version, run_as_of=AS_OF)


def build_world(con: duckdb.DuckDBPyConnection) -> World:
    con.execute("SET TimeZone = 'UTC'")
    create_all(con)
    for name, cols in MARTS_DDL.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
    w = World(con)
    for item, desc in (("104233", "Hex bolt M8"), ("104234", "Washer 8 mm"), ("104235", f"Bracket {SCRIPT}"),
                       ("104236", "Nut M8")):
        w.insert("canonical.item", item_id=item, matnr=item.zfill(18), description=desc, base_uom="EA",
                 currency="EUR", standard_cost=2.0)
    for loc, name in (("1010", "Hamburg"), ("1020", "Lyon")):
        w.insert("canonical.location", location_id=loc, name=name)
    for item, code in (("104233", "PRD-104233"), ("104234", "PRD-104234"), ("104235", SCRIPT)):
        w.insert("canonical.item_xref", system="PLANNING", external_code=code, item_id=item)
        w.insert("canonical.item_xref", system="WMS", external_code=f"SKU{item}", item_id=item)
    for loc, code in (("1010", "SITE-HH"), ("1020", "SITE-LY")):
        w.insert("canonical.location_xref", system="PLANNING", external_code=code, location_id=loc)
    w.drift("104233", "1010", 100.0)
    w.drift("104234", "1010", 50.0, status_wms="drift", diff_wms=-5.0, drift_value_wms=10.0)
    w.drift("104235", "1020", 7.5, planner="P02")
    w.drift("104236", "1010", 3.0)  # no planning code: skipped and counted
    w.drift("104233", "1020", None, erp_present=False)  # only in the WMS: not sent
    w.exception("INVENTORY_DRIFT", "low", item_id="104234", location_id="1010", reference="wms",
                details={"pair": "wms", "erp_qty": 50, "other_qty": 45, "other_aligned_qty": 45, "diff": -5,
                         "drift_value": 10.0, "currency": "EUR", "erp_present": True, "other_present": True})
    for system, feed in (("erp", "inventory_balance"), ("erp", "purchase_order"), ("planning", "forecast")):
        w.feed(system, feed)
    return w


@pytest.fixture
def world() -> World:
    con = duckdb.connect()
    try:
        yield build_world(con)
    finally:
        con.close()


def frame_of(path: str | os.PathLike) -> pl.DataFrame:
    return pl.read_ndjson(path)


# --- outboxes -----------------------------------------------------------------------------
def _pg_url() -> str:
    url = os.environ.get("DISTSYNC_TEST_PG_URL", "")
    if not url:
        pytest.skip("DISTSYNC_TEST_PG_URL is not set (or empty): no PostgreSQL server to test against")
    return url


@pytest.fixture
def pg_url() -> str:
    return _pg_url()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_outbox(request, tmp_path) -> Callable[..., Any]:
    """A factory of outboxes on SQLite (a file in tmp_path) or PostgreSQL (a schema of its
    own, dropped afterwards), with the batch folder in tmp_path."""
    from reconciliation.outbox import Outbox

    made = []
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'outbox.sqlite'}", None
    else:
        url, schema = _pg_url(), f"distsync_test_{uuid.uuid4().hex[:12]}"

    def make(**kwargs: Any) -> Outbox:
        ob = Outbox(url, str(tmp_path / "outbox"), schema=schema, **kwargs)
        made.append(ob)
        return ob

    make.dialect = request.param  # type: ignore[attr-defined]
    yield make
    if schema and made:
        with made[0].engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for ob in made:
        ob.close()
