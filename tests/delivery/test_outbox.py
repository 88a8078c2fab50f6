"""The outbox: files and SQL stay exactly-once under re-emits, crashes and S3 (§6)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
import time
from contextlib import ExitStack, closing
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa

from contracts.settings import Settings
from reconciliation import outbox as outbox_mod
from reconciliation.outbox import Outbox, _Checkpointer
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


def test_body_file_is_the_json_lines_byte_for_byte_with_quotes_commas_and_non_ascii(make_outbox):
    ob = make_outbox()
    recs = synthetic(4).with_columns(product_code=pl.Series(['P"1', "P,2", "Pé3", "P 4\\"]))
    res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    body = Path(res.file_path).read_bytes()
    with ob.engine.connect() as conn:
        by_key = dict(conn.execute(sa.select(ob.record_table.c.business_key, ob.record_table.c.body)).all())
    assert body == ("\n".join(by_key[k] for k in sorted(by_key)) + "\n").encode()
    assert sorted(json.loads(line)["product_code"] for line in body.decode().splitlines()) == sorted(
        ['P"1', "P,2", "Pé3", "P 4\\"])


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

    monkeypatch.setattr("contracts.files.os.replace", fail_replace)
    with pytest.raises(OSError):
        ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    monkeypatch.setattr("contracts.files.os.replace", real_replace)
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


def test_a_record_given_twice_in_one_batch_is_emitted_once(make_outbox):
    recs = synthetic(6)
    twice = pl.concat([recs, recs.reverse(), recs.head(2)])
    ob = make_outbox()
    res = ob.emit(PLANNING_INVENTORY_SYNC, twice, AS_OF)
    assert res.record_count == 6 and sql_counts(ob) == (1, 6, 6)
    assert len(Path(res.file_path).read_bytes().splitlines()) == 6


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
    with closing(Outbox.for_data_dir(tmp_path / "data")) as ob:
        res = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(2), AS_OF)
        assert (tmp_path / "data" / "outbox.sqlite").exists()
        assert Path(res.file_path).parent == (tmp_path / "data" / "outbox" / PLANNING_INVENTORY_SYNC).resolve()


@pytest.mark.s3
def test_s3_outbox_against_a_loopback_server(monkeypatch, tmp_path):
    import s3fs

    from tests.s3server import moto_s3

    with moto_s3(monkeypatch) as endpoint:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("outbox-bucket")
        with closing(Outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}", "s3://outbox-bucket/sync/prod")) as ob:
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


# --- storage: WITHOUT ROWID tables, the state cache, sync.record as Parquet files ----------
def test_new_sqlite_outbox_uses_without_rowid_tables_and_16k_pages(tmp_path):
    with closing(Outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}", tmp_path / "outbox")) as ob:
        with ob.engine.connect() as conn:
            ddl = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
            page = conn.exec_driver_sql("PRAGMA page_size").scalar()
        assert "WITHOUT ROWID" in ddl["sync_record"] and "WITHOUT ROWID" in ddl["sync_latest"]
        assert page == 16384


def test_an_existing_rowid_outbox_file_keeps_working(tmp_path):
    """An outbox.sqlite made by the earlier code (rowid tables, 4 KiB pages) is used as it is."""
    path = tmp_path / "outbox.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE sync_batch (batch_id VARCHAR(64) NOT NULL, payload_type VARCHAR(64) NOT NULL,
            schema_version VARCHAR(32) NOT NULL, created_at DATETIME NOT NULL, record_count BIGINT NOT NULL,
            body_sha256 VARCHAR(64) NOT NULL, run_as_of DATETIME NOT NULL, file_path TEXT NOT NULL,
            status VARCHAR(16) NOT NULL, PRIMARY KEY (batch_id));
        CREATE TABLE sync_record (idempotency_key VARCHAR(64) NOT NULL, batch_id VARCHAR(64) NOT NULL,
            payload_type VARCHAR(64) NOT NULL, business_key TEXT NOT NULL, body TEXT NOT NULL,
            created_at DATETIME NOT NULL, PRIMARY KEY (idempotency_key));
        CREATE INDEX ix_sync_record_batch_id ON sync_record (batch_id);
        CREATE TABLE sync_latest (payload_type VARCHAR(64) NOT NULL, business_key TEXT NOT NULL,
            content TEXT NOT NULL, content_version VARCHAR(64) NOT NULL, batch_id VARCHAR(64) NOT NULL,
            PRIMARY KEY (payload_type, business_key));""")
    con.close()
    with closing(Outbox(f"sqlite:///{path}", tmp_path / "outbox")) as ob:
        recs = synthetic(30)
        assert ob.emit(PLANNING_INVENTORY_SYNC, recs.head(10), AS_OF).record_count == 10
        res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
        assert (res.record_count, res.already_emitted) == (20, 10)
        assert sql_counts(ob) == (2, 30, 30)
        with ob.engine.connect() as conn:
            assert "WITHOUT ROWID" not in conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'sync_record'").scalar()
            assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096


def test_last_emitted_state_cache_follows_the_outbox(make_outbox, tmp_path):
    """The cached state is used only while the outbox's batches are the ones it reflects:
    an emission by another process (another Outbox object) invalidates it."""
    cache = tmp_path / "state"
    ob = make_outbox(state_cache=cache)
    recs = synthetic(8)
    ob.emit(PLANNING_INVENTORY_SYNC, recs.head(5), AS_OF)
    state = ob.last_emitted(PLANNING_INVENTORY_SYNC)
    [cached] = cache.glob(f"{PLANNING_INVENTORY_SYNC}.*.parquet")
    assert cached.name == f"{PLANNING_INVENTORY_SYNC}.{ob.state_token(PLANNING_INVENTORY_SYNC)}.parquet"
    uncached = make_outbox().last_emitted(PLANNING_INVENTORY_SYNC)  # read from SQL
    key = ["business_key"]
    assert state.sort(key).equals(uncached.sort(key)) and state.height == 5
    # this process emits: the state moves on in memory and in the cache
    ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
    assert ob.last_emitted(PLANNING_INVENTORY_SYNC).sort(key).equals(
        make_outbox().last_emitted(PLANNING_INVENTORY_SYNC).sort(key))
    # another process emits changed content: a fresh reader of the same cache sees it
    changed = version_records(synthetic(8, qty=50.0).head(2), PLANNING_INVENTORY_SYNC, AS_OF,
                              make_outbox().last_emitted(PLANNING_INVENTORY_SYNC))[0]
    make_outbox().emit(PLANNING_INVENTORY_SYNC, changed, AS_OF)
    again = make_outbox(state_cache=cache).last_emitted(PLANNING_INVENTORY_SYNC)
    assert again.sort(key).equals(make_outbox().last_emitted(PLANNING_INVENTORY_SYNC).sort(key))
    assert set(again.filter(pl.col("business_key").is_in(changed["business_key"].implode()))["content"]) == set(
        changed["content"])
    assert len(list(cache.glob(f"{PLANNING_INVENTORY_SYNC}.*.parquet"))) == 1  # older states removed


def test_versioned_against_skips_the_probe_only_while_the_state_is_unchanged(make_outbox, monkeypatch):
    ob = make_outbox()
    recs = synthetic(6)
    token = ob.state_token(PLANNING_INVENTORY_SYNC)
    probes = []
    real = Outbox.existing_keys
    monkeypatch.setattr(Outbox, "existing_keys", lambda self, keys: probes.append(len(keys)) or real(self, keys))
    assert ob.emit(PLANNING_INVENTORY_SYNC, recs.head(3), AS_OF, versioned_against=token).record_count == 3
    assert probes == []
    # the state moved on since `token` (the batch above): every key is looked up again
    res = ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF, versioned_against=token)
    assert probes == [6] and (res.record_count, res.already_emitted) == (3, 3)
    assert sql_counts(ob) == (2, 6, 6)


def test_sync_record_is_a_view_over_one_parquet_file_per_batch(make_outbox, tmp_path):
    ob = make_outbox()
    first = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(4), AS_OF)
    con = duckdb.connect()
    lake = tmp_path / "lake"
    assert ob.mirror_to_duckdb(con, lake) == 1
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = 'sync' "
                       "AND table_name = 'record'").fetchone() == ("VIEW",)
    assert (lake / "sync" / "record" / PLANNING_INVENTORY_SYNC / f"{first.batch_id}.parquet").exists()
    assert [(c[0], str(c[1])) for c in con.execute("SELECT * FROM sync.record LIMIT 0").description] == [
        ("idempotency_key", "VARCHAR"), ("batch_id", "VARCHAR"), ("payload_type", "VARCHAR"),
        ("business_key", "VARCHAR"), ("body", "VARCHAR"), ("created_at", "TIMESTAMP WITH TIME ZONE")]
    with ob.engine.connect() as conn:
        sql_rows = sorted(conn.execute(sa.select(ob.record_table.c.idempotency_key, ob.record_table.c.body)).all())
    assert sorted(con.execute("SELECT idempotency_key, body FROM sync.record").fetchall()) == sql_rows


def test_mirror_crash_between_file_and_batch_row(make_outbox, tmp_path, monkeypatch):
    """The file of a batch is written before its sync.batch row: a crash in between leaves
    a file the view does not show (no records without their batch row, and no batch row
    without its records); the next mirror completes it."""
    ob = make_outbox()
    ob.emit(PLANNING_INVENTORY_SYNC, synthetic(3), AS_OF)
    lake = tmp_path / "lake"
    con = duckdb.connect()
    ob.mirror_to_duckdb(con, lake)
    second = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(5).tail(2), AS_OF + timedelta(hours=1))

    class Crash(Exception):
        pass

    real_execute = duckdb.DuckDBPyConnection.execute

    class CrashingCon:
        def __getattr__(self, name):
            return getattr(con, name)

        def execute(self, sql, *args):
            if sql.startswith("INSERT INTO sync.batch"):
                raise Crash()
            return real_execute(con, sql, *args)

    with pytest.raises(Crash):
        ob.mirror_to_duckdb(CrashingCon(), lake)
    assert (lake / "sync" / "record" / PLANNING_INVENTORY_SYNC / f"{second.batch_id}.parquet").exists()
    assert con.execute("SELECT count(*) FROM sync.batch").fetchone() == (1,)
    assert con.execute("SELECT count(*), count(DISTINCT batch_id) FROM sync.record").fetchone() == (3, 1)
    assert make_outbox().mirror_to_duckdb(con, lake) == 1  # another process: read back from SQL
    assert con.execute("SELECT count(*) FROM sync.record").fetchone() == (5,)
    assert con.execute("SELECT count(*) FROM sync.record r JOIN sync.batch b USING (batch_id)").fetchone() == (5,)


def test_a_sync_record_table_of_an_older_warehouse_moves_to_files(make_outbox, tmp_path):
    ob = make_outbox()
    ob.emit(PLANNING_INVENTORY_SYNC, synthetic(4), AS_OF)
    con = duckdb.connect()
    old = make_outbox()
    # the earlier layout: sync.record a table, filled by the earlier mirror
    con.execute("CREATE SCHEMA sync")
    con.execute("""CREATE TABLE sync.record (idempotency_key VARCHAR, batch_id VARCHAR, payload_type VARCHAR,
                   business_key VARCHAR, body VARCHAR, created_at TIMESTAMPTZ)""")
    con.execute("""CREATE TABLE sync.batch (batch_id VARCHAR, payload_type VARCHAR, schema_version VARCHAR,
                   created_at TIMESTAMPTZ, record_count BIGINT, body_sha256 VARCHAR, run_as_of TIMESTAMPTZ,
                   file_path VARCHAR, status VARCHAR)""")
    with old.engine.connect() as conn:
        rows = conn.execute(sa.select(old.record_table)).all()
    for r in rows:
        con.execute("INSERT INTO sync.record VALUES (?, ?, ?, ?, ?, ?)", [*r[:5], AS_OF])
    before = sorted(con.execute("SELECT * FROM sync.record").fetchall())
    con.register("old_batches", old.batches())
    con.execute("INSERT INTO sync.batch BY NAME SELECT * FROM old_batches")
    assert ob.mirror_to_duckdb(con, tmp_path / "lake") == 0
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'record'").fetchone() == (
        "VIEW",)
    assert sorted(con.execute("SELECT * FROM sync.record").fetchall()) == before


def test_mirror_rewrites_a_lost_batch_file(make_outbox, tmp_path):
    ob = make_outbox()
    res = ob.emit(PLANNING_INVENTORY_SYNC, synthetic(4), AS_OF)
    con = duckdb.connect()
    ob.mirror_to_duckdb(con, tmp_path / "lake")
    (tmp_path / "lake" / "sync" / "record" / PLANNING_INVENTORY_SYNC / f"{res.batch_id}.parquet").unlink()
    assert ob.mirror_to_duckdb(con, tmp_path / "lake") == 1
    assert con.execute("SELECT count(*) FROM sync.record").fetchone() == (4,)
    assert con.execute("SELECT count(*) FROM sync.batch").fetchone() == (1,)


def rows_in_the_file_alone(db: Path, *tables: str) -> list[int]:
    """Row counts of ``tables`` in a copy of the SQLite file without its ``-wal``: what
    the checkpoints have written into the database file itself."""
    alone = db.with_name("alone.sqlite")
    shutil.copy(db, alone)
    con = sqlite3.connect(alone)
    try:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
    finally:
        con.close()


def test_a_commit_reaches_the_database_file_through_the_background_checkpoint(tmp_path):
    """The outbox turns SQLite's automatic checkpoint off and checkpoints after each commit
    on a background thread: once that is done, the database file alone (without its WAL)
    holds the records."""
    db = tmp_path / "outbox.sqlite"
    with closing(Outbox(f"sqlite:///{db}", tmp_path / "outbox")) as ob:
        ob.emit(PLANNING_INVENTORY_SYNC, synthetic(300), AS_OF)
        with ob.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 0
        ob.wait_for_checkpoint()
        assert rows_in_the_file_alone(db, "sync_record", "sync_latest") == [300, 300]


def test_two_outboxes_on_one_file_share_its_checkpointer(tmp_path):
    """Every outbox on one SQLite file, under any path that leads to it, requests its
    checkpoints from the same checkpointer, so their checkpoints never overlap; another
    file gets its own."""
    db = tmp_path / "outbox.sqlite"
    (tmp_path / "link").symlink_to(tmp_path)
    with ExitStack() as outboxes:
        first, second, other = (
            outboxes.enter_context(closing(Outbox(f"sqlite:///{path}", tmp_path / "outbox")))
            for path in (db, tmp_path / "link" / "outbox.sqlite", tmp_path / "other.sqlite"))
        assert first._checkpointer is second._checkpointer
        assert other._checkpointer is not first._checkpointer


def test_a_checkpoint_that_fails_is_logged_not_raised(tmp_path, caplog):
    broken = _Checkpointer(str(tmp_path / "no such folder" / "outbox.sqlite"))
    with caplog.at_level("WARNING", logger="reconciliation.outbox"):
        broken.request()
        broken.wait()
    assert "outbox checkpoint of" in caplog.text


def test_commits_during_a_checkpoint_get_one_more_pass_never_a_second_thread(tmp_path, monkeypatch):
    """A commit that lands while its file's checkpoint runs is served by one more pass of
    the same thread: checkpoints of one file never overlap, and none is lost."""
    real_connect, running, most = sqlite3.connect, [0], [0]
    lock = threading.Lock()

    class SlowToFinish:
        """A checkpoint connection that lingers after its checkpoint: long enough for the
        next commit to land while the pass is still running."""

        def __init__(self, con):
            self.con = con

        def execute(self, sql):
            return self.con.execute(sql)

        def close(self):
            time.sleep(0.3)
            self.con.close()
            with lock:
                running[0] -= 1

    def slow_connect(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        return SlowToFinish(real_connect(*args, **kwargs))

    monkeypatch.setattr(outbox_mod.sqlite3, "connect", slow_connect)
    db = tmp_path / "outbox.sqlite"
    with closing(Outbox(f"sqlite:///{db}", tmp_path / "outbox")) as ob:
        ob.emit(PLANNING_INVENTORY_SYNC, synthetic(50), AS_OF)
        ob.emit(PLANNING_INVENTORY_SYNC, synthetic(50, qty=100.0), AS_OF + timedelta(hours=1))
        ob.wait_for_checkpoint()
        assert most[0] == 1
        monkeypatch.undo()
        assert rows_in_the_file_alone(db, "sync_batch", "sync_record") == [2, 100]


def test_a_checkpoint_that_fails_unexpectedly_leaves_the_checkpointer_usable(tmp_path, monkeypatch, caplog):
    """Whatever a checkpoint raises, the thread ends cleanly: ``wait()`` returns and the
    next commit's request starts a new checkpoint (a thread that died with the error
    would leave ``wait()`` spinning and never start a later checkpoint)."""
    db = tmp_path / "outbox.sqlite"
    sqlite3.connect(db).close()
    real_connect, calls = sqlite3.connect, []

    def first_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise TypeError("not a database path")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(outbox_mod.sqlite3, "connect", first_fails)
    checkpointer = _Checkpointer(str(db))
    with caplog.at_level("WARNING", logger="reconciliation.outbox"):
        checkpointer.request()
        waiting = threading.Thread(target=checkpointer.wait, daemon=True)
        waiting.start()
        waiting.join(5)
        assert not waiting.is_alive(), "wait() did not return after a failed checkpoint"
    assert "outbox checkpoint of" in caplog.text
    checkpointer.request()
    checkpointer.wait()
    assert len(calls) == 2  # the second request got its own checkpoint
