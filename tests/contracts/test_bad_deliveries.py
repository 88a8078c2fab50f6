"""One test per problem of extracts.md "What goes wrong in real deliveries"."""

import os
from datetime import datetime, timezone

import pytest

from contracts.ingest import ingest_landing
from contracts.settings import Settings
from tests.contracts import kit
from tests.contracts.kit import M1, M2

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
TS = "20261124T060000Z"
EXTRACTED = "20261124060000"


def run(con, landing, as_of=AS_OF, settings=None):
    return ingest_landing(con, str(landing), settings or Settings(), as_of, landing.parent / "lake")


def manifest(con, feed):
    return con.execute(
        "SELECT file_path, outcome, reason, rows_read, rows_accepted, rows_quarantined, rows_duplicate "
        "FROM ingest.manifest WHERE feed = ? ORDER BY seq", [feed]).fetchall()


def rules(con, file_suffix=""):
    return sorted(con.execute(
        "SELECT row_number, rule, \"column\" FROM ingest.quarantine WHERE file_path LIKE ? ORDER BY ALL",
        [f"%{file_suffix}"]).fetchall())


def balance_rows(n_good: int = 40) -> list[str]:
    """Good ERP balance rows for two items over a few storage locations."""
    rows = []
    for i in range(n_good):
        m = M1 if i % 2 == 0 else M2
        rows.append(f"{m}|1010|{i:04d}|1.000|0.000|0.000|EA|{EXTRACTED}")
    return rows


@pytest.fixture
def landing(tmp_path):
    root = tmp_path / "landing"
    kit.masters(root)
    return root


def test_bad_values_are_quarantined_with_every_rule_they_break(con, landing):
    bad = [
        f"|1010|B001|1.000|0.000|0.000|EA|{EXTRACTED}",             # null key
        f"ABC|1010|B002|1.000|0.000|0.000|EA|{EXTRACTED}",          # malformed key
        f"{M1}|1010|B003|1,5|0.000|0.000|EA|{EXTRACTED}",           # unparseable number
        f"{M1}|1010|B004|-3.000|0.000|0.000|EA|{EXTRACTED}",        # negative stock
        f"{M1}|1010|B005|1.000|0.000|0.000|KG|{EXTRACTED}",         # unit with no conversion
        f"{M1}|1010|B006|-1.000|x|0.000|EA|2026-11-24",              # three rules at once
    ]
    kit.csv(landing, "inventory_balance", TS, balance_rows(200) + bad)
    run(con, landing)
    got = rules(con, "inventory_balance_20261124T060000Z.csv")
    assert got == [
        (201, "null_key", "MATNR"),
        (202, "malformed_key", "MATNR"),
        (203, "bad_number", "LABST"),
        (204, "negative_quantity", "LABST"),
        (205, "unknown_uom", "MEINS"),
        (206, "bad_number", "INSME"),
        (206, "bad_timestamp", "EXTRACTED_AT"),
        (206, "negative_quantity", "LABST"),
    ]
    (_, outcome, _, read, accepted, quarantined, _), = manifest(con, "inventory_balance")
    assert (outcome, read, accepted, quarantined) == ("accepted", 206, 200, 6)


def test_bad_dates_and_status_outside_the_allowed_set(con, landing):
    good = [{"recommendation_id": f"R{i}", "product_code": "PRD101", "site_code": "DC-10", "qty": 5, "uom": "EA",
             "need_date": "2026-12-01", "released_at": "2026-11-20T09:00:00+01:00", "status": "RELEASED"}
            for i in range(40)]
    bad = [dict(good[0], recommendation_id="RX1", need_date="not-a-date"),
           dict(good[0], recommendation_id="RX2", status="PENDING")]
    kit.jsonl(landing, "planned_order", "20261123T090000Z", good + bad)
    kit.parquet(landing, "stock_snapshot", "20261124T080000Z", [
        {"warehouse_code": "WHA", "sku": "SKU-101", "lot": None, "bin": f"B{i}", "qty_each": 1, "status": "AVAILABLE",
         "snapshot_at": kit.t("2026-11-24T08:00:00Z")} for i in range(30)] + [
        {"warehouse_code": "WHA", "sku": "SKU-101", "lot": None, "bin": "BX", "qty_each": 1, "status": "LOST",
         "snapshot_at": kit.t("2026-11-24T08:00:00Z")}])
    run(con, landing)
    assert rules(con, ".jsonl") == [(41, "bad_date", "need_date"), (42, "invalid_value", "status")]
    assert rules(con, ".parquet") == [(31, "invalid_value", "status")]
    # an offset timestamp is read as UTC
    released = con.execute("SELECT DISTINCT released_at FROM canonical.planned_order").fetchone()[0]
    assert released == datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def test_codes_no_xref_maps_are_unmapped_code(con, landing):
    kit.jsonl(landing, "inventory_position", "20261124T020000Z",
              [{"product_code": p, "site_code": "DC-10", "on_hand": 3, "uom": "EA", "as_of": "2026-11-24T02:00:00Z"}
               for p in ("PRD101", "PRD102")] + [
              {"product_code": "PRD-NEW", "site_code": "DC-10", "on_hand": 1, "uom": "EA", "as_of": "2026-11-24T02:00:00Z"},
              {"product_code": "PRD102", "site_code": "DC-99", "on_hand": 1, "uom": "EA", "as_of": "2026-11-24T02:00:00Z"}])
    kit.parquet(landing, "transaction", "20261124T050000Z", [
        {"txn_id": f"T{i}", "warehouse_code": "WHA", "sku": "SKU-101", "qty_each": 1, "txn_type": "RECEIPT",
         "txn_at": kit.t("2026-11-24T04:00:00Z"), "reference": None} for i in range(30)] + [
        {"txn_id": "TX", "warehouse_code": "WHA", "sku": "SKU-NEW", "qty_each": 1, "txn_type": "RECEIPT",
         "txn_at": kit.t("2026-11-24T04:00:00Z"), "reference": None}])
    run(con, landing, settings=Settings(reject_bad_row_share=0.5))
    got = con.execute("SELECT system, code_kind, code, rule FROM ingest.quarantine ORDER BY code").fetchall()
    assert got == [("planning", "location", "DC-99", "unmapped_code"),
                   ("planning", "item", "PRD-NEW", "unmapped_code"),
                   ("wms", "item", "SKU-NEW", "unmapped_code")]


def test_ids_not_in_the_masters(con, landing):
    kit.csv(landing, "inventory_balance", TS, balance_rows(40) + [
        f"000000000000099999|1010|0001|1.000|0.000|0.000|EA|{EXTRACTED}",
        f"{M1}|9999|0001|1.000|0.000|0.000|EA|{EXTRACTED}"])
    run(con, landing)
    assert rules(con, ".csv") == [(41, "unknown_item", "MATNR"), (42, "unknown_location", "WERKS")]


def test_conflicting_and_exact_duplicates_in_one_snapshot(con, landing):
    snap = kit.t("2026-11-24T08:00:00Z")
    base = [{"warehouse_code": "WHA", "sku": "SKU-101", "lot": None, "bin": f"B{i}", "qty_each": 1,
             "status": "AVAILABLE", "snapshot_at": snap} for i in range(40)]
    dup_exact = dict(base[0])
    conflict_a = {"warehouse_code": "WHB", "sku": "SKU-102", "lot": None, "bin": "C1", "qty_each": 3,
                  "status": "AVAILABLE", "snapshot_at": snap}
    conflict_b = dict(conflict_a, qty_each=4)
    kit.parquet(landing, "stock_snapshot", "20261124T080000Z", base + [dup_exact, conflict_a, conflict_b])
    run(con, landing)
    assert rules(con) == [(42, "conflicting_duplicate", None), (43, "conflicting_duplicate", None)]
    (_, outcome, _, read, accepted, quarantined, duplicate), = manifest(con, "stock_snapshot")
    assert (outcome, read, accepted, quarantined, duplicate) == ("accepted", 43, 40, 2, 1)
    assert con.execute("SELECT system, item_id, location_id FROM canonical.conflict_key").fetchall() == [
        ("wms", "102", "1020")]
    assert con.execute("SELECT count(*) FROM canonical.inventory_snapshot WHERE system = 'wms'").fetchone()[0] == 40


def test_the_same_transaction_in_two_overlapping_files_counts_once(con, landing):
    def txn(i, at):
        return {"txn_id": f"T{i}", "warehouse_code": "WHA", "sku": "SKU-101", "qty_each": 5, "txn_type": "RECEIPT",
                "txn_at": kit.t(at), "reference": "4500000001"}
    kit.parquet(landing, "transaction", "20261124T050000Z", [txn(1, "2026-11-24T04:10:00Z"), txn(2, "2026-11-24T04:50:00Z")])
    kit.parquet(landing, "transaction", "20261124T060000Z", [txn(2, "2026-11-24T04:50:00Z"), txn(3, "2026-11-24T05:30:00Z")])
    run(con, landing)
    assert con.execute("SELECT txn_id, qty FROM canonical.inventory_txn ORDER BY 1").fetchall() == [
        ("T1", 5.0), ("T2", 5.0), ("T3", 5.0)]
    # an event file with no rows is fine (not rejected)
    kit.parquet(landing, "transaction", "20261124T070000Z", [])
    run(con, landing)
    assert manifest(con, "transaction")[-1][1] == "accepted"


@pytest.mark.parametrize("case, write, reason", [
    ("wrong columns", lambda p: p.write_text("MATNR|WERKS|QTY\n000000000000000101|1010|1\n"), "wrong columns"),
    ("wrong delimiter", lambda p: p.write_text(
        "MATNR,WERKS,LGORT,LABST,INSME,SPEME,MEINS,EXTRACTED_AT\n000000000000000101,1010,0001,1,0,0,EA,20261124060000\n"),
        "wrong delimiter"),
    ("not UTF-8", lambda p: p.write_bytes(
        ("|".join(["MATNR", "WERKS", "LGORT", "LABST", "INSME", "SPEME", "MEINS", "EXTRACTED_AT"]) +
         "\n000000000000000101|1010|Läger|1|0|0|EA|20261124060000\n").encode("latin-1")), "not UTF-8"),
    ("empty", lambda p: p.write_bytes(b""), "empty file"),
    ("no rows in a full snapshot", lambda p: p.write_text(
        "MATNR|WERKS|LGORT|LABST|INSME|SPEME|MEINS|EXTRACTED_AT\n"), "full snapshot with no rows"),
])
def test_a_broken_erp_file_is_rejected_and_the_previous_version_stays_current(con, landing, case, write, reason):
    kit.csv(landing, "inventory_balance", "20261123T060000Z",
            [r.replace(EXTRACTED, "20261123060000") for r in balance_rows(10)])
    write(kit.path_of(landing, "inventory_balance", TS))
    run(con, landing)
    rows = manifest(con, "inventory_balance")
    assert [r[1] for r in rows] == ["accepted", "rejected"], case
    assert reason in rows[1][2]
    current = con.execute("SELECT file_path FROM ingest.current_files WHERE feed = 'inventory_balance'").fetchall()
    assert current == [("erp/inventory_balance/inventory_balance_20261123T060000Z.csv",)]
    assert con.execute("SELECT count(*) FROM canonical.inventory_snapshot WHERE system = 'erp'").fetchone()[0] == 10


def test_truncated_parquet_and_html_in_jsonl_are_rejected(con, landing):
    good = kit.parquet(landing, "stock_snapshot", "20261124T070000Z", [
        {"warehouse_code": "WHA", "sku": "SKU-101", "lot": "L1", "bin": "B1", "qty_each": 4, "status": "AVAILABLE",
         "snapshot_at": kit.t("2026-11-24T07:00:00Z")}])
    broken = kit.path_of(landing, "stock_snapshot", "20261124T080000Z")
    broken.write_bytes(good.read_bytes()[:-30])
    kit.path_of(landing, "forecast", "20261122T090000Z").write_text("<html><body>502 Bad Gateway</body></html>\n")
    run(con, landing)
    snap = manifest(con, "stock_snapshot")
    assert [r[1] for r in snap] == ["accepted", "rejected"] and "Parquet" in snap[1][2]
    fc = manifest(con, "forecast")
    assert fc[0][1] == "rejected" and "JSON" in fc[0][2]
    assert con.execute("SELECT sum(qty) FROM canonical.inventory_snapshot WHERE system = 'wms'").fetchone()[0] == 4


def test_too_many_bad_rows_reject_the_file(con, landing):
    kit.csv(landing, "inventory_balance", "20261123T060000Z",
            [r.replace(EXTRACTED, "20261123060000") for r in balance_rows(20)])
    # 2 bad of 40 = 5 %: accepted (the limit is "more than 5 %")
    kit.csv(landing, "inventory_balance", TS, balance_rows(38) + [f"ABC|1010|X{i}|1|0|0|EA|{EXTRACTED}" for i in range(2)])
    run(con, landing)
    assert manifest(con, "inventory_balance")[-1][1] == "accepted"
    # 3 bad of 40 = 7.5 %: rejected, the accepted file stays current
    kit.csv(landing, "inventory_balance", "20261124T070000Z",
            [r.replace(EXTRACTED, "20261124070000") for r in balance_rows(37)]
            + [f"ABC|1010|X{i}|1|0|0|EA|20261124070000" for i in range(3)])
    run(con, landing)
    last = manifest(con, "inventory_balance")[-1]
    assert last[1] == "rejected" and "3 of 40 rows quarantined (7.5%)" in last[2]
    assert con.execute("SELECT file_path FROM ingest.current_files WHERE feed = 'inventory_balance'").fetchone()[0] \
        .endswith(f"{TS}.csv")


def test_identical_redelivery_is_duplicate_and_a_correction_replaces_only_its_earlier_version(con, landing):
    kit.csv(landing, "purchase_order", "20261123T060000Z", [
        f"4500000001|00010|{M1}|1010|V1|20261101|20261201|10.000|EA|0.000|||||20261123060000",
        f"4500000002|00010|{M2}|1010|V1|20261101|20261201|2.000|CS|0.000|||||20261123060000"])
    p2 = kit.csv(landing, "purchase_order", "20261124T050000Z", [
        f"4500000001|00010|{M1}|1010|V1|20261101|20261201|12.000|EA|0.000|||||20261124050000"])
    run(con, landing)
    assert con.execute("SELECT ebeln, ordered_qty FROM canonical.purchase_order_line ORDER BY 1").fetchall() == [
        ("4500000001", 12.0), ("4500000002", 24.0)]
    # identical bytes again (a new modification time): duplicate, nothing else changes
    content = p2.read_bytes()
    p2.write_bytes(content)
    os.utime(p2, (1_800_000_000, 1_800_000_000))
    run(con, landing)
    assert [r[1] for r in manifest(con, "purchase_order")] == ["accepted", "accepted", "duplicate"]
    # a correction of the older file under the same name: replaces only that file's version
    kit.csv(landing, "purchase_order", "20261123T060000Z", [
        f"4500000001|00010|{M1}|1010|V1|20261101|20261201|99.000|EA|0.000|||||20261123060000",
        f"4500000002|00010|{M2}|1010|V1|20261101|20261201|3.000|CS|0.000|||||20261123060000"])
    run(con, landing)
    assert [r[1] for r in manifest(con, "purchase_order")] == ["accepted", "accepted", "duplicate", "accepted"]
    # line 1 still comes from the newer file (its TS wins); line 2 from the corrected file
    assert con.execute("SELECT ebeln, ordered_qty FROM canonical.purchase_order_line ORDER BY 1").fetchall() == [
        ("4500000001", 12.0), ("4500000002", 36.0)]
    versions = list((landing.parent / "lake" / "staging" / "erp_purchase_order").glob("*20261123T060000Z__*.parquet"))
    assert len(versions) == 2  # both versions kept in staging; only the latest is current


def test_a_feed_that_stops_arriving_becomes_stale(con, landing):
    kit.parquet(landing, "transaction", "20261124T010000Z", [
        {"txn_id": "T1", "warehouse_code": "WHA", "sku": "SKU-101", "qty_each": 1, "txn_type": "RECEIPT",
         "txn_at": kit.t("2026-11-24T00:30:00Z"), "reference": None}])
    run(con, landing)   # 8 h old at 09:00; the limit is 6 h
    status = dict(((r[0]), (r[1], r[2])) for r in con.execute(
        "SELECT feed, stale, age_hours FROM ingest.feed_status WHERE run_as_of = ?", [AS_OF]).fetchall())
    assert status["transaction"] == (True, 8.0)
    assert status["item_master"] == (False, 26.0)
    assert status["inventory_balance"][0] is True  # never delivered: stale
    run(con, landing, settings=Settings(freshness_hours={**Settings().freshness_hours, "transaction": 12}))
    assert con.execute("SELECT stale FROM ingest.feed_status WHERE feed = 'transaction'").fetchone()[0] is False


def test_files_arriving_out_of_order(con, landing):
    kit.csv(landing, "inventory_balance", TS, balance_rows(10))
    run(con, landing)
    # the older extract arrives after the newer one: recorded, but the newer stays current
    kit.csv(landing, "inventory_balance", "20261123T060000Z",
            [r.replace(EXTRACTED, "20261123060000") for r in balance_rows(4)])
    run(con, landing)
    assert [r[1] for r in manifest(con, "inventory_balance")] == ["accepted", "accepted"]
    assert con.execute("SELECT count(*) FROM canonical.inventory_snapshot WHERE system = 'erp'").fetchone()[0] == 10
    # a run whose as_of is before the newer file's TS reproduces the older state
    run(con, landing, as_of=datetime(2026, 11, 23, 12, tzinfo=timezone.utc))
    assert con.execute("SELECT count(*) FROM canonical.inventory_snapshot WHERE system = 'erp'").fetchone()[0] == 4


def test_a_file_named_like_no_feed_is_recorded_not_ignored(con, landing):
    (landing / "erp" / "inventory_balance").mkdir(parents=True)
    (landing / "erp" / "inventory_balance" / "inventory_balance_latest.csv").write_text("x")
    run(con, landing)
    row = con.execute("SELECT outcome, reason FROM ingest.manifest WHERE file_path LIKE '%latest.csv'").fetchone()
    assert row[0] == "rejected" and "file name" in row[1]


def test_a_utf8_byte_order_mark_is_not_part_of_the_header(con, landing):
    p = kit.csv(landing, "inventory_balance", TS, balance_rows(10))
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    run(con, landing)
    assert manifest(con, "inventory_balance")[0][1:5] == ("accepted", None, 10, 10)
