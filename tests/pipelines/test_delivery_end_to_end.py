"""Outbox and reports over the mini landing, run through the whole graph; incremental runs."""

import shutil

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.graph import ALL_ASSETS
from pipelines.resources import DistsyncResource
from tests.conftest import MINI, MINI_AS_OF


def run(landing, data, as_of=MINI_AS_OF, full_sync=False):
    res = DistsyncResource(landing=str(landing), data_dir=str(data), as_of=as_of.isoformat(), full_sync=full_sync)
    result = dg.materialize(ALL_ASSETS, resources={"distsync": res}, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return result


def q(data, sql, params=None):
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def outbox_files(data):
    return sorted(p.name for p in (data / "outbox").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    landing = root / "landing"
    shutil.copytree(MINI / "landing", landing)
    run(landing, root / "data")
    return landing, root / "data"


def test_full_planning_sync_has_one_record_per_mapped_item_location(first_run):
    _, data = first_run
    mapped = q(data, """
        SELECT count(*) FROM marts.inventory_drift d
        JOIN (SELECT item_id FROM canonical.item_xref WHERE system = 'PLANNING') USING (item_id)
        JOIN (SELECT location_id FROM canonical.location_xref WHERE system = 'PLANNING') USING (location_id)
        WHERE erp_present""")[0][0]
    records = q(data, "SELECT count(*), count(DISTINCT business_key) FROM sync.record "
                      "WHERE payload_type = 'planning_inventory_sync'")[0]
    assert records == (mapped, mapped) and mapped > 70
    # one proposal record per netting proposal (a stale forecast is reported, not blocking)
    proposals = q(data, "SELECT count(*) FROM marts.replenishment_proposal")[0][0]
    assert proposals > 0
    assert q(data, "SELECT count(*) FROM sync.record WHERE payload_type = 'erp_replenishment_proposal'")[0][0] \
        == proposals
    assert (data / "reports" / "2026-11-24" / "index.html").exists()
    # sync.record is a view over one Parquet file per batch in the lake
    assert q(data, "SELECT table_type FROM information_schema.tables WHERE table_schema = 'sync' "
                   "AND table_name = 'record'") == [("VIEW",)]
    files = sorted(p.stem for p in (data / "lake" / "sync" / "record").rglob("*.parquet"))
    assert files == sorted(b for (b,) in q(data, "SELECT batch_id FROM sync.batch")) and len(files) == 2


def test_a_second_identical_run_emits_nothing(first_run):
    landing, data = first_run
    files, rows = outbox_files(data), q(data, "SELECT count(*) FROM sync.record")
    result = run(landing, data)
    mat = result.asset_materializations_for_node("delivery__planning_inventory_sync")[0]
    assert mat.metadata["records_emitted"].value == 0
    # nothing they read changed: both payload builds are skipped, their checks still reported
    for node in ("delivery__planning_inventory_sync", "delivery__erp_replenishment_proposal"):
        assert result.asset_materializations_for_node(node)[0].metadata["skipped"].value is True
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed
              for e in result.get_asset_check_evaluations() if e.asset_key.path[0] == "delivery"}
    assert len(checks) == 4 and all(checks.values())
    assert outbox_files(data) == files and q(data, "SELECT count(*) FROM sync.record") == rows
    # and a full refresh of the same run is a no-op too (already emitted by this run)
    run(landing, data, full_sync=True)
    assert q(data, "SELECT count(*) FROM sync.record") == rows


def test_one_new_transaction_file_is_incremental(first_run):
    landing, data = first_run
    # a late WMS movement file: -5 each of one SKU, inside the ERP->WMS alignment window
    sku_row = q(data, """SELECT x.external_code, l.external_code, d.item_id, d.location_id
                         FROM marts.inventory_drift d
                         JOIN canonical.item_xref x ON x.item_id = d.item_id AND x.system = 'WMS'
                         JOIN canonical.location_xref l ON l.location_id = d.location_id AND l.system = 'WMS'
                         WHERE d.status = 'match' AND d.wms_present ORDER BY 3, 4 LIMIT 1""")[0]
    sku, wh, item, loc = sku_row
    table = pa.Table.from_pylist([{
        "txn_id": "T-LATE-1", "warehouse_code": wh, "sku": sku, "qty_each": -5, "txn_type": "SHIPMENT",
        "txn_at": __import__("datetime").datetime(2026, 11, 24, 7, 30, tzinfo=__import__("datetime").timezone.utc),
        "reference": None}], schema=pq.read_schema(next((landing / "wms" / "transaction").glob("*.parquet"))))
    pq.write_table(table, landing / "wms" / "transaction" / "transaction_20261124T083000Z.parquet")
    sent_before = q(data, "SELECT count(*) FROM sync.record")[0][0]
    result = run(landing, data)
    by_node = {m.asset_key.to_user_string(): m.metadata for m in result.get_asset_materialization_events() and
               [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]}
    # only the new file is read; the other 25 are recognised without reading
    assert by_node["ingest/wms_transaction"]["files_new"].value == 1
    assert by_node["ingest/erp_inventory_balance"]["files_new"].value == 0
    assert by_node["canonical/inventory_snapshot"]["rebuilt"].value is False
    assert by_node["canonical/inventory_txn"]["rebuilt"].value is True
    # alignment does not read movements: not recomputed
    assert by_node["marts/forecast_order_alignment"]["recomputed"].value is False
    # the proposals it nets did not change: their payload build is skipped; the drift did
    assert by_node["delivery/erp_replenishment_proposal"]["skipped"].value is True
    assert by_node["delivery/planning_inventory_sync"]["skipped"].value is False
    # the WMS snapshot (08:00) did not see a movement booked at 07:30 that it should
    # contain: rolled back to the ERP time the key now drifts by 5
    assert q(data, "SELECT status_wms, diff_wms FROM marts.inventory_drift WHERE item_id = ? AND location_id = ?",
             [item, loc]) == [("drift", 5.0)]
    # ...and the planning sync sends only what changed: that one key, now flagged 'drift'
    assert q(data, "SELECT count(*) FROM sync.record")[0][0] == sent_before + 1
    code = q(data, "SELECT external_code FROM canonical.item_xref WHERE system = 'PLANNING' AND item_id = ?",
             [item])[0][0]
    site = q(data, "SELECT external_code FROM canonical.location_xref WHERE system = 'PLANNING' AND location_id = ?",
             [loc])[0][0]
    key = f'"product_code":"{code}","site_code":"{site}"'
    bodies = [b.replace(" ", "") for (b,) in q(data, "SELECT body FROM sync.record") if key in b.replace(" ", "")]
    assert len(bodies) == 2 and sum('"quality":"drift"' in b for b in bodies) == 1
