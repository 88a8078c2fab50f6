"""Tiny hand-built warehouses for the reconciliation rules.

``db`` is an in-memory DuckDB with every ingest/canonical table (``create_all``) and a
few helpers that insert rows with sensible defaults, so each test states only the values
its rule is about. The run clock used throughout: ``AS_OF`` = Tuesday 2026-11-24 09:00 UTC,
so week 0 starts on Monday 2026-11-23.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import duckdb
import polars as pl
import pytest

from contracts.settings import Settings
from contracts.warehouse import create_all

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
T_ERP = datetime(2026, 11, 24, 6, 0, tzinfo=timezone.utc)
T_WMS = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
T_PLAN = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
WEEK0 = date(2026, 11, 23)


def week(w: int) -> date:
    return WEEK0 + timedelta(days=7 * w)


def hours(h: float) -> timedelta:
    return timedelta(hours=h)


@dataclass
class DB:
    """The connection plus row helpers; the clock constants ride along as attributes so
    test modules need not import this conftest."""

    con: duckdb.DuckDBPyConnection
    AS_OF = AS_OF
    T_ERP = T_ERP
    T_WMS = T_WMS
    T_PLAN = T_PLAN
    WEEK0 = WEEK0
    week = staticmethod(week)
    hours = staticmethod(hours)

    def insert(self, table: str, **values: Any) -> None:
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        self.con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))

    def bulk(self, table: str, rows: list[dict]) -> None:
        """Insert many rows at once (by column name)."""
        if not rows:
            return
        frame = pl.DataFrame(rows, infer_schema_length=None)
        self.con.register("_bulk_rows", frame)
        self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _bulk_rows")
        self.con.unregister("_bulk_rows")

    # --- masters ----------------------------------------------------------------------
    def item(self, item_id: str, *, cost: float = 10.0, group: str = "MG01", base_uom: str = "EA") -> None:
        self.insert(
            "canonical.item",
            item_id=item_id, matnr=item_id.zfill(18), description=f"Item {item_id}", base_uom=base_uom,
            material_group=group, standard_cost=cost, currency="EUR", deletion_flag=False,
        )

    def item_location(
        self, item_id: str, location_id: str, *, planner: str | None = "P01", lead_days: int = 0,
        ss: float = 0.0, multiple: float = 0.0,
    ) -> None:
        self.insert(
            "canonical.item_location",
            item_id=item_id, location_id=location_id, planner_code=planner, lead_time_days=lead_days,
            safety_stock=ss, order_multiple=multiple,
        )

    # --- inventory --------------------------------------------------------------------
    def snap(self, system: str, item_id: str, location_id: str, qty: float, at: datetime | None = None, **kw: Any) -> None:
        at = at or {"erp": T_ERP, "wms": T_WMS, "planning": T_PLAN}[system]
        self.insert(
            "canonical.inventory_snapshot",
            system=system, item_id=item_id, location_id=location_id, qty=qty, snapshot_at=at,
            source_file=f"{system}/snapshot", **kw,
        )

    def txn(self, txn_id: str, item_id: str, location_id: str, qty: float, at: datetime) -> None:
        self.insert(
            "canonical.inventory_txn",
            txn_id=txn_id, item_id=item_id, location_id=location_id, qty=qty, txn_type="ADJUSTMENT", txn_at=at,
        )

    def conflict(self, system: str, item_id: str, location_id: str) -> None:
        self.insert(
            "canonical.conflict_key",
            system=system, feed="x", item_id=item_id, location_id=location_id, natural_key="k", source_file="f",
        )

    # --- planning ---------------------------------------------------------------------
    def forecast(self, item_id: str, location_id: str, weekly: list[float], *, start: int = 0,
                 version: str = "FV1") -> None:
        for i, q in enumerate(weekly):
            self.insert(
                "canonical.forecast",
                item_id=item_id, location_id=location_id, week_start=week(start + i), qty=q, source_qty=q,
                source_uom="EA", forecast_version=version, published_at=datetime(2026, 11, 20, tzinfo=timezone.utc),
            )

    def po(
        self, ebeln: str, item_id: str, location_id: str, qty: float, due: date, *, received: float = 0.0,
        deleted: bool = False, completed: bool = False, ordered_on: date | None = None,
        confirmed: date | None = date(2026, 11, 1), plan_ref: str | None = None, ebelp: str = "00010",
    ) -> None:
        self.insert(
            "canonical.purchase_order_line",
            ebeln=ebeln, ebelp=ebelp, item_id=item_id, location_id=location_id, supplier="V1",
            order_date=ordered_on or date(2026, 11, 1), delivery_date=due, ordered_qty=qty, received_qty=received,
            order_uom="EA", source_ordered_qty=qty, source_received_qty=received, deleted=deleted,
            delivery_completed=completed, confirmation_date=confirmed, plan_ref=plan_ref,
        )

    def recommendation(self, rec_id: str, item_id: str, location_id: str, qty: float, *,
                       released_at: datetime = datetime(2026, 11, 19, 9, tzinfo=timezone.utc),
                       status: str = "RELEASED") -> None:
        self.insert(
            "canonical.planned_order",
            recommendation_id=rec_id, item_id=item_id, location_id=location_id, qty=qty, source_qty=qty,
            source_uom="EA", need_date=date(2026, 12, 14), released_at=released_at, status=status,
        )

    # --- reading ----------------------------------------------------------------------
    def rows(self, sql: str, params: Any = None) -> list[dict]:
        cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def row(self, table: str, item_id: str, location_id: str) -> dict:
        out = self.rows(f"SELECT * FROM {table} WHERE item_id = ? AND location_id = ?", [item_id, location_id])
        assert len(out) == 1, out
        return out[0]


@pytest.fixture
def db() -> DB:
    con = duckdb.connect()
    create_all(con)
    yield DB(con)
    con.close()


@pytest.fixture
def settings() -> Settings:
    return Settings()
