"""Canonical assets: the current version of every entity, gated by its pandera contract.

``canonical/<table>`` picks each feed's current files and rebuilds the table when they
changed; its ``canonical_contract`` check is blocking, so a table that breaks its
contract never reaches the marts. ``ingest/feed_status`` records freshness per feed and
files in the landing zone that are not named like any feed.
"""


import dagster as dg

from assets.ingestion import ingest_key
from assets.metadata import md
from contracts.canonical_build import CANONICAL_TABLE, build_canonical_table, build_feed_status, feeds_of
from contracts.ingest import export_ingest_tables, record_unrecognised
from contracts.landing import list_landing
from pipelines.resources import DistsyncResource

CANONICAL_TABLES = sorted(set(CANONICAL_TABLE.values()))


def canonical_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(table.split("."))


def _canonical_asset(table: str) -> dg.AssetsDefinition:
    key = canonical_key(table)

    @dg.asset(
        key=key,
        group_name="canonical",
        deps=[ingest_key(f) for f in feeds_of(table)],
        pool="duckdb",
        kinds={"duckdb", "pandera"},
        description=f"{table}: current version of " + ", ".join(f.name for f in feeds_of(table))
                    + " in base units and canonical ids (see contracts/canonical_build.py).",
        check_specs=[dg.AssetCheckSpec("canonical_contract", asset=key, blocking=True,
                                       description="pandera canonical schema (contracts/canonical.py)")],
    )
    def _build(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
        as_of = distsync.resolve_as_of(context)
        with distsync.connect() as con:
            out = build_canonical_table(con, table, distsync.load_settings(), as_of, distsync.lake_path())
        failures = out["contract_failures"]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": out["rows"],
                "lake_folder": dg.MetadataValue.path(out["folder"]),
                "rebuilt": out["rebuilt"],
                "current_files": md([{"feed": name, "file": f} for name, files in out["current_files"].items()
                                     for f in files]),
            },
            check_results=[dg.AssetCheckResult(
                check_name="canonical_contract", passed=not failures,
                metadata={"failures_by_check": failures, "sample": md(out["contract_sample"])},
            )],
        )

    return _build


canonical_assets = [_canonical_asset(t) for t in CANONICAL_TABLES]


@dg.asset(
    key=dg.AssetKey(["ingest", "feed_status"]),
    group_name="canonical",
    deps=[canonical_key(t) for t in CANONICAL_TABLES],
    pool="duckdb",
    kinds={"duckdb"},
    description="Freshness of every feed at the run's as_of (stale feeds raise STALE_FEED), and files in "
                "the landing zone whose name matches no feed (recorded as rejected).",
    check_specs=[dg.AssetCheckSpec("feeds_fresh", asset=dg.AssetKey(["ingest", "feed_status"]),
                                   description="No feed is older than its freshness limit")],
)
def feed_status(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
    as_of = distsync.resolve_as_of(context)
    _, unknown = list_landing(distsync.landing_url())
    with distsync.connect() as con:
        recorded = [o for o in (record_unrecognised(con, u, as_of) for u in unknown) if o is not None]
        rows = build_feed_status(con, distsync.load_settings(), as_of)
        export_ingest_tables(con, str(distsync.lake_path()))
    stale = [r for r in rows if r["stale"]]
    table = [{k: r[k] for k in ("system", "feed", "newest_file", "age_hours", "freshness_limit_hours", "stale")}
             for r in rows]
    return dg.MaterializeResult(
        metadata={"feeds": md(table), "stale_feeds": len(stale), "unrecognised_files_new": len(recorded)},
        check_results=[dg.AssetCheckResult(
            check_name="feeds_fresh", passed=not stale, severity=dg.AssetCheckSeverity.WARN,
            metadata={"stale": md([{"system": r["system"], "feed": r["feed"], "age_hours": r["age_hours"]}
                                   for r in stale])},
        )],
    )
