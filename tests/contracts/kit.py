"""Write tiny landing folders for tests, file by file, in the exact extract formats."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from contracts.feeds import FEEDS

UTC = timezone.utc


def path_of(landing: Path, feed: str, ts: str) -> Path:
    f = FEEDS[feed]
    p = landing / f.system / f.name / f"{f.name}_{ts}.{f.ext}"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def csv(landing: Path, feed: str, ts: str, rows: list[str], header: str | None = None) -> Path:
    """rows: pipe-separated lines as they appear in the file."""
    p = path_of(landing, feed, ts)
    head = header if header is not None else "|".join(FEEDS[feed].columns)
    p.write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    return p


def jsonl(landing: Path, feed: str, ts: str, rows: list[dict]) -> Path:
    p = path_of(landing, feed, ts)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


WMS_TYPES = {
    "stock_snapshot": pa.schema([("warehouse_code", pa.string()), ("sku", pa.string()), ("lot", pa.string()),
                                 ("bin", pa.string()), ("qty_each", pa.int64()), ("status", pa.string()),
                                 ("snapshot_at", pa.timestamp("us", tz="UTC"))]),
    "transaction": pa.schema([("txn_id", pa.string()), ("warehouse_code", pa.string()), ("sku", pa.string()),
                              ("qty_each", pa.int64()), ("txn_type", pa.string()),
                              ("txn_at", pa.timestamp("us", tz="UTC")), ("reference", pa.string())]),
}


def parquet(landing: Path, feed: str, ts: str, rows: list[dict]) -> Path:
    p = path_of(landing, feed, ts)
    pq.write_table(pa.Table.from_pylist(rows, schema=WMS_TYPES[feed]), p)
    return p


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


M1, M2 = "000000000000000101", "000000000000000102"


def masters(landing: Path, ts: str = "20261123T070000Z") -> None:
    """Two items (EA; CS = 24 EA; PK = 5/2 EA for item 102), two plants, all xrefs."""
    csv(landing, "item_master", ts, [f"{M1}|Item 101|EA|MG01|10.00|EUR|", f"{M2}|Item 102|EA|MG02|2.50|EUR|"])
    csv(landing, "uom_conversion", ts, [f"{M1}|CS|24|1", f"{M2}|CS|12|1", f"{M2}|PK|5|2"])
    csv(landing, "location_master", ts, ["1010|Plant 1010|DE|NW", "1020|Plant 1020|DE|BY"])
    csv(landing, "item_location", ts, [f"{M1}|1010|P01|7|10.000|0.000", f"{M2}|1010|P02|14|0.000|12.000",
                                       f"{M1}|1020|P01|0|0.000|0.000"])
    csv(landing, "item_xref", ts, [f"{M1}|PLANNING|PRD101", f"{M2}|PLANNING|PRD102",
                                   f"{M1}|WMS|SKU-101", f"{M2}|WMS|SKU-102"])
    csv(landing, "location_xref", ts, ["1010|PLANNING|DC-10", "1020|PLANNING|DC-20", "1010|WMS|WHA", "1020|WMS|WHB"])
