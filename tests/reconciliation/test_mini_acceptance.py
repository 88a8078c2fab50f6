"""Acceptance: the mini landing folder, ingested and reconciled, reports what its
expected.json says about the marts and the exceptions."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest

from contracts.settings import Settings
from reconciliation import build_exceptions, build_forecast_order_alignment, build_inventory_drift, build_kpis
from tests.conftest import MINI, MINI_AS_OF

ingest = pytest.importorskip("contracts.ingest", reason="the ingestion layer is not there yet")
EXPECTED = json.loads((MINI / "expected.json").read_text())


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    landing = tmp_path_factory.mktemp("mini_recon") / "landing"
    shutil.copytree(MINI / "landing", landing)
    settings = Settings()
    con = duckdb.connect()
    ingest.ingest_landing(con, str(landing), settings, MINI_AS_OF)
    try:  # ingest_landing builds canonical as it goes; a separate build step is optional
        from contracts.canonical_build import build_canonical
    except ImportError:
        build_canonical = None
    if build_canonical is not None:
        build_canonical(con, settings, MINI_AS_OF)
    build_inventory_drift(con, settings, MINI_AS_OF)
    build_forecast_order_alignment(con, settings, MINI_AS_OF)
    build_exceptions(con, settings, MINI_AS_OF)
    build_kpis(con, settings, MINI_AS_OF)
    yield con
    con.close()


def _pairs(con, sql):
    return {tuple(r) for r in con.execute(sql).fetchall()}


def _open(con, exception_type):
    return {r[0] for r in con.execute(
        "SELECT reference FROM marts.exceptions WHERE status = 'open' AND exception_type = ?",
        [exception_type]).fetchall()}


def _open_keys(con, exception_type):
    return _pairs(con, f"""SELECT item_id, location_id FROM marts.exceptions
                           WHERE status = 'open' AND exception_type = '{exception_type}'""")


def _as_pairs(key):
    return {tuple(x) for x in EXPECTED[key]}


@pytest.mark.parametrize("pair", ["wms", "planning"])
def test_drift_exactly(warehouse, pair):
    got = _pairs(warehouse, f"SELECT item_id, location_id FROM marts.inventory_drift WHERE status_{pair} = 'drift'")
    assert got == _as_pairs(f"drift_{pair}")
    raised = _pairs(warehouse, f"""SELECT item_id, location_id FROM marts.exceptions
                                   WHERE status = 'open' AND exception_type = 'INVENTORY_DRIFT'
                                     AND reference = '{pair}'""")
    assert raised == got


def test_unverifiable(warehouse):
    got = _pairs(warehouse, "SELECT item_id, location_id FROM marts.inventory_drift WHERE status = 'unverifiable'")
    assert got == _as_pairs("unverifiable")


def test_must_match(warehouse):
    status = dict(((r[0], r[1]), r[2]) for r in warehouse.execute(
        "SELECT item_id, location_id, status FROM marts.inventory_drift").fetchall())
    not_matching = {k: status.get(k) for k in _as_pairs("must_match") if status.get(k) != "match"}
    assert not_matching == {}


def test_unmapped_codes_open(warehouse):
    refs = _open(warehouse, "UNMAPPED_CODE")
    got = {(r.split("/")[0], r.split("/", 2)[2]) for r in refs}
    assert _as_pairs("unmapped") <= got


def test_stale_feeds_open(warehouse):
    assert {tuple(x) for x in EXPECTED["stale_feeds"]} <= {tuple(r.split("/")) for r in _open(warehouse, "STALE_FEED")}


@pytest.mark.parametrize("key,exception_type", [
    ("late_po", "LATE_PO"),
    ("unconfirmed_po", "UNCONFIRMED_PO"),
    ("unconverted_rec", "UNCONVERTED_RECOMMENDATION"),
    ("rec_qty_mismatch", "RECOMMENDATION_QTY_MISMATCH"),
])
def test_po_and_recommendation_exceptions_exactly(warehouse, key, exception_type):
    assert _open(warehouse, exception_type) == set(EXPECTED[key])


def test_not_unconverted(warehouse):
    assert _open(warehouse, "UNCONVERTED_RECOMMENDATION").isdisjoint(EXPECTED["not_unconverted_rec"])


@pytest.mark.parametrize("key,exception_type", [("shortage", "PROJECTED_SHORTAGE"), ("excess", "EXCESS_SUPPLY")])
def test_shortage_and_excess_exactly(warehouse, key, exception_type):
    assert _open_keys(warehouse, exception_type) == _as_pairs(key)


def test_alignment_rows(warehouse):
    rows = {f"{r[0]}|{r[1]}": {"status": r[2], "proposal_qty": r[3], "first_shortage_week": r[4]}
            for r in warehouse.execute(
                """SELECT item_id, location_id, status, proposal_qty, first_shortage_week
                   FROM marts.forecast_order_alignment""").fetchall()}
    assert set(rows) == set(EXPECTED["alignment"])
    for key, want in EXPECTED["alignment"].items():
        got = rows[key]
        assert got["status"] == want["status"], key
        assert got["first_shortage_week"] == want["first_shortage_week"], key
        assert got["proposal_qty"] == pytest.approx(want["proposal_qty"]), key


def test_proposals_sum_to_proposal_qty(warehouse):
    diff = warehouse.execute(
        """SELECT count(*) FROM marts.forecast_order_alignment a
           LEFT JOIN (SELECT item_id, location_id, sum(quantity) AS q FROM marts.replenishment_proposal GROUP BY ALL) p
           USING (item_id, location_id)
           WHERE abs(coalesce(p.q, 0) - a.proposal_qty) > 1e-6""").fetchone()[0]
    assert diff == 0


def test_rerun_same_as_of_changes_nothing(warehouse):
    before = warehouse.execute("SELECT * FROM marts.exceptions ORDER BY exception_id").fetchall()
    events = warehouse.execute("SELECT count(*) FROM marts.exception_events").fetchone()[0]
    settings = Settings()
    build_inventory_drift(warehouse, settings, MINI_AS_OF)
    build_forecast_order_alignment(warehouse, settings, MINI_AS_OF)
    build_exceptions(warehouse, settings, MINI_AS_OF)
    assert warehouse.execute("SELECT * FROM marts.exceptions ORDER BY exception_id").fetchall() == before
    assert warehouse.execute("SELECT count(*) FROM marts.exception_events").fetchone()[0] == events


def test_kpis_written(warehouse):
    kpis = dict(warehouse.execute("SELECT kpi, value FROM marts.kpis").fetchall())
    assert {"drift_rate", "drift_value_total", "alignment_rate", "open_exceptions", "files_rejected"} <= set(kpis)
    assert kpis["files_rejected"] == len(EXPECTED["rejected_files"])
