"""Ingest tables exported to the lake: rewritten only when they changed."""

import os
import shutil

import duckdb
import polars as pl

from contracts.ingest import export_ingest_tables, ingest_landing
from contracts.settings import Settings
from tests.conftest import MINI, MINI_AS_OF


def test_manifest_and_quarantine_are_rewritten_only_after_an_ingestion(tmp_path):
    shutil.copytree(MINI / "landing", tmp_path / "landing")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    lake = tmp_path / "lake"
    ingest_landing(con, str(tmp_path / "landing"), Settings(), MINI_AS_OF, lake)
    export_ingest_tables(con, str(lake))
    files = {t: lake / "ingest" / t / "data.parquet" for t in ("manifest", "quarantine", "feed_status")}
    stamp = {t: os.stat(f).st_mtime_ns for t, f in files.items()}
    assert pl.read_parquet(files["manifest"]).height == con.execute("SELECT count(*) FROM ingest.manifest").fetchone()[0]

    export_ingest_tables(con, str(lake))  # nothing ingested since: left as they are
    assert {t: os.stat(f).st_mtime_ns for t, f in files.items() if t != "feed_status"} == \
        {t: v for t, v in stamp.items() if t != "feed_status"}

    extra = tmp_path / "landing" / "erp" / "item_master" / "item_master_20261124T070000Z.csv"
    shutil.copy(next((tmp_path / "landing" / "erp" / "item_master").glob("*.csv")), extra)
    ingest_landing(con, str(tmp_path / "landing"), Settings(), MINI_AS_OF, lake)
    export_ingest_tables(con, str(lake))
    assert pl.read_parquet(files["manifest"]).height == con.execute("SELECT count(*) FROM ingest.manifest").fetchone()[0]
    files["manifest"].unlink()  # a lost file is written again whatever the version says
    export_ingest_tables(con, str(lake))
    assert files["manifest"].exists()
