"""Jobs, schedules and the landing sensor.

- ``distsync_full``: every asset (what ``distsync run`` materializes).
- ``inventory_sync``: the inventory feeds, their canonical tables, the drift mart and the
  planning inventory sync — hourly (``inventory_sync_hourly``).
- ``distsync_full`` daily at 05:30 UTC (``reconcile_daily``): marts, exceptions, reports.
- ``landing_sensor``: lists the landing zone (local folder or ``s3://``) every 60 s and
  starts ``distsync_full`` when a file appeared or changed. Its cursor is a digest of
  every file's name and signature (size + mtime, or the S3 ETag), so it reads no file
  and never opens the DuckDB warehouse (which admits one writer). Already-ingested files
  are skipped by the run itself, so a run started by the sensor costs what changed.

Scheduled runs carry their scheduled time as ``distsync/as_of``: a re-executed
schedule tick reproduces the same ``as_of``.
"""

import hashlib
import os

import dagster as dg

from contracts.landing import LandingError, list_landing
from pipelines.resources import AS_OF_TAG

everything = dg.define_asset_job(
    "distsync_full", selection=dg.AssetSelection.all(),
    description="Ingest every feed, rebuild canonical tables, reconcile, deliver.")

INVENTORY_FEEDS = ("erp_inventory_balance", "wms_stock_snapshot", "wms_transaction", "planning_inventory_position")

inventory_sync = dg.define_asset_job(
    "inventory_sync",
    selection=dg.AssetSelection.assets(*[dg.AssetKey(["ingest", f]) for f in INVENTORY_FEEDS])
    | dg.AssetSelection.assets(dg.AssetKey(["canonical", "inventory_snapshot"]),
                               dg.AssetKey(["canonical", "inventory_txn"]),
                               dg.AssetKey(["ingest", "feed_status"]),
                               dg.AssetKey(["marts", "inventory_drift"]),
                               dg.AssetKey(["delivery", "planning_inventory_sync"])),
    description="Hourly: new inventory snapshots and movements -> canonical -> drift -> planning sync.",
)


def _scheduled(job, name: str, cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(name=name, job=job, cron_schedule=cron, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.STOPPED)
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        as_of = context.scheduled_execution_time.isoformat()
        return dg.RunRequest(run_key=f"{name}:{as_of}", tags={AS_OF_TAG: as_of})

    return _schedule


inventory_sync_hourly = _scheduled(inventory_sync, "inventory_sync_hourly", "5 * * * *")
reconcile_daily = _scheduled(everything, "reconcile_daily", "30 5 * * *")


def landing_digest(url: str) -> tuple[str, int]:
    """(digest of every landing file's name and signature, number of files)."""
    files, unknown = list_landing(url)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.rel_path}|{f.signature}\n".encode())
    for u in unknown:
        h.update(f"{u.rel_path}|{u.size}\n".encode())
    return h.hexdigest(), len(files) + len(unknown)


@dg.sensor(job=everything, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Starts a run when files land in (or change in) the landing zone, local or s3://.")
def landing_sensor(context: dg.SensorEvaluationContext):
    landing = os.environ.get("DISTSYNC_LANDING") or os.path.join(os.environ.get("DISTSYNC_DATA_DIR") or "data",
                                                                   "landing")
    try:
        digest, n = landing_digest(landing)
    except LandingError as exc:
        return dg.SkipReason(str(exc))
    if digest == context.cursor:
        return dg.SkipReason(f"no new or changed files among {n} in {landing}")
    context.update_cursor(digest)
    return dg.RunRequest(run_key=f"landing:{digest[:16]}", tags={"distsync/trigger": "landing_sensor"})


JOBS = [everything, inventory_sync]
SCHEDULES = [inventory_sync_hourly, reconcile_daily]
SENSORS = [landing_sensor]
