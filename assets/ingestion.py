"""Ingestion assets: one per feed (group = source system), thin wrappers over contracts/.

Each asset ingests its feed's new files into ``staging`` and reports a ``raw_contract``
check: quarantined rows per rule and rejected files. It is not blocking: bad rows are
already held back in quarantine and a rejected file leaves the previous version current.
"""


import dagster as dg

from assets.metadata import md
from contracts.feeds import FEEDS, Feed
from contracts.ingest import ingest_feed_from_landing, quarantine_summary
from pipelines.resources import DistsyncResource

# canonical tables a feed is mapped and checked against
MAPPING_DEPS = {
    "item_master": [], "location_master": [],
    "uom_conversion": ["item"], "item_location": ["item", "location"],
    "item_xref": ["item"], "location_xref": ["location"],
    "inventory_balance": ["item", "location", "uom_conversion"],
    "purchase_order": ["item", "location", "uom_conversion"],
    "forecast": ["item", "uom_conversion", "item_xref", "location_xref"],
    "inventory_position": ["item", "uom_conversion", "item_xref", "location_xref"],
    "planned_order": ["item", "uom_conversion", "item_xref", "location_xref"],
    "stock_snapshot": ["item", "item_xref", "location_xref"],
    "transaction": ["item", "item_xref", "location_xref"],
}


def ingest_key(feed: Feed) -> dg.AssetKey:
    return dg.AssetKey(["ingest", feed.qualified])


def _feed_asset(feed: Feed) -> dg.AssetsDefinition:
    key = ingest_key(feed)

    @dg.asset(
        key=key,
        group_name=feed.system,
        deps=[dg.AssetKey(["canonical", t]) for t in MAPPING_DEPS[feed.name]],
        pool="duckdb",
        kinds={"duckdb", {"csv": "csv", "jsonl": "json", "parquet": "parquet"}[feed.fmt]},
        description=f"{feed.system} {feed.name} extracts ({feed.fmt}, {feed.kind}): new files checked against "
                    f"the raw contract into staging.{feed.qualified}; broken rows to ingest.quarantine.",
        check_specs=[dg.AssetCheckSpec("raw_contract", asset=key,
                                       description="Rows quarantined per rule and files rejected")],
    )
    def _ingest(context: dg.AssetExecutionContext, distsync: DistsyncResource) -> dg.MaterializeResult:
        as_of = distsync.resolve_as_of(context)
        with distsync.connect() as con:
            result = ingest_feed_from_landing(con, feed, distsync.landing_url(), distsync.load_settings(), as_of,
                                              distsync.lake_path())
            current_counts, sample = quarantine_summary(con, feed.name)
        files = result.files
        rejected = [f for f in files if f.outcome == "rejected"]
        new_rules: dict[str, int] = {}
        for f in files:
            for rule, n in f.rule_counts.items():
                new_rules[rule] = new_rules.get(rule, 0) + n
        file_rows = [{"file": f.rel_path, "outcome": f.outcome, "read": f.rows_read, "accepted": f.rows_accepted,
                      "quarantined": f.rows_quarantined, "reason": f.reason, "seconds": round(f.seconds, 2)}
                     for f in files]
        check = dg.AssetCheckResult(
            check_name="raw_contract",
            passed=not rejected and not new_rules,
            severity=dg.AssetCheckSeverity.ERROR if rejected else dg.AssetCheckSeverity.WARN,
            metadata={
                "rows_quarantined_by_rule_new_files": new_rules,
                "rows_quarantined_by_rule_current_files": current_counts,
                "files_rejected": md([{"file": f.rel_path, "reason": f.reason} for f in rejected]),
                "sample_failing_rows": md(sample, ["file_path", "row_number", "rule", "column", "detail", "raw"]),
            },
        )
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "files_new": len(files),
                "files_skipped_unchanged": result.skipped_unchanged,
                "files_accepted": sum(f.outcome == "accepted" for f in files),
                "files_rejected": len(rejected),
                "files_duplicate": sum(f.outcome == "duplicate" for f in files),
                "rows_accepted": sum(f.rows_accepted for f in files),
                "rows_quarantined": sum(f.rows_quarantined for f in files),
                "files": md(file_rows),
            },
            check_results=[check],
        )

    return _ingest


ingest_assets = [_feed_asset(FEEDS[name]) for name in FEEDS]
