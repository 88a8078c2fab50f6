"""The outbox: files and SQL stay exactly-once under re-emits, crashes and S3 (§6)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa

from contracts.settings import Settings
from reconciliation.outbox import Outbox
from reconciliation.payloads import PLANNING_INVENTORY_SYNC, build_planning_inventory_sync, version_records
from tests.delivery.conftest import AS_OF

S = Settings()


def sql_counts(ob: Outbox) -> tuple[int, int, int]:
    with ob.engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                     for t in (ob.batch_table, ob.record_table, ob.latest_table))


def batch_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl"))


def synthetic(n: int, qty: float = 1.0) -> pl.DataFrame:
    frame = pl.DataFrame({
        "product_code": [f"P{i:05d}" for i in range(n)], "site_code": ["S1"] * n,
        "on_hand": [qty + i for i in range(n)], "uom": ["EA"] * n,
        "as_of": ["2026-11-24T06:00:00Z"] * n, "quality": ["reconciled"] * n,
    })
    return version_records(frame, PLANNING_INVENTORY_SYNC, AS_OF)[0]


def test_emit_writes_body_manifest_and_sql(make_outbox, tmp_path):
    ob = make_outbox()
    recs = synthetic(5)
    res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    body = Path(res.file_path).read_bytes()
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert [x["idempotency_key"] for x in lines] == recs.sort("business_key")["idempotency_key"].to_list()
    assert set(lines[0]) == {"idempotency_key", "product_code", "site_code", "on_hand", "uom", "as_of", "quality"}
    manifest = json.loads(Path(res.manifest_path).read_text())
    assert manifest == {
        "batch_id": res.batch_id, "payload_type": PLANNING_INVENTORY_SYNC, "schema_version": "1",
        "created_at": "2026-11-24T09:00:00Z", "record_count": 5,
        "body_sha256": hashlib.sha256(body).hexdigest(), "run_as_of": "2026-11-24T09:00:00Z",
        "file": f"{res.batch_id}.jsonl",
    }
    assert Path(res.file_path).parent == tmp_path / "outbox" / PLANNING_INVENTORY_SYNC
    assert res.batch_id == hashlib.sha256("\n".join(
        [PLANNING_INVENTORY_SYNC, *sorted(recs["idempotency_key"])]).encode()).hexdigest()
    assert sql_counts(ob) == (1, 5, 5)
    with ob.engine.connect() as conn:
        bodies = conn.execute(sa.select(ob.record_table.c.body)).scalars().all()
        batch = conn.execute(sa.select(ob.batch_table)).one()._asdict()
    assert sorted(bodies) == sorted(body.decode().splitlines())  # SQL holds the lines byte for byte
    assert (batch["record_count"], batch["body_sha256"], batch["status"]) == (5, manifest["body_sha256"], "ready")
    assert batch["file_path"] == res.file_path


def test_reemitting_is_a_no_op_in_files_and_sql(make_outbox, tmp_path):
    ob = make_outbox()
    recs = synthetic(20)
    first = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    files = {p: p.read_bytes() for p in (tmp_path / "outbox").rglob("*") if p.is_file()}
    again = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF + timedelta(hours=1))
    assert not again.created and again.record_count == 0 and again.already_emitted == 20
    assert {p: p.read_bytes() for p in (tmp_path / "outbox").rglob("*") if p.is_file()} == files
    assert sql_counts(ob) == (1, 20, 20)
    # a fresh Outbox object on the same stores (another process) sees the same
    assert not make_outbox().emit(PLANNING_INVENTORY_SYNC, recs, AS_OF).created
    # a partly new frame emits only its new records
    more = pl.concat([recs, synthetic(25).tail(5)])
    part = ob.emit(PLANNING_INVENTORY_SYNC, more, AS_OF)
    assert (part.record_count, part.already_emitted) == (5, 20)
    assert sql_counts(ob)[:2] == (2, 25) and len(batch_files(tmp_path)) == 2
    assert part.batch_id != first.batch_id


def test_empty_emission_writes_nothing(make_outbox, tmp_path):
    ob = make_outbox()
    res = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(0), AS_OF)
    assert not res.created and res.file_path is None
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").rglob("*"))
    assert sql_counts(ob) == (0, 0, 0)


def test_crash_between_file_and_sql_commit_then_rerun(world, make_outbox, tmp_path, monkeypatch):
    """The files are written, the SQL transaction fails after inserting the records (a
    crash before COMMIT); the re-run rebuilds the same records from the same state."""
    ob = make_outbox()
    recs = build_planning_inventory_sync(world.con, AS_OF, S, ob).records
    real_bulk = Outbox._bulk

    def crash_after_records(self, conn, table, *args, **kwargs):
        real_bulk(self, conn, table, *args, **kwargs)
        if table.name == "sync_latest":
            raise RuntimeError("power cut before COMMIT")

    monkeypatch.setattr(Outbox, "_bulk", crash_after_records)
    with pytest.raises(RuntimeError, match="power cut"):
        ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    monkeypatch.undo()
    [orphan] = batch_files(tmp_path)
    orphan_bytes = orphan.read_bytes()
    assert sql_counts(ob) == (0, 0, 0)  # rolled back as a whole

    rerun = build_planning_inventory_sync(world.con, AS_OF, S, ob).records
    assert rerun["idempotency_key"].to_list() == recs["idempotency_key"].to_list()
    res = ob.emit(PLANNING_INVENTORY_SYNC, rerun, AS_OF)
    assert Path(res.file_path) == orphan and orphan.read_bytes() == orphan_bytes
    assert batch_files(tmp_path) == [orphan]
    assert sql_counts(ob) == (1, 3, 3)
    with ob.engine.connect() as conn:
        keys = conn.execute(sa.select(ob.record_table.c.idempotency_key)).scalars().all()
    assert sorted(keys) == sorted(recs["idempotency_key"])
    # and a third run sends nothing
    assert build_planning_inventory_sync(world.con, AS_OF, S, ob).records.height == 0


def test_crash_while_writing_the_body_leaves_no_partial_file(make_outbox, tmp_path, monkeypatch):
    ob = make_outbox()
    recs = synthetic(10)
    real_replace = __import__("os").replace

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("reconciliation.outbox.os.replace", fail_replace)
    with pytest.raises(OSError):
        ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    monkeypatch.setattr("reconciliation.outbox.os.replace", real_replace)
    assert batch_files(tmp_path) == [] and sql_counts(ob) == (0, 0, 0)
    res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    assert res.record_count == 10 and batch_files(tmp_path) == [Path(res.file_path)]
    assert sorted(p.name for p in (tmp_path / "outbox").rglob("*") if p.is_file()) == sorted(
        [f"{res.batch_id}.jsonl", f"{res.batch_id}.manifest.json"])  # no temporary file left behind


def test_bulk_paths_in_small_chunks(make_outbox):
    """Chunk boundaries (and the padded IN list of the existence check) on both dialects."""
    ob = make_outbox(chunk_size=7)
    recs = synthetic(50)
    assert ob.emit(PLANNING_INVENTORY_SYNC, recs.head(23), AS_OF).record_count == 23
    assert ob.existing_keys(recs["idempotency_key"].to_list()) == set(recs.head(23)["idempotency_key"])
    res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    assert (res.record_count, res.already_emitted) == (27, 23)
    assert sql_counts(ob) == (2, 50, 50)
    state = ob.last_emitted(PLANNING_INVENTORY_SYNC)
    assert state.height == 50 and state["run_as_of"].dtype == pl.Datetime("us", "UTC")
    assert set(state["run_as_of"]) == {AS_OF}


def test_two_contents_for_one_key_in_one_batch_are_refused(make_outbox):
    a, b = synthetic(1), synthetic(1, qty=5.0)
    with pytest.raises(ValueError, match="one business key"):
        make_outbox().emit(PLANNING_INVENTORY_SYNC, pl.concat([a, b]), AS_OF)


def test_mirror_to_duckdb_is_incremental(make_outbox):
    ob = make_outbox()
    ob.emit(PLANNING_INVENTORY_SYNC, synthetic(4), AS_OF)
    con = duckdb.connect()
    assert ob.mirror_to_duckdb(con) == 1
    assert ob.mirror_to_duckdb(con) == 0
    ob.emit(PLANNING_INVENTORY_SYNC, synthetic(6).tail(2), AS_OF + timedelta(hours=1))
    assert ob.mirror_to_duckdb(con) == 1
    assert con.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM sync.record").fetchone() == (6, 6)
    rows = con.execute("SELECT record_count, run_as_of FROM sync.batch ORDER BY run_as_of").fetchall()
    assert [r[0] for r in rows] == [4, 2] and rows[0][1] == AS_OF
    assert con.execute("SELECT count(*) FROM sync.record WHERE created_at IS NULL").fetchone()[0] == 0


def test_default_outbox_of_a_data_dir(tmp_path):
    ob = Outbox.for_data_dir(tmp_path / "data")
    res = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(2), AS_OF)
    assert (tmp_path / "data" / "outbox.sqlite").exists()
    assert Path(res.file_path).parent == (tmp_path / "data" / "outbox" / PLANNING_INVENTORY_SYNC).resolve()
    ob.close()


@pytest.mark.s3
def test_s3_outbox_against_a_loopback_server(monkeypatch, tmp_path):
    import s3fs

    from tests.s3server import moto_s3

    with moto_s3(monkeypatch) as endpoint:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("outbox-bucket")
        ob = Outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}", "s3://outbox-bucket/sync/prod")
        recs = synthetic(30)
        res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
        assert res.file_path == f"s3://outbox-bucket/sync/prod/{PLANNING_INVENTORY_SYNC}/{res.batch_id}.jsonl"
        fs.invalidate_cache()
        body = fs.cat_file(res.file_path)
        manifest = json.loads(fs.cat_file(res.manifest_path))
        assert manifest["body_sha256"] == hashlib.sha256(body).hexdigest() and manifest["record_count"] == 30
        assert len(body.decode().splitlines()) == 30
        assert not ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF).created
        assert sorted(p.rsplit("/", 1)[1] for p in fs.find("outbox-bucket/sync/prod")) == sorted(
            [f"{res.batch_id}.jsonl", f"{res.batch_id}.manifest.json"])
        ob.close()


def test_mirror_from_memory_equals_mirror_read_back_from_sql(make_outbox):
    """The mirror takes a batch this process just committed from memory; a batch committed
    elsewhere is read back from SQL. Both must give the same DuckDB rows."""
    ob = make_outbox()
    ob.emit(PLANNING_INVENTORY_SYNC, synthetic(5), AS_OF)
    fast = duckdb.connect()
    assert ob.mirror_to_duckdb(fast) == 1
    other = make_outbox()   # another process: nothing of that batch in memory
    slow = duckdb.connect()
    assert other.mirror_to_duckdb(slow) == 1
    q = "SELECT * FROM sync.record ORDER BY idempotency_key"
    assert fast.execute(q).fetchall() == slow.execute(q).fetchall()
    assert fast.execute("SELECT * FROM sync.batch").fetchall() == slow.execute("SELECT * FROM sync.batch").fetchall()
