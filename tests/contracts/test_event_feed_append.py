"""canonical.inventory_txn: newer movement files are appended, anything else rebuilds."""

import duckdb

from contracts.canonical_build import build_canonical_table
from contracts.ingest import ingest_landing
from contracts.settings import Settings
from tests.contracts import kit

AS_OF = kit.t("2026-11-24T12:00:00Z")


def _txn(txn_id, qty, at, sku="SKU-101"):
    return {"txn_id": txn_id, "warehouse_code": "WHA", "sku": sku, "qty_each": qty, "txn_type": "ADJUSTMENT",
            "txn_at": kit.t(at), "reference": None}


def _run(con, landing, lake):
    ingest_landing(con, str(landing), Settings(), AS_OF, lake)
    return con.execute("SELECT txn_id, qty, source_file FROM canonical.inventory_txn ORDER BY txn_id").fetchall()


def _parts(lake):
    return sorted(p.name for p in (lake / "canonical" / "inventory_txn").glob("*.parquet"))


def _rebuilt(con, lake):
    build_canonical_table(con, "canonical.inventory_txn", Settings(), AS_OF, lake, force=True)
    return con.execute("SELECT txn_id, qty, source_file FROM canonical.inventory_txn ORDER BY txn_id").fetchall()


def test_a_newer_file_adds_a_part_with_only_its_new_movements(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    kit.masters(landing)
    kit.parquet(landing, "transaction", "20261124T080000Z", [_txn("T1", -1, "2026-11-24T07:10:00Z"),
                                                             _txn("T2", -2, "2026-11-24T07:20:00Z")])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    _run(con, landing, lake)
    assert _parts(lake) == ["transaction.parquet"]
    # the next hour repeats T2 (overlapping extracts) and brings T3, T4
    kit.parquet(landing, "transaction", "20261124T090000Z", [_txn("T2", -9, "2026-11-24T07:20:00Z"),
                                                             _txn("T3", 3, "2026-11-24T08:10:00Z"),
                                                             _txn("T4", 4, "2026-11-24T08:20:00Z", "SKU-102")])
    rows = _run(con, landing, lake)
    assert _parts(lake) == ["transaction.00001.parquet", "transaction.parquet"]
    assert [(r[0], r[1]) for r in rows] == [("T1", -1), ("T2", -2), ("T3", 3), ("T4", 4)]  # T2 from its first file
    assert rows == _rebuilt(con, lake)
    assert _parts(lake) == ["transaction.parquet"]


def test_a_late_older_file_or_a_correction_rebuilds(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    kit.masters(landing)
    kit.parquet(landing, "transaction", "20261124T090000Z", [_txn("T2", -9, "2026-11-24T08:20:00Z")])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    _run(con, landing, lake)
    # a file from 08:00 arrives late and delivered T2 first: it wins, so no append
    kit.parquet(landing, "transaction", "20261124T080000Z", [_txn("T2", -2, "2026-11-24T07:20:00Z"),
                                                             _txn("T1", -1, "2026-11-24T07:10:00Z")])
    rows = _run(con, landing, lake)
    assert _parts(lake) == ["transaction.parquet"]
    assert [(r[0], r[1]) for r in rows] == [("T1", -1), ("T2", -2)]
    assert rows == _rebuilt(con, lake)
