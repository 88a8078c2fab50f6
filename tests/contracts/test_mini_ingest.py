"""Acceptance: the mini landing folder ingests exactly as its expected.json says."""

import json
import shutil

import duckdb

import pytest

from contracts.ingest import ingest_landing
from contracts.settings import Settings
from tests.conftest import MINI, MINI_AS_OF

EXPECTED = json.loads((MINI / "expected.json").read_text())


@pytest.fixture(scope="module")
def mini_landing(tmp_path_factory):
    dest = tmp_path_factory.mktemp("mini") / "landing"
    shutil.copytree(MINI / "landing", dest)
    return dest


@pytest.fixture(scope="module")
def ingested(mini_landing):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ingest_landing(con, str(mini_landing), Settings(), MINI_AS_OF, mini_landing.parent / "lake")
    yield con
    con.close()


def test_manifest_rejects_exactly_the_expected_files(ingested):
    rejected = {r[0] for r in ingested.execute("SELECT file_path FROM ingest.manifest WHERE outcome = 'rejected'").fetchall()}
    assert rejected == set(EXPECTED["rejected_files"])
    reasons = dict(ingested.execute("SELECT file_path, reason FROM ingest.manifest WHERE outcome = 'rejected'").fetchall())
    assert "delimiter" in reasons["erp/location_master/location_master_20261123T070000Z.csv"]
    assert "JSON" in reasons["planning/inventory_position/inventory_position_20261124T030000Z.jsonl"]
    assert "over the 5% limit" in reasons["planning/planned_order/planned_order_20261120T090000Z.jsonl"]


def test_every_landing_file_is_in_the_manifest_once(ingested, mini_landing):
    files = {str(p.relative_to(mini_landing)) for p in mini_landing.rglob("*") if p.is_file()}
    rows = ingested.execute("SELECT file_path, count(*) FROM ingest.manifest GROUP BY 1").fetchall()
    assert {r[0] for r in rows} == files
    assert all(n == 1 for _, n in rows)


def test_quarantined_row_counts_per_file(ingested):
    for file_path, n in EXPECTED["quarantine_rules"].items():
        got = ingested.execute(
            "SELECT count(DISTINCT row_number) FROM ingest.quarantine WHERE file_path = ?", [file_path]).fetchone()[0]
        assert got == n, file_path
        manifest = ingested.execute(
            "SELECT rows_quarantined, outcome FROM ingest.manifest WHERE file_path = ?", [file_path]).fetchone()
        assert manifest == (n, "accepted")


def test_quarantine_rows_carry_rule_row_number_and_raw_values(ingested):
    rows = ingested.execute(
        """SELECT row_number, rule, "column", raw FROM ingest.quarantine
           WHERE file_path = 'erp/inventory_balance/inventory_balance_20261124T060000Z.csv' ORDER BY row_number"""
    ).fetchall()
    rules = {r[1] for r in rows}
    assert rules == {"malformed_key", "negative_quantity", "unknown_item"}
    for row_number, rule, column, raw in rows:
        values = json.loads(raw)
        assert set(values) == {"MATNR", "WERKS", "LGORT", "LABST", "INSME", "SPEME", "MEINS", "EXTRACTED_AT"}
        if rule == "malformed_key":
            assert values["MATNR"] == "ABC" and column == "MATNR"
        if rule == "negative_quantity":
            assert values["LABST"] == "-7.000"
    # the file's physical line = row_number + 1 (header)
    lines = (MINI / "landing/erp/inventory_balance/inventory_balance_20261124T060000Z.csv").read_text().splitlines()
    by_rule = {r[1]: r[0] for r in rows}
    assert lines[by_rule["malformed_key"]].startswith("ABC|")


def test_unmapped_codes_are_quarantined_as_unmapped_code(ingested):
    got = {(s, c) for s, c in ingested.execute(
        "SELECT system, code FROM ingest.quarantine WHERE rule = 'unmapped_code'").fetchall()}
    for system, code in EXPECTED["unmapped"]:
        assert (system, code) in got


def test_canonical_quantities_are_in_base_units(ingested, mini_landing):
    # a forecast delivered in cases (CS = 24 EA for the first product) is stored in EA
    cs = ingested.execute(
        """SELECT f.source_qty, f.qty, u.factor FROM canonical.forecast f
           JOIN canonical.uom_conversion u ON u.item_id = f.item_id AND u.uom = f.source_uom
           WHERE f.source_uom <> 'EA'""").fetchall()
    assert cs, "the mini forecast has rows in alternative units"
    assert all(abs(q - s * fac) < 1e-9 for s, q, fac in cs)
    # the fractional PK factor 5/2 is applied, never assumed 1
    factors = dict(ingested.execute(
        "SELECT uom, any_value(factor) FROM canonical.uom_conversion WHERE uom = 'PK' GROUP BY 1").fetchall())
    assert factors["PK"] == 2.5
    # ERP stock: LABST + INSME + SPEME in the base unit
    erp = ingested.execute(
        """SELECT qty, unrestricted_qty + quality_qty + blocked_qty FROM canonical.inventory_snapshot
           WHERE system = 'erp'""").fetchall()
    assert erp and all(abs(a - b) < 1e-9 for a, b in erp)


def test_conflicting_duplicate_makes_its_key_unverifiable(ingested):
    keys = ingested.execute("SELECT system, item_id, location_id FROM canonical.conflict_key").fetchall()
    assert [(s, i, l) for s, i, l in keys] == [("wms", *EXPECTED["unverifiable"][0])]


def test_stale_feeds(ingested):
    stale = {(s, f) for s, f in ingested.execute(
        "SELECT system, feed FROM ingest.feed_status WHERE stale").fetchall()}
    assert stale == {tuple(x) for x in EXPECTED["stale_feeds"]}


def test_degraded_mode_keeps_previous_accepted_version_current(ingested):
    current = {f: p for p, f in ingested.execute("SELECT file_path, feed FROM ingest.current_files").fetchall()
               if f in ("location_master", "inventory_position")}
    assert current["location_master"].endswith("location_master_20261121T090000Z.csv")
    assert current["inventory_position"].endswith("inventory_position_20261124T020000Z.jsonl")


def test_ingesting_the_same_landing_twice_changes_nothing(ingested, mini_landing, monkeypatch):
    # nothing new to map, so no feed reads the master data (an hourly run's unchanged feeds)
    def no_reference_load(con):
        raise AssertionError("references loaded for a landing with no new file")

    monkeypatch.setattr("contracts.ingest.load_references", no_reference_load)
    tables = ["ingest.manifest", "ingest.quarantine", "canonical.inventory_snapshot", "canonical.forecast",
              "canonical.inventory_txn", "canonical.purchase_order_line", "ingest.current_files"]
    before = {t: sorted(ingested.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    results = ingest_landing(ingested, str(mini_landing), Settings(), MINI_AS_OF, mini_landing.parent / "lake")
    assert sum(len(r.files) for r in results.values()) == 0
    after = {t: sorted(ingested.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    assert before == after
