"""Run KPIs read back from the marts; idempotent per run."""

from __future__ import annotations

import pytest

from reconciliation import (
    build_exceptions,
    build_forecast_order_alignment,
    build_inventory_drift,
    build_kpis,
)


def _kpis(db, as_of):
    return {r["kpi"]: r["value"] for r in db.rows("SELECT * FROM marts.kpis WHERE run_as_of = ?", [as_of])}


def test_kpis_and_idempotency(db, settings):
    for item, wms in (("a", 100), ("b", 90), ("c", 100), ("d", 100)):
        db.item(item, cost=2.0)
        db.item_location(item, "1010", ss=0)
        db.snap("erp", item, "1010", 100)
        db.snap("wms", item, "1010", wms)
        db.snap("planning", item, "1010", 100)
    db.forecast("a", "1010", [1] * 12)  # aligned
    db.forecast("b", "1010", [20] * 12)  # needs an order
    db.insert("ingest.manifest", file_path="erp/x/x_1.csv", outcome="rejected", run_as_of=db.AS_OF)
    db.insert("ingest.manifest", file_path="erp/x/x_0.csv", outcome="rejected", run_as_of=db.AS_OF - db.hours(24))

    def run():
        build_inventory_drift(db.con, settings, db.AS_OF)
        build_forecast_order_alignment(db.con, settings, db.AS_OF)
        build_exceptions(db.con, settings, db.AS_OF)
        return build_kpis(db.con, settings, db.AS_OF, extra={"files_accepted": 7, "payload_batches": 2})

    meta = run()
    k = _kpis(db, db.AS_OF)
    assert k["drift_rate"] == 0.25 and k["drift_value_total"] == 20.0
    assert k["alignment_rate"] == 0.5
    # drift of b against the WMS (low) and the two rejected files (high)
    assert k["open_exceptions"] == 3
    assert k["open_exceptions_low"] == 1 and k["open_exceptions_high"] == 2
    # rejected by this run's ingestion vs. still open whichever run read them
    assert k["files_rejected"] == 1 and k["files_rejected_open"] == 2
    assert k["files_accepted"] == 7 and k["payload_batches"] == 2
    assert "| drift_rate | 0.25 |" in meta["kpis"]
    n = db.rows("SELECT count(*) AS n FROM marts.kpis")[0]["n"]
    run()
    assert db.rows("SELECT count(*) AS n FROM marts.kpis")[0]["n"] == n
    assert _kpis(db, db.AS_OF) == k


def test_extra_kpis_must_be_numbers(db, settings):
    with pytest.raises(ValueError, match="must be a number"):
        build_kpis(db.con, settings, db.AS_OF, extra={"note": "hello"})


def test_empty_warehouse_gives_null_rates(db, settings):
    meta = build_kpis(db.con, settings, db.AS_OF)
    assert meta["drift_rate"] is None and meta["alignment_rate"] is None and meta["open_exceptions"] == 0


def test_every_builder_runs_on_an_empty_warehouse(db, settings):
    from reconciliation import build_exceptions, build_forecast_order_alignment, build_inventory_drift

    assert build_inventory_drift(db.con, settings, db.AS_OF)["item_locations"] == 0
    assert build_forecast_order_alignment(db.con, settings, db.AS_OF)["item_locations"] == 0
    assert build_exceptions(db.con, settings, db.AS_OF)["open_exceptions"] == 0
    assert build_kpis(db.con, settings, db.AS_OF)["open_exceptions"] == 0
