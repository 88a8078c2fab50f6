"""The 13 source feeds of ``shared/spec/extracts.md``: format, kind, key, columns.

One ``Feed`` per feed says how its files are named and parsed, which columns the raw
contract checks (``contracts/raw.py``) and which rule picks its current version
(``contracts/canonical_build.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

# kinds (extracts.md "kind" column) -> current-version rule
SNAPSHOT = "snapshot"          # latest accepted file
DELTA = "delta"                # latest version of each key, by file <TS>
EVENTS = "events"              # every distinct key, once
VERSIONED = "versioned"        # one complete version per file; latest published_at

FILE_NAME = re.compile(r"^(?P<feed>[a-z_]+)_(?P<ts>\d{8}T\d{6}Z)\.(?P<ext>csv|jsonl|parquet)$")


@dataclass(frozen=True)
class Feed:
    system: str                 # erp | planning | wms
    name: str
    fmt: str                    # csv | jsonl | parquet
    kind: str
    key: tuple[str, ...]        # natural key, unique within a file
    columns: tuple[str, ...]    # exact header / keys / Parquet columns, in order

    @property
    def ext(self) -> str:
        return self.fmt

    @property
    def qualified(self) -> str:
        return f"{self.system}_{self.name}"

    @property
    def is_full_snapshot(self) -> bool:
        return self.kind in (SNAPSHOT, VERSIONED)


FEEDS: dict[str, Feed] = {
    f.name: f
    for f in (
        Feed("erp", "item_master", "csv", SNAPSHOT, ("MATNR",),
             ("MATNR", "MAKTX", "MEINS", "MATKL", "STPRS", "WAERS", "LVORM")),
        Feed("erp", "uom_conversion", "csv", SNAPSHOT, ("MATNR", "MEINH"),
             ("MATNR", "MEINH", "UMREZ", "UMREN")),
        Feed("erp", "location_master", "csv", SNAPSHOT, ("WERKS",),
             ("WERKS", "NAME1", "LAND1", "REGIO")),
        Feed("erp", "item_location", "csv", SNAPSHOT, ("MATNR", "WERKS"),
             ("MATNR", "WERKS", "DISPO", "PLIFZ", "EISBE", "BSTRF")),
        Feed("erp", "item_xref", "csv", SNAPSHOT, ("SYSTEM", "EXTERNAL_CODE"),
             ("MATNR", "SYSTEM", "EXTERNAL_CODE")),
        Feed("erp", "location_xref", "csv", SNAPSHOT, ("SYSTEM", "EXTERNAL_CODE"),
             ("WERKS", "SYSTEM", "EXTERNAL_CODE")),
        Feed("erp", "inventory_balance", "csv", SNAPSHOT, ("MATNR", "WERKS", "LGORT"),
             ("MATNR", "WERKS", "LGORT", "LABST", "INSME", "SPEME", "MEINS", "EXTRACTED_AT")),
        Feed("erp", "purchase_order", "csv", DELTA, ("EBELN", "EBELP"),
             ("EBELN", "EBELP", "MATNR", "WERKS", "LIFNR", "BEDAT", "EINDT", "MENGE", "BSTME",
              "WEMNG", "LOEKZ", "ELIKZ", "CONF_DATE", "PLAN_REF", "CHANGED_AT")),
        Feed("planning", "forecast", "jsonl", VERSIONED, ("product_code", "site_code", "week_start"),
             ("product_code", "site_code", "week_start", "qty", "uom", "forecast_version", "published_at")),
        Feed("planning", "inventory_position", "jsonl", SNAPSHOT, ("product_code", "site_code"),
             ("product_code", "site_code", "on_hand", "uom", "as_of")),
        Feed("planning", "planned_order", "jsonl", DELTA, ("recommendation_id",),
             ("recommendation_id", "product_code", "site_code", "qty", "uom", "need_date",
              "released_at", "status")),
        Feed("wms", "stock_snapshot", "parquet", SNAPSHOT,
             ("warehouse_code", "sku", "lot", "bin", "status"),
             ("warehouse_code", "sku", "lot", "bin", "qty_each", "status", "snapshot_at")),
        Feed("wms", "transaction", "parquet", EVENTS, ("txn_id",),
             ("txn_id", "warehouse_code", "sku", "qty_each", "txn_type", "txn_at", "reference")),
    )
}

# Ingestion order: masters first (later feeds are mapped and checked against them).
INGEST_ORDER = (
    "item_master", "location_master", "uom_conversion", "item_location",
    "item_xref", "location_xref",
    "inventory_balance", "purchase_order",
    "forecast", "inventory_position", "planned_order",
    "stock_snapshot", "transaction",
)
assert set(INGEST_ORDER) == set(FEEDS)


@dataclass(frozen=True)
class LandingFile:
    """One file found in the landing zone."""

    rel_path: str               # erp/item_master/item_master_20261123T070000Z.csv
    uri: str                    # absolute local path or s3://bucket/key
    feed: Feed
    extract_ts: datetime
    size: int
    signature: str              # size + mtime (local) or ETag (S3): unchanged => skip


def parse_file_name(rel_path: str) -> tuple[Feed, datetime] | None:
    """(feed, extract time) of a landing-relative path, or None when it is not a feed file."""
    parts = rel_path.split("/")
    if len(parts) != 3:
        return None
    system, feed_name, name = parts
    m = FILE_NAME.match(name)
    feed = FEEDS.get(feed_name)
    if not m or feed is None or feed.system != system or m["feed"] != feed_name or m["ext"] != feed.ext:
        return None
    ts = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return feed, ts
