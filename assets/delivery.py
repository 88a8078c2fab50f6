"""Delivery assets: the sync outbox (files + SQL) and the planner exception reports.

Each payload asset builds its records (``reconciliation/payloads.py``), checks them
against the outgoing contract (``contracts/outgoing.py``), and emits only what was not
emitted before (``reconciliation/outbox.py``): re-running a run writes nothing new. A
payload whose blocking inputs failed (a rejected or stale ERP inventory feed) is
reported, not sent: its ``sendable`` check fails and the run summary says so. A payload
whose inputs and outbox state did not change since its last build is not rebuilt
(``reconciliation/delivery.py``; metadata ``skipped``).
"""

import dagster as dg

from assets.marts import ALIGNMENT, DRIFT, EXCEPTIONS, FEED_STATUS, KPIS
from pipelines.resources import DistsyncResource
from reconciliation.delivery import deliver
from reconciliation.outbox import Outbox
from reconciliation.payloads import build_erp_replenishment_proposal, build_planning_inventory_sync
from reconciliation.reports import write_reports

# Deliveries yield to ready marts: when the in-process executor can start either, it
# starts the mart (a higher dagster/priority goes first). The outbox's SQLite checkpoint
# of a bulk emission then runs in the background during the other deliveries, not during
# the drift or exceptions step, and the marts analysts query are there sooner.
DELIVERY_TAGS = {"dagster/priority": "-1"}

SYNC = dg.AssetKey(["delivery", "planning_inventory_sync"])
PROPOSALS = dg.AssetKey(["delivery", "erp_replenishment_proposal"])
REPORTS = dg.AssetKey(["delivery", "exception_reports"])


def _outbox(distsync: DistsyncResource) -> Outbox:
    return Outbox(distsync.outbox_sql_url(), distsync.outbox_folder_url(),
                  schema_version=distsync.load_settings().sync_schema_version,
                  state_cache=distsync.lake_path() / "sync" / "latest")


def _emit(context, distsync: DistsyncResource, payload_type: str, key: dg.AssetKey, build,
          full_sync: bool = False) -> dg.MaterializeResult:
    settings, as_of = distsync.load_settings(), distsync.resolve_as_of(context)
    outbox = _outbox(distsync)
    try:
        with distsync.connect() as con:
            done = deliver(con, outbox, payload_type, as_of,
                           lambda con, as_of, outbox: build(con, as_of, settings, outbox),
                           full_sync=full_sync)
    finally:
        outbox.close()
    result = done.result
    meta = {
        "records_built": done.records_built,
        "records_emitted": result.record_count if result else 0,
        "already_emitted": result.already_emitted if result else 0,
        "batch_id": (result.batch_id if result else None) or "none",
        "batch_file": dg.MetadataValue.path(result.file_path) if result and result.file_path else "none",
        "blocked_reason": done.blocked_reason or "",
        "skipped": done.skipped,
        "stats": dg.MetadataValue.json(done.stats),
    }
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[
            dg.AssetCheckResult(check_name="sendable", passed=done.blocked_reason is None,
                                severity=dg.AssetCheckSeverity.ERROR,
                                description=done.blocked_reason or "inputs passed their blocking checks"),
            dg.AssetCheckResult(check_name="payload_contract", passed=not done.contract["failures"],
                                metadata={"failures": done.contract["failures"]}),
        ],
    )


def _payload_checks(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("sendable", asset=key, description="Not blocked by a rejected or stale input feed"),
            dg.AssetCheckSpec("payload_contract", asset=key, description="Records match contracts/outgoing.py")]


@dg.asset(key=SYNC, group_name="delivery", pool="duckdb", kinds={"sqlite", "json"}, op_tags=DELIVERY_TAGS,
          deps=[DRIFT, FEED_STATUS], check_specs=_payload_checks(SYNC),
          description="ERP stock per item-location, in planning codes, for the planning system: only records "
                      "that changed since last emitted (full refresh with --full-sync).")
def planning_inventory_sync(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    return _emit(context, distsync, "planning_inventory_sync", SYNC,
                 lambda con, as_of, settings, outbox: build_planning_inventory_sync(
                     con, as_of, settings, outbox, full_sync=distsync.full_sync), full_sync=distsync.full_sync)


@dg.asset(key=PROPOSALS, group_name="delivery", pool="duckdb", kinds={"sqlite", "json"}, op_tags=DELIVERY_TAGS,
          deps=[ALIGNMENT, FEED_STATUS], check_specs=_payload_checks(PROPOSALS),
          description="Netting proposals for the ERP (one record per proposal), each sent once.")
def erp_replenishment_proposal(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    return _emit(context, distsync, "erp_replenishment_proposal", PROPOSALS, build_erp_replenishment_proposal)


@dg.asset(key=REPORTS, group_name="delivery", pool="duckdb", kinds={"html", "csv"}, op_tags=DELIVERY_TAGS,
          deps=[EXCEPTIONS, KPIS, DRIFT, ALIGNMENT, SYNC, PROPOSALS],
          description="Per-planner exception reports (HTML + CSV) and an index under reports/<run_date>/.")
def exception_reports(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    as_of = distsync.resolve_as_of(context)
    with distsync.connect() as con:
        out = write_reports(con, distsync.reports_path(), as_of)
    meta = {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool))}
    index = distsync.reports_path() / as_of.date().isoformat() / "index.html"
    return dg.MaterializeResult(metadata={**meta, "index": dg.MetadataValue.path(str(index))})


delivery_assets = [planning_inventory_sync, erp_replenishment_proposal, exception_reports]
