"""`distsync demo` end to end: the generator's planted problems come out of the pipeline."""

import json

import duckdb
import pytest

from tests.pipelines.test_cli import distsync


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from datetime import datetime, timezone
    from pathlib import Path

    from pipelines.demo import generate_landing

    data = Path(tmp_path_factory.mktemp("demo"))
    as_of = datetime(2026, 11, 24, 9, tzinfo=timezone.utc)
    summary = generate_landing(data / "landing", "small", as_of=as_of)
    (data / "landing" / ".distsync-demo.json").write_text(json.dumps({"scale": "small", "as_of": as_of.isoformat()}))
    out = distsync("demo", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    yield summary["expected"], con, out.stdout
    con.close()


def pairs(con, sql):
    return {tuple(r) for r in con.execute(sql).fetchall()}


def test_planted_drift_is_found_and_nothing_else(demo):
    expected, con, _ = demo
    assert pairs(con, "SELECT item_id, location_id FROM marts.inventory_drift WHERE status_wms = 'drift'") == \
        {tuple(x) for x in expected["drift_wms"]}
    assert pairs(con, "SELECT item_id, location_id FROM marts.inventory_drift WHERE status_planning = 'drift'") == \
        {tuple(x) for x in expected["drift_planning"]}
    assert pairs(con, "SELECT item_id, location_id FROM marts.inventory_drift WHERE status = 'unverifiable'") == \
        {tuple(x) for x in expected["unverifiable"]}
    statuses = dict(((r[0], r[1]), r[2]) for r in con.execute(
        "SELECT item_id, location_id, status FROM marts.inventory_drift").fetchall())
    for key in expected["must_match"]:
        assert statuses[tuple(key)] == "match", key


def test_broken_files_stale_feeds_and_unmapped_codes(demo):
    expected, con, stdout = demo
    rejected = {r[0] for r in con.execute("SELECT file_path FROM ingest.manifest WHERE outcome = 'rejected'").fetchall()}
    assert rejected == set(expected["rejected_files"])
    stale = pairs(con, "SELECT system, feed FROM ingest.feed_status WHERE stale")
    assert stale == {tuple(x) for x in expected["stale_feeds"]}
    unmapped = {r[0] for r in con.execute(
        "SELECT reference FROM marts.exceptions WHERE exception_type = 'UNMAPPED_CODE' AND status = 'open'").fetchall()}
    for system, code in expected["unmapped"]:
        assert any(ref.startswith(f"{system}/") and ref.endswith(f"/{code}") for ref in unmapped), (system, code)
    assert "stale feeds: erp/location_master" in stdout


def test_recommendation_exceptions(demo):
    expected, con, _ = demo

    def refs(kind):
        return {r[0] for r in con.execute(
            "SELECT reference FROM marts.exceptions WHERE exception_type = ? AND status = 'open'", [kind]).fetchall()}

    assert refs("UNCONVERTED_RECOMMENDATION") == set(expected["unconverted_rec"])
    assert refs("RECOMMENDATION_QTY_MISMATCH") == set(expected["rec_qty_mismatch"])
    assert not refs("UNCONVERTED_RECOMMENDATION") & set(expected["not_unconverted_rec"])
