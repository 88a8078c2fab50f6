"""§5 exception candidates and lifecycle on hand-built canonical / ingest tables."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from reconciliation import build_exceptions, build_forecast_order_alignment, build_inventory_drift


def run(db, settings, as_of):
    build_inventory_drift(db.con, settings, as_of)
    build_forecast_order_alignment(db.con, settings, as_of)
    return build_exceptions(db.con, settings, as_of)


def open_refs(db, exception_type):
    return {r["reference"] for r in db.rows(
        "SELECT reference FROM marts.exceptions WHERE status = 'open' AND exception_type = ?", [exception_type])}


def snapshot(db):
    return (
        db.rows("SELECT * FROM marts.exceptions ORDER BY exception_id"),
        db.rows('SELECT * FROM marts.exception_events ORDER BY "at", exception_id, event'),
    )


# --- lifecycle -------------------------------------------------------------------------

def _drifting(db, item, wms):
    db.item(item, cost=1.0)
    db.item_location(item, "1010", planner="P09")
    db.snap("erp", item, "1010", 100)
    db.snap("wms", item, "1010", wms)
    db.snap("planning", item, "1010", 100)


def _set_wms(db, item, qty):
    db.con.execute("UPDATE canonical.inventory_snapshot SET qty = ? WHERE system = 'wms' AND item_id = ?", [qty, item])


def test_open_resolve_reopen_with_ages_and_idempotent_rerun(db, settings):
    t1 = db.AS_OF
    t2 = t1 + timedelta(days=2, hours=12)
    t3 = t2 + timedelta(days=1)
    _drifting(db, "A", 90)
    _drifting(db, "B", 80)

    meta = run(db, settings, t1)
    assert meta["opened"] == 2 and meta["open_exceptions"] == 2
    ids = {r["item_id"]: r["exception_id"] for r in db.rows("SELECT * FROM marts.exceptions")}

    _set_wms(db, "B", 100)  # B fixed
    _set_wms(db, "A", 95)  # A still drifting, by less
    meta = run(db, settings, t2)
    assert (meta["opened"], meta["resolved"], meta["open_exceptions"]) == (0, 1, 1)
    a = db.row("marts.exceptions", "A", "1010")
    b = db.row("marts.exceptions", "B", "1010")
    assert (a["status"], a["first_seen_at"], a["last_seen_at"], a["age_days"]) == ("open", t1, t2, 2)
    assert json.loads(a["details"])["diff"] == -5  # this run's values
    assert (b["status"], b["resolved_at"], b["last_seen_at"], b["age_days"]) == ("resolved", t2, t1, 2)

    _set_wms(db, "B", 70)  # B back, bigger
    meta = run(db, settings, t3)
    assert (meta["reopened"], meta["resolved"], meta["open_exceptions"]) == (1, 0, 2)
    a = db.row("marts.exceptions", "A", "1010")
    b = db.row("marts.exceptions", "B", "1010")
    assert a["age_days"] == 3 and a["first_seen_at"] == t1
    assert (b["status"], b["first_seen_at"], b["resolved_at"], b["age_days"]) == ("open", t3, None, 0)
    assert b["exception_id"] == ids["B"]
    assert json.loads(b["details"])["diff"] == -30
    events = [(e["event"], e["at"]) for e in db.rows(
        'SELECT * FROM marts.exception_events WHERE exception_id = ? ORDER BY "at"', [ids["B"]])]
    assert events == [("opened", t1), ("resolved", t2), ("reopened", t3)]

    before = snapshot(db)
    run(db, settings, t3)  # same as_of, same data
    assert snapshot(db) == before


def test_exception_id_is_stable_hash_of_type_and_key(db, settings):
    _drifting(db, "A", 90)
    run(db, settings, db.AS_OF)
    (row,) = db.rows("SELECT * FROM marts.exceptions")
    import hashlib
    assert row["exception_id"] == hashlib.md5(b"INVENTORY_DRIFT|A|1010|wms").hexdigest()
    assert (row["reference"], row["planner_code"], row["severity"]) == ("wms", "P09", "low")


def test_older_as_of_does_not_rewrite_the_lifecycle(db, settings):
    _drifting(db, "A", 90)
    run(db, settings, db.AS_OF)
    before = snapshot(db)
    meta = run(db, settings, db.AS_OF - timedelta(days=1))
    assert "lifecycle_skipped" in meta
    assert snapshot(db) == before


def test_marts_of_another_run_are_refused(db, settings):
    _drifting(db, "A", 90)
    build_inventory_drift(db.con, settings, db.AS_OF)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    with pytest.raises(ValueError, match="build it for this as_of first"):
        build_exceptions(db.con, settings, db.AS_OF + timedelta(hours=1))


def test_unverifiable_pair_raises_no_drift_exception(db, settings):
    _drifting(db, "A", 10)
    db.conflict("wms", "A", "1010")
    run(db, settings, db.AS_OF)
    assert open_refs(db, "INVENTORY_DRIFT") == set()


# --- alignment-based --------------------------------------------------------------------

def test_shortage_and_excess_raised_whatever_the_status(db, settings):
    db.item("S")
    db.item_location("S", "1010", planner="P02", lead_days=14, ss=10)
    db.forecast("S", "1010", [5] * 12)
    db.po("4500000001", "S", "1010", 1000, db.week(3))
    run(db, settings, db.AS_OF)
    got = {(r["exception_type"], r["severity"], r["planner_code"]) for r in db.rows("SELECT * FROM marts.exceptions")}
    assert got == {("PROJECTED_SHORTAGE", "high", "P02"), ("EXCESS_SUPPLY", "low", "P02")}
    assert db.row("marts.forecast_order_alignment", "S", "1010")["status"] == "shortage_in_lead_time"


# --- purchase orders ----------------------------------------------------------------------

def test_po_exceptions(db, settings):
    db.item("1")
    db.item_location("1", "1010", planner="P03")
    run_date = db.AS_OF.date()
    db.po("4500000001", "1", "1010", 10, date(2026, 11, 13))  # 11 days late -> medium
    db.po("4500000002", "1", "1010", 10, date(2026, 11, 9))  # 15 days -> high
    db.po("4500000003", "1", "1010", 10, date(2026, 11, 10))  # exactly 14 -> medium
    db.po("4500000004", "1", "1010", 10, db.WEEK0)  # due this week's Monday: not late
    db.po("4500000005", "1", "1010", 10, date(2026, 11, 1), deleted=True)
    db.po("4500000006", "1", "1010", 10, date(2026, 11, 1), received=5, completed=True)
    db.po("4500000007", "1", "1010", 10, date(2026, 11, 1), received=10)  # fully received, not flagged
    db.po("4500000008", "1", "1010", 10, db.week(4), confirmed=None, ordered_on=run_date - timedelta(days=4))
    db.po("4500000009", "1", "1010", 10, db.week(4), confirmed=None, ordered_on=run_date - timedelta(days=3))
    db.po("4500000010", "1", "1010", 10, db.week(4), confirmed=None, ordered_on=run_date - timedelta(days=9),
          deleted=True)
    db.po("4500000011", "2", "1020", 10, date(2026, 11, 20), confirmed=None, ordered_on=date(2026, 11, 1))
    run(db, settings, db.AS_OF)
    late = {r["reference"]: r["severity"] for r in db.rows(
        "SELECT * FROM marts.exceptions WHERE exception_type = 'LATE_PO'")}
    assert late == {"4500000001/00010": "medium", "4500000002/00010": "high", "4500000003/00010": "medium",
                    "4500000011/00010": "medium"}
    assert open_refs(db, "UNCONFIRMED_PO") == {"4500000008/00010", "4500000011/00010"}
    planners = {r["reference"]: r["planner_code"] for r in db.rows("SELECT * FROM marts.exceptions")}
    assert planners["4500000001/00010"] == "P03" and planners["4500000011/00010"] == "UNASSIGNED"
    details = json.loads(db.rows(
        "SELECT details FROM marts.exceptions WHERE reference = '4500000002/00010'")[0]["details"])
    assert details["days_late"] == 15 and details["open_qty"] == 10


# --- recommendations ----------------------------------------------------------------------

def test_recommendation_exceptions(db, settings):
    db.item("1")
    db.item_location("1", "1010", planner="P04")
    rec = db.recommendation
    rec("R1", "1", "1010", 24)  # no line -> unconverted
    rec("R2", "1", "1010", 24)
    db.po("4500000002", "1", "1010", 24, db.week(3), plan_ref="R2")  # converted exactly
    rec("R3", "1", "1010", 24)
    db.po("4500000003", "1", "1010", 12, db.week(3), plan_ref="R3")
    db.po("4500000003", "1", "1010", 18, db.week(3), plan_ref="R3", ebelp="00020")  # 30 <> 24 -> mismatch
    rec("R4", "1", "1010", 24, released_at=db.AS_OF - timedelta(days=2) + timedelta(seconds=1))  # too recent
    rec("R5", "1", "1010", 24, released_at=db.AS_OF - timedelta(days=2))  # exactly 2 days -> due
    rec("R6", "1", "1010", 24, status="CANCELLED")
    rec("R7", "1", "1010", 24)
    db.po("4500000007", "1", "1010", 24, db.week(3), plan_ref="R7", deleted=True)  # deleted: not a conversion
    rec("R8", "1", "1010", 24)
    db.po("4500000008", "1", "1010", 24, db.week(-3), plan_ref="R8", received=24, completed=True)  # closed counts
    rec("R9", "1", "1010", 2 * 2.5)  # 2 PK of 5/2
    db.po("4500000009", "1", "1010", 5.0, db.week(3), plan_ref="R9")
    run(db, settings, db.AS_OF)
    assert open_refs(db, "UNCONVERTED_RECOMMENDATION") == {"R1", "R5", "R7"}
    assert open_refs(db, "RECOMMENDATION_QTY_MISMATCH") == {"R3"}
    sev = {r["reference"]: (r["severity"], r["planner_code"]) for r in db.rows(
        "SELECT * FROM marts.exceptions WHERE exception_type LIKE '%RECOMMENDATION%'")}
    assert sev["R1"] == ("medium", "P04") and sev["R3"] == ("low", "P04")
    details = json.loads(db.rows("SELECT details FROM marts.exceptions WHERE reference = 'R3'")[0]["details"])
    assert details["ordered_qty"] == 30 and details["po_lines"] == ["4500000003/00010", "4500000003/00020"]


# --- ingestion-based ----------------------------------------------------------------------

UTC = timezone.utc


def _manifest(db, path, outcome, extract_ts, ingested_at, sha="s", feed=None, system=None):
    system = system or path.split("/")[0]
    feed = feed or path.split("/")[1]
    db.insert("ingest.manifest", file_path=path, system=system, feed=feed, extract_ts=extract_ts, sha256=sha,
              outcome=outcome, reason="x" if outcome == "rejected" else None, ingested_at=ingested_at,
              run_as_of=ingested_at)


def _current(db, path, sha, extract_ts):
    db.insert("ingest.current_files", file_path=path, sha256=sha, system=path.split("/")[0],
              feed=path.split("/")[1], extract_ts=extract_ts)


def _quarantine(db, path, sha, row, rule, column=None, code_kind=None, code=None):
    db.insert("ingest.quarantine", file_path=path, sha256=sha, system=path.split("/")[0], feed=path.split("/")[1],
              row_number=row, rule=rule, column=column, detail=f"{rule} on {column}", raw="{}",
              code_kind=code_kind, code=code)


def test_ingestion_exceptions(db, settings):
    t = datetime(2026, 11, 24, 2, tzinfo=UTC)
    fc = "planning/forecast/forecast_20261115T090000Z.jsonl"
    _current(db, fc, "new", t)
    _quarantine(db, fc, "new", 7, "unmapped_code", "product_code", "item", "PRD-X")
    _quarantine(db, fc, "new", 9, "unmapped_code", "product_code", "item", "PRD-X")
    _quarantine(db, fc, "new", 3, "bad_number", "qty")
    _quarantine(db, fc, "new", 4, "bad_number", "qty")
    _quarantine(db, fc, "new", 4, "bad_number", "uom")
    _quarantine(db, fc, "old", 5, "unmapped_code", "product_code", "item", "PRD-OLD")  # superseded version
    _quarantine(db, "wms/stock_snapshot/old.parquet", "z", 1, "unmapped_code", "sku", "item", "SKU-OLD")

    inv = "planning/inventory_position/inventory_position_{}.jsonl"
    _current(db, inv.format("0200"), "a", datetime(2026, 11, 24, 2, tzinfo=UTC))
    _manifest(db, inv.format("0200"), "accepted", datetime(2026, 11, 24, 2, tzinfo=UTC), t)
    _manifest(db, inv.format("0300"), "rejected", datetime(2026, 11, 24, 3, tzinfo=UTC), t)  # newer: open
    _manifest(db, inv.format("0100"), "rejected", datetime(2026, 11, 24, 1, tzinfo=UTC), t)  # superseded
    _manifest(db, inv.format("0100"), "duplicate", datetime(2026, 11, 24, 1, tzinfo=UTC), t + timedelta(hours=1))
    po = "erp/purchase_order/purchase_order_{}.csv"
    _current(db, po.format("new"), "p", datetime(2026, 11, 24, 5, tzinfo=UTC))
    _manifest(db, po.format("old"), "rejected", datetime(2026, 11, 20, tzinfo=UTC), t)  # delta feed: stays open
    _manifest(db, po.format("fixed"), "rejected", datetime(2026, 11, 21, tzinfo=UTC), t, sha="1")
    _manifest(db, po.format("fixed"), "accepted", datetime(2026, 11, 21, tzinfo=UTC), t + timedelta(hours=2), sha="2")
    _manifest(db, po.format("again"), "rejected", datetime(2026, 11, 22, tzinfo=UTC), t, sha="1")
    _manifest(db, po.format("again"), "duplicate", datetime(2026, 11, 22, tzinfo=UTC), t + timedelta(hours=2), sha="1")
    _manifest(db, po.format("future_run"), "rejected", datetime(2026, 11, 22, tzinfo=UTC), db.AS_OF + timedelta(days=1))

    for run_as_of, stale in ((db.AS_OF - timedelta(days=1), True), (db.AS_OF, False)):
        db.insert("ingest.feed_status", system="erp", feed="item_master", stale=stale, run_as_of=run_as_of)
    db.insert("ingest.feed_status", system="planning", feed="forecast", stale=True, run_as_of=db.AS_OF,
              newest_file=fc, age_hours=216.0, freshness_limit_hours=192.0)

    run(db, settings, db.AS_OF)
    assert open_refs(db, "UNMAPPED_CODE") == {"planning/item/PRD-X"}
    unmapped = json.loads(db.rows("SELECT details FROM marts.exceptions WHERE exception_type = 'UNMAPPED_CODE'")[0]
                          ["details"])
    assert unmapped["rows"] == 2
    cv = db.rows("SELECT * FROM marts.exceptions WHERE exception_type = 'CONTRACT_VIOLATION'")
    assert [(r["reference"], json.loads(r["details"])["rule"], json.loads(r["details"])["rows"]) for r in cv] == [
        (fc, "bad_number", 2)]
    assert open_refs(db, "FEED_REJECTED") == {inv.format("0300"), po.format("old"), po.format("again")}
    assert open_refs(db, "STALE_FEED") == {"planning/forecast"}
    kinds = {r["exception_type"]: (r["severity"], r["planner_code"], r["item_id"]) for r in db.rows(
        "SELECT * FROM marts.exceptions")}
    assert kinds == {
        "UNMAPPED_CODE": ("medium", "UNASSIGNED", None),
        "CONTRACT_VIOLATION": ("medium", "UNASSIGNED", None),
        "FEED_REJECTED": ("high", "UNASSIGNED", None),
        "STALE_FEED": ("high", "UNASSIGNED", None),
    }


def test_results_do_not_depend_on_the_session_time_zone(db, settings):
    _drifting(db, "A", 90)
    db.po("4500000001", "A", "1010", 10, date(2026, 11, 9), confirmed=None)
    db.recommendation("R1", "A", "1010", 5)
    # an as_of just after midnight UTC is still the previous evening in New York
    as_of = datetime(2026, 11, 30, 0, 30, tzinfo=UTC)
    run(db, settings, as_of)
    utc = db.rows("SELECT * EXCLUDE (first_seen_at, last_seen_at) FROM marts.exceptions ORDER BY exception_id")
    for table in ("marts.exception_state", "marts.exception_clock", "marts.exception_events"):
        db.con.execute(f"DELETE FROM {table}")
    db.con.execute("SET TimeZone = 'America/New_York'")
    run(db, settings, as_of)
    assert db.rows("SELECT * EXCLUDE (first_seen_at, last_seen_at) FROM marts.exceptions ORDER BY exception_id") == utc
    assert json.loads(db.rows(
        "SELECT details FROM marts.exceptions WHERE exception_type = 'LATE_PO'")[0]["details"])["days_late"] == 21


def test_seeing_an_open_exception_again_moves_the_clock_not_the_row(db, settings):
    _drifting(db, "A", 90)
    run(db, settings, db.AS_OF)
    stored = db.rows("SELECT * FROM marts.exception_state")
    later = db.AS_OF + timedelta(days=3, hours=2)
    run(db, settings, later)
    assert db.rows("SELECT * FROM marts.exception_state") == stored  # nothing rewritten
    a = db.row("marts.exceptions", "A", "1010")
    assert (a["status"], a["first_seen_at"], a["last_seen_at"], a["age_days"]) == ("open", db.AS_OF, later, 3)
    _set_wms(db, "A", 100)  # fixed: resolved, last seen by the previous run
    run(db, settings, later + timedelta(days=1))
    a = db.row("marts.exceptions", "A", "1010")
    assert (a["status"], a["last_seen_at"], a["resolved_at"], a["age_days"]) == \
        ("resolved", later, later + timedelta(days=1), 4)


def test_exceptions_table_of_an_older_warehouse_becomes_the_state(db, settings):
    from reconciliation.marts_ddl import EXCEPTIONS_COLUMNS

    db.con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    db.con.execute(f"CREATE TABLE marts.exceptions ({EXCEPTIONS_COLUMNS})")
    earlier = db.AS_OF - timedelta(days=5)
    db.con.execute("INSERT INTO marts.exceptions (exception_id, exception_type, severity, status, item_id, "
                   "location_id, reference, planner_code, first_seen_at, last_seen_at, age_days) VALUES "
                   "(md5('INVENTORY_DRIFT|A|1010|wms'), 'INVENTORY_DRIFT', 'low', 'open', 'A', '1010', 'wms', 'P09', "
                   "?, ?, 2)", [earlier, earlier + timedelta(days=2)])
    _drifting(db, "A", 90)
    meta = run(db, settings, db.AS_OF)
    assert (meta["opened"], meta["open_exceptions"]) == (0, 1)  # the same problem, still open
    a = db.row("marts.exceptions", "A", "1010")
    assert (a["first_seen_at"], a["last_seen_at"], a["age_days"]) == (earlier, db.AS_OF, 5)
