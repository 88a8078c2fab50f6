"""Reconciliation marts: thin assets over the pure functions in ``reconciliation/``.

Drift and alignment publish their marts as Parquet in the lake with DuckDB views over
them (``reconciliation/mart_store.py``) and carry their blocking ``mart_contract`` check;
exceptions and KPIs keep their tables in DuckDB and export them to
``lake/marts/<table>/data.parquet``. Each returns metadata an engineer can act on (counts
by status, totals, top rows, whether it was recomputed). The drift mart carries two
warning checks (drift rate and drift value over the settings' thresholds); the effective
settings are echoed on the drift asset.
"""

import dagster as dg

from contracts.warehouse import export_to_lake
from pipelines.resources import DistsyncResource
from reconciliation import build_exceptions, build_forecast_order_alignment, build_inventory_drift, build_kpis
from reconciliation.alignment import ALIGNMENT_INPUTS

C = lambda t: dg.AssetKey(["canonical", t])  # noqa: E731
DRIFT = dg.AssetKey(["marts", "inventory_drift"])
ALIGNMENT = dg.AssetKey(["marts", "forecast_order_alignment"])
EXCEPTIONS = dg.AssetKey(["marts", "exceptions"])
KPIS = dg.AssetKey(["marts", "kpis"])
FEED_STATUS = dg.AssetKey(["ingest", "feed_status"])


def _meta(out: dict) -> dict:
    """Reconciliation metadata -> Dagster metadata (markdown tables stay markdown)."""
    meta = {}
    for k, v in out.items():
        if isinstance(v, str) and v.startswith("|"):
            meta[k] = dg.MetadataValue.md(v)
        elif v is None or isinstance(v, (int, float, str, bool)):
            meta[k] = v
        else:
            meta[k] = dg.MetadataValue.json(v)
    return meta


def _contract_result(contract: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name="mart_contract", passed=not contract["failures"],
                               metadata={"failures": contract["failures"], "sample": dg.MetadataValue.json(
                                   contract["sample"])})


def _build_and_export(context, distsync: DistsyncResource, build, table: str) -> dg.MaterializeResult:
    settings, as_of = distsync.load_settings(), distsync.resolve_as_of(context)
    with distsync.connect() as con:
        out = build(con, settings, as_of)
        export_to_lake(con, table, str(distsync.lake_path()))
    return dg.MaterializeResult(metadata=_meta(out))


@dg.asset(
    key=DRIFT, group_name="marts", pool="duckdb", kinds={"duckdb", "parquet"},
    deps=[C("inventory_snapshot"), C("inventory_txn"), C("item"), C("item_location"), FEED_STATUS],
    description="Three-way inventory drift per item-location (ERP vs WMS vs planning, time-aligned with the "
                "WMS movement log); history kept per run. Rules: reconciliation/drift.py.",
    check_specs=[
        dg.AssetCheckSpec("drift_rate_below_threshold", asset=DRIFT),
        dg.AssetCheckSpec("drift_value_below_threshold", asset=DRIFT),
        dg.AssetCheckSpec("mart_contract", asset=DRIFT, blocking=True,
                          description="Published columns and statuses (contracts/outgoing.py)"),
    ],
)
def inventory_drift(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    settings, as_of = distsync.load_settings(), distsync.resolve_as_of(context)
    with distsync.connect() as con:
        out = build_inventory_drift(con, settings, as_of, distsync.lake_path())
    contract = out.pop("contract")
    rate, value = out.get("drift_rate") or 0.0, out.get("drift_value_total") or 0.0
    return dg.MaterializeResult(
        metadata={**_meta(out), "dagster/row_count": out["item_locations"], "as_of": as_of.isoformat(),
                  "settings": dg.MetadataValue.json(settings.as_dict())},
        check_results=[
            dg.AssetCheckResult(check_name="drift_rate_below_threshold", passed=rate <= settings.warn_drift_rate,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"drift_rate": rate, "threshold": settings.warn_drift_rate}),
            dg.AssetCheckResult(check_name="drift_value_below_threshold",
                                passed=value <= settings.warn_drift_value_total, severity=dg.AssetCheckSeverity.WARN,
                                metadata={"drift_value_total": value, "threshold": settings.warn_drift_value_total}),
            _contract_result(contract),
        ],
    )


@dg.asset(
    key=ALIGNMENT, group_name="marts", pool="duckdb", kinds={"duckdb", "parquet"},
    deps=[dg.AssetKey(t.split(".")) for t in ALIGNMENT_INPUTS],
    description="Forecast-to-order alignment: weekly projection, shortages in the frozen window, netting "
                "proposals (marts.replenishment_proposal), excess. Rules: reconciliation/alignment.py.",
    check_specs=[dg.AssetCheckSpec("mart_contract", asset=ALIGNMENT, blocking=True,
                                   description="Published columns and statuses (contracts/outgoing.py)")],
)
def forecast_order_alignment(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    settings, as_of = distsync.load_settings(), distsync.resolve_as_of(context)
    with distsync.connect() as con:
        out = build_forecast_order_alignment(con, settings, as_of, lake_dir=distsync.lake_path())
    contract = out.pop("contract")
    return dg.MaterializeResult(metadata={**_meta(out), "dagster/row_count": out["item_locations"]},
                                check_results=[_contract_result(contract)])


@dg.asset(
    key=EXCEPTIONS, group_name="marts", pool="duckdb", kinds={"duckdb"},
    deps=[DRIFT, ALIGNMENT, C("planned_order"), C("purchase_order_line"), FEED_STATUS],
    description="Every problem a person must act on, with its lifecycle across runs (first/last seen, "
                "resolved, reopened). Rules: reconciliation/exceptions.py.",
)
def exceptions(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    return _build_and_export(context, distsync, build_exceptions, "marts.exceptions")


@dg.asset(
    key=KPIS, group_name="marts", pool="duckdb", kinds={"duckdb"}, deps=[EXCEPTIONS],
    description="Run KPIs (drift rate, drift value, alignment rate, open exceptions, files rejected).",
)
def kpis(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    return _build_and_export(context, distsync, build_kpis, "marts.kpis")


mart_assets = [inventory_drift, forecast_order_alignment, exceptions, kpis]
