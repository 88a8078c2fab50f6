"""Schedules and the landing sensor, with Dagster's test utilities."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from pipelines.jobs import inventory_sync_hourly, landing_sensor, reconcile_daily
from pipelines.resources import AS_OF_TAG, DistsyncResource
from tests.conftest import MINI
from tests.contracts import kit
from tests.s3server import moto_s3, upload_tree


def test_schedules_pin_as_of_to_the_scheduled_time():
    when = datetime(2026, 11, 24, 10, 5, tzinfo=timezone.utc)
    ctx = dg.build_schedule_context(scheduled_execution_time=when)
    req = inventory_sync_hourly.evaluate_tick(ctx).run_requests[0]
    assert req.tags[AS_OF_TAG] == when.isoformat()
    assert req.run_key == f"inventory_sync_hourly:{when.isoformat()}"
    assert inventory_sync_hourly.cron_schedule == "5 * * * *"
    assert reconcile_daily.job_name == "distsync_full"


def _tick(cursor=None):
    ctx = dg.build_sensor_context(cursor=cursor)
    return landing_sensor.evaluate_tick(ctx)


def test_sensor_starts_a_run_when_a_file_lands_locally(tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    kit.masters(landing)
    monkeypatch.setenv("DISTSYNC_LANDING", str(landing))
    first = _tick()
    assert len(first.run_requests) == 1
    # nothing changed: skip
    again = _tick(first.cursor)
    assert again.run_requests == [] and "no new or changed files" in again.skip_message
    # a new WMS transaction file lands: a new run
    kit.parquet(landing, "transaction", "20261124T100000Z", [
        {"txn_id": "T9", "warehouse_code": "WHA", "sku": "SKU-101", "qty_each": 1, "txn_type": "RECEIPT",
         "txn_at": kit.t("2026-11-24T09:30:00Z"), "reference": None}])
    third = _tick(first.cursor)
    assert len(third.run_requests) == 1 and third.cursor != first.cursor


def test_sensor_skips_with_a_reason_when_the_landing_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTSYNC_LANDING", str(tmp_path / "nowhere"))
    res = _tick()
    assert res.run_requests == [] and "landing folder not found" in res.skip_message


@pytest.mark.s3
def test_sensor_picks_up_a_new_file_in_a_bucket(monkeypatch, tmp_path):
    with moto_s3(monkeypatch) as endpoint:
        upload_tree(endpoint, MINI / "landing" / "erp", "drop", "in/erp")
        monkeypatch.setenv("DISTSYNC_LANDING", "s3://drop/in")
        first = _tick()
        assert len(first.run_requests) == 1
        assert _tick(first.cursor).run_requests == []
        extra = tmp_path / "x"
        kit.parquet(extra, "transaction", "20261124T100000Z", [
            {"txn_id": "T9", "warehouse_code": "WHA", "sku": "SKU-101", "qty_each": 1, "txn_type": "RECEIPT",
             "txn_at": kit.t("2026-11-24T09:30:00Z"), "reference": None}])
        upload_tree(endpoint, extra, "drop", "in")
        assert len(_tick(first.cursor).run_requests) == 1


def test_the_hourly_inventory_job_runs_after_a_full_run(tmp_path, mini_landing):
    from pipelines.definitions import defs
    from pipelines.resources import DistsyncResource
    from tests.conftest import MINI_AS_OF

    def resource(as_of):
        return DistsyncResource(landing=str(mini_landing), data_dir=str(tmp_path / "d"), as_of=as_of.isoformat())

    full = defs.resolve_job_def("distsync_full")
    hourly = defs.resolve_job_def("inventory_sync")
    instance = dg.DagsterInstance.ephemeral()
    assert full.execute_in_process(resources={"distsync": resource(MINI_AS_OF)}, instance=instance).success
    later = MINI_AS_OF.replace(hour=10)
    result = hourly.execute_in_process(resources={"distsync": resource(later)}, instance=instance)
    assert result.success
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"marts/inventory_drift", "delivery/planning_inventory_sync"} <= done
    assert "marts/forecast_order_alignment" not in done


def test_steps_of_a_run_share_one_warehouse_connection_closed_when_the_run_ends(tmp_path):
    import duckdb

    seen = []

    @dg.asset
    def first(distsync: DistsyncResource) -> None:
        with distsync.connect() as con:
            con.execute("CREATE TABLE t (x INT)")
            seen.append(con)

    @dg.asset(deps=[first])
    def second(distsync: DistsyncResource) -> None:
        with distsync.connect() as con:
            con.execute("INSERT INTO t VALUES (1)")
            seen.append(con)

    resource = DistsyncResource(data_dir=str(tmp_path), landing=str(tmp_path))
    assert dg.materialize([first, second], resources={"distsync": resource}).success
    assert len(seen) == 2 and seen[0] is seen[1]
    # closed when the run ended: the file opens read-only in this same process
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    con.close()
    # outside a run every connect() is its own
    with resource.connect() as a, resource.connect() as b:
        assert a is not b


def test_a_failed_step_leaves_no_open_transaction_for_the_next(tmp_path):
    resource = DistsyncResource(data_dir=str(tmp_path), landing=str(tmp_path))
    resource.setup_for_execution(None)
    try:
        with resource.connect() as con:
            con.execute("CREATE TABLE t (x INT)")
        with pytest.raises(RuntimeError):
            with resource.connect() as con:
                con.execute("BEGIN TRANSACTION")
                con.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("the step failed")
        with resource.connect() as again:
            assert again is con
            again.execute("BEGIN TRANSACTION")  # would fail inside a still-open transaction
            again.execute("INSERT INTO t VALUES (2)")
            again.execute("COMMIT")
            assert again.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        resource.teardown_after_execution(None)
