"""§3 inventory drift on hand-built canonical tables."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from contracts.settings import Tolerance
from reconciliation import build_inventory_drift


def _three_systems(db, item="1", loc="1010", erp=100.0, wms=100.0, planning=100.0):
    db.item(item)
    db.snap("erp", item, loc, erp)
    db.snap("wms", item, loc, wms)
    db.snap("planning", item, loc, planning)


def test_snapshot_after_erp_is_rolled_back_by_movements(db, settings):
    # WMS counted at 08:00, ERP at 06:00; 10 shipped at 07:00 -> WMS shows 90 but matches.
    _three_systems(db, wms=90.0)
    db.txn("t1", "1", "1010", -10, db.T_ERP + db.hours(1))
    db.txn("t_before_all", "1", "1010", -5, db.T_PLAN - db.hours(1))  # already in every snapshot
    db.txn("t_after_wms", "1", "1010", -7, db.T_WMS + db.hours(0.5))  # in neither
    build_inventory_drift(db.con, settings, db.AS_OF)
    r = db.row("marts.inventory_drift", "1", "1010")
    assert r["wms_qty"] == 90 and r["wms_aligned_qty"] == 100
    assert r["status_wms"] == "match" and r["status"] == "match"
    assert r["wms_movement_qty"] == -10


def test_snapshot_before_erp_is_rolled_forward(db, settings):
    # planning counted at 02:00 (110), 10 shipped at 04:00, ERP at 06:00 says 100.
    _three_systems(db, planning=110.0)
    db.txn("t1", "1", "1010", -10, db.T_PLAN + db.hours(2))
    build_inventory_drift(db.con, settings, db.AS_OF)
    r = db.row("marts.inventory_drift", "1", "1010")
    assert r["planning_aligned_qty"] == 100 and r["diff_planning"] == 0
    assert r["status_planning"] == "match"
    assert r["planning_as_of"] == db.T_PLAN and r["erp_as_of"] == db.T_ERP


def test_interval_boundaries(db, settings):
    # (T_e, T_w] for a later snapshot, (T_p, T_e] for an earlier one.
    _three_systems(db, wms=103.0, planning=100.0)
    db.txn("at_erp", "1", "1010", 2, db.T_ERP)  # in ERP already; counts for planning, not WMS
    db.txn("at_wms", "1", "1010", 3, db.T_WMS)  # in WMS; rolled back
    db.txn("at_plan", "1", "1010", 50, db.T_PLAN)  # in planning already: not counted
    build_inventory_drift(db.con, settings, db.AS_OF)
    r = db.row("marts.inventory_drift", "1", "1010")
    assert r["wms_aligned_qty"] == 100
    assert r["planning_aligned_qty"] == 102 and r["status_planning"] == "drift"


def test_fractional_unit_factor_quantities(db, settings):
    # canonical quantities already converted with PK = 5/2 base units
    db.item("1", cost=4.0)
    db.snap("erp", "1", "1010", 3 * 2.5)  # 3 PK
    db.snap("wms", "1", "1010", 7.0)  # 7 each counted
    db.snap("planning", "1", "1010", 3 * 2.5)
    build_inventory_drift(db.con, settings, db.AS_OF)
    r = db.row("marts.inventory_drift", "1", "1010")
    assert r["erp_qty"] == 7.5
    assert r["diff_wms"] == pytest.approx(-0.5)
    assert r["drift_value_wms"] == pytest.approx(2.0)
    assert r["status_wms"] == "drift" and r["status_planning"] == "match"
    assert r["severity_wms"] == "low"


def test_keys_absent_from_one_or_two_systems(db, settings):
    db.item("1")
    db.item("2")
    db.item("3")
    db.snap("erp", "1", "1010", 5)  # ERP only
    db.snap("wms", "2", "1010", 4)  # WMS only
    db.snap("planning", "2", "1010", 4)
    # ERP 10 at 06:00, all of it shipped at 07:00: WMS has no row at 08:00 -> match
    db.snap("erp", "3", "1010", 10)
    db.snap("planning", "3", "1010", 10)
    db.snap("wms", "other", "1010", 1)  # the WMS snapshot exists (at 08:00)
    db.txn("t", "3", "1010", -10, db.T_ERP + db.hours(1))
    build_inventory_drift(db.con, settings, db.AS_OF)

    only_erp = db.row("marts.inventory_drift", "1", "1010")
    assert (only_erp["erp_present"], only_erp["wms_present"], only_erp["planning_present"]) == (True, False, False)
    assert only_erp["diff_wms"] == -5 and only_erp["diff_planning"] == -5
    assert only_erp["status_wms"] == only_erp["status_planning"] == "drift"
    assert only_erp["wms_as_of"] == db.T_WMS  # the system's snapshot time, not null

    no_erp = db.row("marts.inventory_drift", "2", "1010")
    assert no_erp["erp_present"] is False and no_erp["erp_qty"] == 0
    assert no_erp["diff_wms"] == 4 and no_erp["status"] == "drift"

    moved_out = db.row("marts.inventory_drift", "3", "1010")
    assert moved_out["wms_present"] is False and moved_out["wms_aligned_qty"] == 10
    assert moved_out["status"] == "match"


def test_tolerances_global_group_location(db, settings):
    settings = dataclasses.replace(
        settings,
        abs_tol=0.0,
        rel_tol=0.0,
        tolerance_by_material_group={"MG01": Tolerance(abs_tol=2.0), "MG02": Tolerance(rel_tol=0.1)},
        tolerance_by_location={"1010": Tolerance(abs_tol=0.5)},
    )
    db.item("g1", group="MG01")
    db.item("g2", group="MG02")
    db.item("g3", group="MG03")
    for item, loc, erp, other in [
        ("g1", "1020", 100, 101.5),  # group abs 2 -> within
        ("g1", "1010", 100, 101.5),  # location abs 0.5 wins over the group -> drift
        ("g2", "1020", 100, 108.0),  # group rel 10 % of 100 -> within
        ("g3", "1020", 100, 100.5),  # global 0 -> drift
        ("g3", "1030", 100, 100.0000001),  # |diff| <= 1e-6 -> match
    ]:
        db.snap("erp", item, loc, erp)
        db.snap("wms", item, loc, other)
        db.snap("planning", item, loc, erp)
    build_inventory_drift(db.con, settings, db.AS_OF)
    got = {(r["item_id"], r["location_id"]): (r["status_wms"], r["tolerance_source"])
           for r in db.rows("SELECT * FROM marts.inventory_drift")}
    assert got == {
        ("g1", "1020"): ("within_tolerance", "material_group"),
        ("g1", "1010"): ("drift", "location"),
        ("g2", "1020"): ("within_tolerance", "material_group"),
        ("g3", "1020"): ("drift", "global"),
        ("g3", "1030"): ("match", "global"),
    }
    assert db.row("marts.inventory_drift", "g1", "1020")["status"] == "within_tolerance"


def test_unverifiable_pairs_and_precedence(db, settings):
    for item in ("e", "w", "p", "q"):
        db.item(item)
        db.snap("erp", item, "1010", 100)
        db.snap("wms", item, "1010", 50)  # would drift
        db.snap("planning", item, "1010", 60)  # would drift
    db.conflict("erp", "e", "1010")
    db.conflict("wms", "w", "1010")
    db.conflict("planning", "p", "1010")
    db.conflict("wms", "gone", "1010")  # every row of the key was quarantined
    build_inventory_drift(db.con, settings, db.AS_OF)
    e = db.row("marts.inventory_drift", "e", "1010")
    assert (e["status_wms"], e["status_planning"], e["status"]) == ("unverifiable",) * 3
    assert e["drift_value_wms"] is None and e["severity_wms"] is None
    w = db.row("marts.inventory_drift", "w", "1010")
    assert (w["status_wms"], w["status_planning"], w["status"]) == ("unverifiable", "drift", "unverifiable")
    p = db.row("marts.inventory_drift", "p", "1010")
    assert (p["status_wms"], p["status_planning"], p["status"]) == ("drift", "unverifiable", "unverifiable")
    assert p["unverifiable_reason"] == "conflicting_duplicate_planning"
    gone = db.row("marts.inventory_drift", "gone", "1010")
    assert gone["status"] == "unverifiable" and gone["wms_present"] is False
    assert db.row("marts.inventory_drift", "q", "1010")["status"] == "drift"


def test_missing_snapshot_of_a_whole_system_is_unverifiable_not_drift(db, settings):
    db.item("1")
    db.snap("erp", "1", "1010", 10)
    db.snap("planning", "1", "1010", 10)
    build_inventory_drift(db.con, settings, db.AS_OF)
    r = db.row("marts.inventory_drift", "1", "1010")
    assert (r["status_wms"], r["status_planning"]) == ("unverifiable", "match")
    assert r["unverifiable_reason"] == "no_wms_snapshot"


def test_severity_by_value_and_planner(db, settings):
    db.item("h", cost=100.0)
    db.item("m", cost=100.0)
    db.item("l", cost=100.0)
    db.item_location("h", "1010", planner="P07")
    db.item_location("l", "1010", planner="  ")  # a blank planner code is no planner
    for item, diff in (("h", 10), ("m", 1), ("l", 0.5)):  # values 1000, 100, 50
        db.snap("erp", item, "1010", 100)
        db.snap("wms", item, "1010", 100 + diff)
        db.snap("planning", item, "1010", 100)
    meta = build_inventory_drift(db.con, settings, db.AS_OF)
    sev = {r["item_id"]: r["severity_wms"] for r in db.rows("SELECT * FROM marts.inventory_drift")}
    assert sev == {"h": "high", "m": "medium", "l": "low"}
    assert db.row("marts.inventory_drift", "h", "1010")["planner_code"] == "P07"
    assert db.row("marts.inventory_drift", "m", "1010")["planner_code"] == "UNASSIGNED"
    assert db.row("marts.inventory_drift", "l", "1010")["planner_code"] == "UNASSIGNED"
    assert meta["drift"] == 3 and meta["drift_value_total"] == pytest.approx(1150.0)
    assert "| h | 1010 | P07 |" in meta["top_drift"]


def test_history_is_idempotent_per_run(db, settings):
    _three_systems(db, wms=90.0)
    build_inventory_drift(db.con, settings, db.AS_OF)
    build_inventory_drift(db.con, settings, db.AS_OF)
    assert db.rows("SELECT count(*) AS n FROM marts.inventory_drift_history")[0]["n"] == 1
    build_inventory_drift(db.con, settings, db.AS_OF + timedelta(days=1))
    runs = db.rows("SELECT run_as_of, count(*) AS n FROM marts.inventory_drift_history GROUP BY 1 ORDER BY 1")
    assert [r["n"] for r in runs] == [1, 1]
    assert db.rows("SELECT count(*) AS n FROM marts.inventory_drift")[0]["n"] == 1


def test_outward_columns_present(db, settings):
    _three_systems(db)
    build_inventory_drift(db.con, settings, db.AS_OF)
    cols = {r["column_name"] for r in db.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_schema='marts' AND table_name='inventory_drift'")}
    contract = {
        "item_id", "location_id", "planner_code", "erp_qty", "wms_qty", "wms_aligned_qty", "planning_qty",
        "planning_aligned_qty", "erp_present", "wms_present", "planning_present", "diff_wms", "diff_planning",
        "status_wms", "status_planning", "drift_value_wms", "drift_value_planning", "status", "erp_as_of",
        "wms_as_of", "planning_as_of", "run_as_of",
    }
    assert contract <= cols
