"""Per-run marts in the lake: files, views, carrying an unchanged mart over, history."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

from contracts.settings import Tolerance
from contracts.warehouse import columns_of
from reconciliation import build_forecast_order_alignment, build_inventory_drift
from reconciliation.mart_store import mart_dir, run_file
from reconciliation.marts_ddl import INVENTORY_DRIFT_COLUMNS

LATER = timedelta(hours=1)


def _built(db) -> None:
    """Record canonical builds of the drift and alignment inputs, as the canonical layer
    does (tables filled by hand have none, and their marts are always recomputed)."""
    for table in ("inventory_snapshot", "item", "item_location", "forecast", "purchase_order_line"):
        db.con.execute("INSERT OR REPLACE INTO ingest.canonical_state VALUES (?, 'v1', now())", [f"canonical.{table}"])


def _world(db) -> None:
    db.item("1")
    db.item_location("1", "1010", ss=10)
    db.snap("erp", "1", "1010", 100)
    db.snap("wms", "1", "1010", 100)
    db.snap("planning", "1", "1010", 100)
    db.forecast("1", "1010", [30, 30, 30])
    _built(db)


def _lake(db) -> str:
    from contracts.warehouse import default_lake_dir

    return default_lake_dir(db.con)


def test_drift_mart_is_one_parquet_file_per_run_behind_a_view(db, settings):
    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    file = run_file(_lake(db), "marts.inventory_drift", db.AS_OF)
    assert file.exists() and file.parent.name == "run_as_of=20261124T090000Z"
    kind = db.rows("SELECT table_type FROM information_schema.tables WHERE table_schema = 'marts' "
                   "AND table_name = 'inventory_drift'")[0]["table_type"]
    assert kind == "VIEW"
    row = db.row("marts.inventory_drift", "1", "1010")
    assert row["run_as_of"] == db.AS_OF and row["status"] == "match"
    # the columns, in the declared order, run_as_of included
    names = [r["column_name"] for r in db.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'marts' "
        "AND table_name = 'inventory_drift' ORDER BY ordinal_position")]
    assert names == [c for c, _ in columns_of(INVENTORY_DRIFT_COLUMNS)]


def test_drift_carried_over_when_only_movements_after_the_snapshots_arrive(db, settings):
    _world(db)
    first = build_inventory_drift(db.con, settings, db.AS_OF)
    assert first["recomputed"] is True and first["contract"]["failures"] == {}
    db.txn("late", "1", "1010", -5, db.T_WMS + db.hours(0.5))  # after every snapshot
    second = build_inventory_drift(db.con, settings, db.AS_OF + LATER)
    assert second["recomputed"] is False and second["contract"] == first["contract"]
    old, new = run_file(_lake(db), "marts.inventory_drift_history", db.AS_OF), \
        run_file(_lake(db), "marts.inventory_drift_history", db.AS_OF + LATER)
    assert os.stat(old).st_ino == os.stat(new).st_ino  # a link, not a rewrite
    assert db.row("marts.inventory_drift", "1", "1010")["run_as_of"] == db.AS_OF + LATER
    # one folder for the per-run mart; the history keeps both runs, same figures
    assert [p.name for p in mart_dir(_lake(db), "marts.inventory_drift").iterdir()] == [new.parent.name]
    runs = db.rows("SELECT run_as_of, status, wms_aligned_qty FROM marts.inventory_drift_history ORDER BY 1")
    assert [(r["run_as_of"], r["status"], r["wms_aligned_qty"]) for r in runs] == [
        (db.AS_OF, "match", 100.0), (db.AS_OF + LATER, "match", 100.0)]


def test_drift_recomputed_when_a_movement_inside_the_snapshot_window_arrives(db, settings):
    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    db.txn("between", "1", "1010", -5, db.T_ERP + db.hours(1))  # ERP 06:00 < 07:00 <= WMS 08:00
    out = build_inventory_drift(db.con, settings, db.AS_OF + LATER)
    assert out["recomputed"] is True
    row = db.row("marts.inventory_drift", "1", "1010")
    assert row["wms_aligned_qty"] == 105 and row["status_wms"] == "drift"
    history = db.rows("SELECT run_as_of, status_wms FROM marts.inventory_drift_history ORDER BY 1")
    assert [r["status_wms"] for r in history] == ["match", "drift"]


def test_drift_recomputed_when_settings_or_a_canonical_input_change(db, settings):
    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    looser = dataclasses.replace(settings, abs_tol=1.0)
    assert build_inventory_drift(db.con, looser, db.AS_OF + LATER)["recomputed"] is True
    assert build_inventory_drift(db.con, looser, db.AS_OF + 2 * LATER)["recomputed"] is False
    db.con.execute("UPDATE ingest.canonical_state SET fingerprint = 'v2' WHERE feed = 'canonical.item_location'")
    assert build_inventory_drift(db.con, looser, db.AS_OF + 3 * LATER)["recomputed"] is True


def test_drift_and_alignment_recomputed_when_their_code_changes(db, settings, monkeypatch):
    """A carried-over mart was built by the code of its time: a new version rebuilds it."""
    from reconciliation import incremental

    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    assert build_inventory_drift(db.con, settings, db.AS_OF + LATER)["recomputed"] is False
    assert build_forecast_order_alignment(db.con, settings, db.AS_OF + LATER)["recomputed"] is False
    real = incremental.code_stamp
    monkeypatch.setattr(incremental, "code_stamp", lambda *files: "new:" + real(*files))
    assert build_inventory_drift(db.con, settings, db.AS_OF + 2 * LATER)["recomputed"] is True
    assert build_forecast_order_alignment(db.con, settings, db.AS_OF + 2 * LATER)["recomputed"] is True


def test_a_lost_lake_file_is_rebuilt_not_trusted(db, settings):
    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    run_file(_lake(db), "marts.inventory_drift", db.AS_OF).unlink()
    assert build_inventory_drift(db.con, settings, db.AS_OF + LATER)["recomputed"] is True
    assert db.row("marts.inventory_drift", "1", "1010")["status"] == "match"


def test_alignment_carried_over_within_the_day_and_recomputed_the_next(db, settings):
    _world(db)
    first = build_forecast_order_alignment(db.con, settings, db.AS_OF)
    weeks = db.rows("SELECT week, demand, run_as_of FROM marts.projection ORDER BY week")
    assert first["recomputed"] is True and len(weeks) == settings.horizon_weeks
    assert build_forecast_order_alignment(db.con, settings, db.AS_OF + LATER)["recomputed"] is False
    for table in ("marts.forecast_order_alignment", "marts.replenishment_proposal", "marts.projection"):
        runs = {r["run_as_of"] for r in db.rows(f"SELECT DISTINCT run_as_of FROM {table}")}
        assert runs <= {db.AS_OF + LATER}, table
    assert [r["demand"] for r in db.rows("SELECT demand FROM marts.projection ORDER BY week")] == \
        [r["demand"] for r in weeks]
    # week 0 moves with the run date: the next day is a new computation
    assert build_forecast_order_alignment(db.con, settings, db.AS_OF + timedelta(days=1))["recomputed"] is True


def test_history_table_of_an_older_warehouse_moves_to_the_lake(db, settings):
    _world(db)
    cols = INVENTORY_DRIFT_COLUMNS
    db.con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    db.con.execute(f"CREATE TABLE marts.inventory_drift_history ({cols})")
    earlier = db.AS_OF - timedelta(days=1)
    db.con.execute("INSERT INTO marts.inventory_drift_history (item_id, location_id, status, run_as_of) "
                   "VALUES ('1', '1010', 'drift', ?), ('2', '1010', 'match', ?)", [earlier, earlier])
    old_export = mart_dir(_lake(db), "marts.inventory_drift_history") / "run_as_of=20261123T090000Z.parquet"
    old_export.parent.mkdir(parents=True, exist_ok=True)
    old_export.write_bytes(b"an export of the earlier layout")
    build_inventory_drift(db.con, settings, db.AS_OF)
    runs = db.rows("SELECT run_as_of, count(*) AS n, min(status) AS s FROM marts.inventory_drift_history "
                   "GROUP BY 1 ORDER BY 1")
    assert [(r["run_as_of"], r["n"], r["s"]) for r in runs] == [(earlier, 2, "drift"), (db.AS_OF, 1, "match")]
    assert not old_export.exists()


def test_tolerance_override_is_part_of_the_fingerprint(db, settings):
    _world(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    by_loc = dataclasses.replace(settings, tolerance_by_location={"1010": Tolerance(abs_tol=5.0, rel_tol=0.0)})
    assert build_inventory_drift(db.con, by_loc, db.AS_OF + LATER)["recomputed"] is True


def test_no_build_records_means_no_fingerprint_and_a_plain_build(settings):
    """A connection that only sees canonical tables (no ``ingest`` schema, as in the
    partitioned benchmark's per-group databases) gets no fingerprint instead of an error."""
    import duckdb

    from reconciliation.incremental import input_fingerprint

    con = duckdb.connect()
    assert input_fingerprint(con, ["canonical.item"], settings, "") is None
