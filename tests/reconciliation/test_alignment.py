"""§4 projection, shortage, netting, excess and status on hand-built canonical tables."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import date, timedelta

import pytest

from reconciliation import build_forecast_order_alignment


def _setup(db, item="1", loc="1010", *, on_hand=0.0, ss=0.0, lead_days=0, multiple=0.0, demand=None, planner="P01"):
    db.item(item)
    db.item_location(item, loc, planner=planner, lead_days=lead_days, ss=ss, multiple=multiple)
    if on_hand:
        db.snap("erp", item, loc, on_hand)
    if demand is not None:
        db.forecast(item, loc, demand)


def _proposals(db, item="1", loc="1010"):
    return {r["week"]: r["quantity"] for r in db.rows(
        "SELECT week, quantity FROM marts.replenishment_proposal WHERE item_id = ? AND location_id = ? ORDER BY week",
        [item, loc])}


def test_week_zero_is_the_iso_week_of_run_date(db, settings):
    # as_of Tuesday 09:00 UTC: week 0 starts Monday 23rd; a forecast for the 16th is past.
    _setup(db, on_hand=10, demand=[5])
    db.forecast("1", "1010", [100], start=-1)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["demand_horizon"] == 5 and r["week0_start"] == date(2026, 11, 23)
    # a Sunday late-evening as_of still belongs to the week that started on Monday
    build_forecast_order_alignment(db.con, settings, "2026-11-29T23:59:59Z")
    assert db.row("marts.forecast_order_alignment", "1", "1010")["week0_start"] == date(2026, 11, 23)


def test_shortage_in_frozen_window_and_netting_after_it(db, settings):
    # on hand 10, SS 20, lead time 10 days -> L = 2; 5 per week of demand
    _setup(db, on_hand=10, ss=20, lead_days=10, demand=[5] * 12)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["lead_time_weeks"] == 2
    assert r["first_shortage_week"] == 0 and r["shortage_qty"] == 15  # SS - P_0 = 20 - 5
    assert r["status"] == "shortage_in_lead_time"
    # week 2: P = 10 - 15 = -5 -> propose 25; then 5 a week
    assert _proposals(db) == {2: 25.0, **{w: 5.0 for w in range(3, 12)}}
    assert r["proposal_qty"] == 70


def test_shortage_outside_frozen_window_only_needs_an_order(db, settings):
    _setup(db, on_hand=30, ss=0, lead_days=7, demand=[10] * 12)  # L = 1; P = 20, 10, 0, -10, ...
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["first_shortage_week"] == 3  # P_2 = 0 is not below SS = 0
    assert r["shortage_qty"] == 0 and r["status"] == "needs_order"


def test_order_multiple_rounding(db, settings):
    _setup(db, on_hand=50, ss=0, multiple=24, demand=[10] * 12)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    # P_w = 40, 30, 20, 10, 0, -10 -> week 5 short by 10 -> 24; P' = 14, 4, -6 -> week 7: 24; 18, 8, -2 -> 9
    assert _proposals(db) == {5: 24.0, 7: 24.0, 9: 24.0}
    proj = {r["week"]: r for r in db.rows("SELECT * FROM marts.projection ORDER BY week")}
    assert proj[5]["projected"] == -10 and proj[5]["projected_with_proposals"] == 14
    assert proj[11]["projected_with_proposals"] == 2
    assert min(r["projected_with_proposals"] for r in proj.values()) >= 0


def test_fractional_order_multiple(db, settings):
    _setup(db, on_hand=0, ss=0, multiple=2.5, demand=[3] + [0] * 11)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    assert _proposals(db) == {0: 5.0}


def test_zero_demand_coverage_is_null(db, settings):
    _setup(db, "a", on_hand=10, demand=[0] * 12)  # a forecast, all zeros
    _setup(db, "b", on_hand=10)  # no forecast at all
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    a = db.row("marts.forecast_order_alignment", "a", "1010")
    b = db.row("marts.forecast_order_alignment", "b", "1010")
    assert a["coverage_ratio"] is None and b["coverage_ratio"] is None
    assert a["has_forecast"] is True and b["has_forecast"] is False
    assert a["status"] == b["status"] == "aligned"


def test_po_lines_past_due_deleted_completed_and_beyond_horizon(db, settings):
    _setup(db, on_hand=0, demand=[0] * 12)
    db.po("past_due", "1", "1010", 10, db.WEEK0 - timedelta(days=20))
    db.po("partial", "1", "1010", 10, db.week(1), received=4)
    db.po("deleted", "1", "1010", 100, db.week(1), deleted=True)
    db.po("completed", "1", "1010", 100, db.week(1), received=50, completed=True)
    db.po("over_received", "1", "1010", 10, db.week(1), received=12)
    db.po("beyond", "1", "1010", 100, db.week(12))
    db.po("last_week", "1", "1010", 1, db.week(11) + timedelta(days=6))
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    proj = {r["week"]: r["supply"] for r in db.rows("SELECT week, supply FROM marts.projection")}
    assert proj[0] == 10 and proj[1] == 6 and proj[11] == 1
    assert sum(proj.values()) == 17
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["supply_horizon"] == 17 and r["late_supply_qty"] == 10


def test_fractional_factor_supply_and_demand(db, settings):
    # PO of 3 PK (5/2 EA each) = 7.5 EA; forecast of 2 PK = 5 EA (conversion done in canonical)
    _setup(db, on_hand=0, ss=0, demand=[2 * 2.5] + [0] * 11)
    db.po("pk", "1", "1010", 3 * 2.5, db.week(0))
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["coverage_ratio"] == pytest.approx(1.5)
    assert r["first_shortage_week"] is None and r["proposal_qty"] == 0


def test_excess_needs_a_line_after_the_lead_time(db, settings):
    # on hand 100, demand 1/week, SS 0 -> P_11 = 88 + supply; threshold = 8 x 1 = 8
    _setup(db, "late_line", on_hand=100, lead_days=14, demand=[1] * 12)
    db.po("a", "late_line", "1010", 50, db.week(5))
    _setup(db, "early_line", on_hand=100, lead_days=14, demand=[1] * 12)
    db.po("b", "early_line", "1010", 50, db.week(1))  # inside the frozen window (L = 2)
    _setup(db, "past_due_l0", on_hand=100, lead_days=0, demand=[1] * 12)
    db.po("c", "past_due_l0", "1010", 50, db.WEEK0 - timedelta(days=3))  # supplies week 0 = L
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    late = db.row("marts.forecast_order_alignment", "late_line", "1010")
    assert late["status"] == "excess" and late["excess_qty"] == pytest.approx(138 - 8)
    assert late["open_line_after_lead_time"] is True and late["last_supply_week"] == 5
    early = db.row("marts.forecast_order_alignment", "early_line", "1010")
    assert early["excess_qty"] == 0 and early["status"] == "aligned"
    assert db.row("marts.forecast_order_alignment", "past_due_l0", "1010")["status"] == "excess"


def test_excess_ignores_proposals_and_status_precedence(db, settings):
    # short in the frozen window, then a big receipt: shortage_in_lead_time wins, excess still computed
    _setup(db, on_hand=0, ss=10, lead_days=14, demand=[5] * 12)
    db.po("big", "1", "1010", 1000, db.week(3))
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["status"] == "shortage_in_lead_time"
    assert r["excess_qty"] == pytest.approx(1000 - 60 - (10 + 8 * 5))
    assert r["proposal_qty"] == 25  # week 2 (= L): P_2 = -15 -> 25; the receipt covers the rest


def test_planner_proposal_payload_columns(db, settings):
    _setup(db, "42", "1020", ss=5, planner=None, demand=[1])
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    (p,) = db.rows("SELECT * FROM marts.replenishment_proposal")
    assert p["planner_code"] == "UNASSIGNED" and p["matnr"] == "000000000000000042"
    assert p["need_date"] == db.WEEK0 and p["need_date"].weekday() == 0
    assert p["quantity"] == 6 and p["base_uom"] == "EA" and p["forecast_version"] == "FV1"


def test_forecast_version_falls_back_to_the_current_version(db, settings):
    _setup(db, "a", ss=5)  # no forecast of its own
    _setup(db, "b", on_hand=5, demand=[1])
    build_forecast_order_alignment(db.con, settings, db.AS_OF)
    (p,) = db.rows("SELECT * FROM marts.replenishment_proposal")
    assert p["item_id"] == "a" and p["forecast_version"] == "FV1"


def test_horizon_setting_and_projection_switch(db, settings):
    _setup(db, on_hand=0, ss=0, demand=[1] * 20)
    meta = build_forecast_order_alignment(db.con, dataclasses.replace(settings, horizon_weeks=16), db.AS_OF,
                                          write_projection=False)
    r = db.row("marts.forecast_order_alignment", "1", "1010")
    assert r["demand_horizon"] == 16 and r["horizon_weeks"] == 16 and len(_proposals(db)) == 16
    assert db.rows("SELECT count(*) AS n FROM marts.projection")[0]["n"] == 0
    assert meta["proposals"] == 16 and meta["alignment_rate"] == 0.0


def test_alignment_rate_counts_only_item_locations_with_a_forecast(db, settings):
    _setup(db, "aligned", on_hand=100, demand=[1] * 12)
    _setup(db, "short", on_hand=0, ss=0, demand=[1] * 12)
    _setup(db, "no_fc", on_hand=0)
    meta = build_forecast_order_alignment(db.con, settings, db.AS_OF)
    assert meta["with_forecast"] == 2 and meta["alignment_rate"] == 0.5


# --- the closed form of netting against the sequential rule ---------------------------

def _sequential(on_hand, ss, lead_days, multiple, demand, supply, h, eps=1e-6):
    lead = math.ceil(lead_days / 7)
    p, acc = [], on_hand
    for w in range(h):
        acc += supply[w] - demand[w]
        p.append(acc)
    first = next((w for w in range(h) if p[w] < ss - eps), None)
    shortage = ss - p[first] if first is not None and first < lead else 0.0
    proposals, cum = {}, 0.0
    for w in range(lead, h):
        projected = p[w] + cum
        if projected < ss - eps:
            q = ss - projected
            if multiple > 0:
                q = multiple * math.ceil(q / multiple - 1e-9)
            proposals[w] = q
            cum += q
    return first, shortage, proposals, p


def test_closed_form_netting_equals_the_sequential_rule(db, settings):
    rng = random.Random(20261124)
    h = settings.horizon_weeks
    cases, il, erp, fc, po = {}, [], [], [], []
    for n in range(400):
        item = f"i{n}"
        on_hand = rng.choice([0, 0, rng.randint(0, 300)])
        ss = rng.choice([0, 10, 25, 50.5])
        lead_days = rng.choice([0, 3, 7, 10, 14, 28, 90])
        multiple = rng.choice([0, 0, 1, 2.5, 6, 12, 24, 7.5])
        demand = [float(rng.choice([0, rng.randint(0, 60), rng.randint(0, 60) + 0.5])) for _ in range(h)]
        il.append(dict(item_id=item, location_id="1010", planner_code="P1", lead_time_days=lead_days,
                       safety_stock=float(ss), order_multiple=float(multiple)))
        erp.append(dict(system="erp", item_id=item, location_id="1010", qty=float(on_hand), snapshot_at=db.T_ERP))
        fc += [dict(item_id=item, location_id="1010", week_start=db.week(w), qty=demand[w], forecast_version="F")
               for w in range(h)]
        supply = [0.0] * h
        for k in range(rng.randint(0, 3)):
            w = rng.randint(-2, h + 1)
            qty = float(rng.randint(1, 200))
            po.append(dict(ebeln=f"{item}-{k}", ebelp="00010", item_id=item, location_id="1010",
                           delivery_date=db.week(w) + timedelta(days=rng.randint(0, 6)),
                           ordered_qty=qty, received_qty=0.0, deleted=False, delivery_completed=False))
            if w < h:
                supply[max(w, 0)] += qty
        cases[item] = (on_hand, ss, lead_days, multiple, demand, supply)
    db.bulk("canonical.item_location", il)
    db.bulk("canonical.inventory_snapshot", erp)
    db.bulk("canonical.forecast", fc)
    db.bulk("canonical.purchase_order_line", po)
    build_forecast_order_alignment(db.con, settings, db.AS_OF)

    got = {r["item_id"]: r for r in db.rows("SELECT * FROM marts.forecast_order_alignment")}
    props = {}
    for r in db.rows("SELECT item_id, week, quantity FROM marts.replenishment_proposal"):
        props.setdefault(r["item_id"], {})[r["week"]] = r["quantity"]
    proj = {}
    for r in db.rows("SELECT item_id, week, projected FROM marts.projection"):
        proj.setdefault(r["item_id"], {})[r["week"]] = r["projected"]
    for item, (on_hand, ss, lead_days, multiple, demand, supply) in cases.items():
        first, shortage, proposals, p = _sequential(on_hand, ss, lead_days, multiple, demand, supply, h)
        row = got[item]
        assert row["first_shortage_week"] == first, item
        assert row["shortage_qty"] == pytest.approx(shortage), item
        assert props.get(item, {}) == pytest.approx(proposals), item
        assert row["proposal_qty"] == pytest.approx(sum(proposals.values())), item
        assert [proj[item][w] for w in range(h)] == pytest.approx(p), item
