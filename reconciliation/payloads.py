"""Sync payloads (semantics.md §6): what the outbox sends to the planning system and the ERP.

Two payload types, each built from the marts of one run as a polars frame with one row
per record:

* ``planning_inventory_sync`` — ERP stock per item-location, in planning codes:
  ``product_code``, ``site_code``, ``on_hand`` (ERP base quantity), ``uom`` (base unit),
  ``as_of`` (``T_e``, the ERP extract time, ISO-8601 ``Z``), ``quality``.
* ``erp_replenishment_proposal`` — one record per netting proposal (§4): ``MATNR``
  (18 digits), ``WERKS``, ``quantity`` (base units), ``MEINS``, ``need_date``
  (``YYYY-MM-DD``), ``forecast_version``.

Besides the payload fields each frame carries the columns the outbox needs and does not
send: ``business_key`` (JSON object of the key fields), ``content`` (JSON object of the
compared fields) and ``content_version``; and the field it sends, ``idempotency_key``.

Idempotency and delta — one rule for both payload types
--------------------------------------------------------

* ``content_version = sha256(<previous content_version of the key> ":" <content>)``, the
  previous one being the last *emitted* version for that business key (empty for the
  first). ``idempotency_key = sha256(payload_type "\\n" business_key "\\n" content_version)``.
  So re-building the same run gives the same keys (a re-run, or a re-run after a crash,
  emits nothing new), changed content gets a new key, and a value that comes *back*
  (100 → 90 → 100) gets a new key too — with a plain content hash the receiver's
  idempotency check would drop that correction as a duplicate of the first 100.
* A record is emitted when its content differs from the last emitted content of its
  business key (or the key was never emitted). ``full_sync=True`` emits every record
  again, except those already emitted by this same ``run_as_of`` (so a full sync re-run
  is a no-op too).
* Compared content: ``on_hand``, ``uom``, ``quality`` for the inventory sync — not
  ``as_of``: a new ERP extract with the same stock is not a change (the planning system
  keeps the ``as_of`` of the last change; a full sync refreshes it). For proposals:
  ``quantity``, ``MEINS``, ``forecast_version`` (key: ``MATNR``, ``WERKS``,
  ``need_date``).

The last emitted state per business key is read from the SQL outbox
(:meth:`reconciliation.outbox.Outbox.last_emitted`, cached as Parquet while the outbox
has no new batch). :func:`input_fingerprint` digests exactly what a build reads, so
that an unchanged build can be skipped (:mod:`reconciliation.delivery`).

Decisions where the spec is silent
----------------------------------

* Item-locations are those of ``marts.inventory_drift`` present in the ERP snapshot
  (``erp_present``). A key that was emitted before and has now dropped out of the ERP
  snapshot is sent once with ``on_hand = 0`` (ERP is the book of record; otherwise the
  planning system would keep the old stock for ever); its ``as_of`` is the ERP snapshot
  time of the run.
* An item (or location) with more than one PLANNING code is *not* sent (which code is the
  live one cannot be known; sending both would double the stock in planning); it is
  counted as ``ambiguous_mapping``. Unmapped keys are counted as ``unmapped``.
* ``quality``: ``stale`` when the ERP inventory feed is stale; else ``unverifiable`` when
  the key's ERP-vs-WMS comparison is unverifiable (a conflicting duplicate — the ERP
  quantity is not trustworthy either); else ``drift`` with an open WMS
  ``INVENTORY_DRIFT`` exception (read as this run's ``status_wms = 'drift'``, the rule
  that opens that exception, so the hourly sync needs no exceptions rebuild); else
  ``reconciled``.
* Blocking: ``planning_inventory_sync`` is blocked when the ERP ``inventory_balance``
  feed is stale, its newest delivered file was rejected, or it has no current file.
  Proposals are netted from ERP stock and open POs, so they are blocked when
  ``erp/inventory_balance`` or ``erp/purchase_order`` fails those checks (stale stock or
  missing PO changes would order the wrong quantity, or order twice). A stale forecast
  does not block them: the latest published forecast stays the plan of record until a
  new one arrives (its ``STALE_FEED`` exception is reported). Both payloads are blocked
  when their mart belongs to another run.
* Quantities are rounded to 6 decimals, so unit-conversion noise is not a change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import polars as pl

from contracts.settings import Settings
from contracts.warehouse import table_exists

from .incremental import code_stamp
from .marts_ddl import run_clock

PLANNING_INVENTORY_SYNC = "planning_inventory_sync"
ERP_REPLENISHMENT_PROPOSAL = "erp_replenishment_proposal"

# payload fields, in the order they are written
FIELDS: dict[str, tuple[str, ...]] = {
    PLANNING_INVENTORY_SYNC: ("product_code", "site_code", "on_hand", "uom", "as_of", "quality"),
    ERP_REPLENISHMENT_PROPOSAL: ("MATNR", "WERKS", "quantity", "MEINS", "need_date", "forecast_version"),
}
BUSINESS_KEY: dict[str, tuple[str, ...]] = {
    PLANNING_INVENTORY_SYNC: ("product_code", "site_code"),
    ERP_REPLENISHMENT_PROPOSAL: ("MATNR", "WERKS", "need_date"),
}
COMPARED: dict[str, tuple[str, ...]] = {
    PLANNING_INVENTORY_SYNC: ("on_hand", "uom", "quality"),
    ERP_REPLENISHMENT_PROPOSAL: ("quantity", "MEINS", "forecast_version"),
}
# columns of a built frame that the outbox keeps in SQL but does not send
INTERNAL_COLUMNS = ("business_key", "content", "content_version")

QTY_DECIMALS = 6
PROPOSAL_BLOCKING_FEEDS = (("erp", "inventory_balance"), ("erp", "purchase_order"))


class EmittedState(Protocol):
    """What the builders need from the outbox: the last emitted state per business key."""

    def last_emitted(self, payload_type: str) -> pl.DataFrame:
        """Columns business_key, content, content_version, run_as_of (aware UTC datetime)."""
        ...


class PayloadBuild(tuple):
    """``(records, blocked_reason)`` — unpacks as a pair — plus ``stats`` (counts)."""

    stats: dict[str, Any]

    def __new__(cls, records: pl.DataFrame, blocked_reason: str | None, stats: dict[str, Any]):
        self = super().__new__(cls, (records, blocked_reason))
        self.stats = stats
        return self

    @property
    def records(self) -> pl.DataFrame:
        return self[0]

    @property
    def blocked_reason(self) -> str | None:
        return self[1]


# --- helpers ------------------------------------------------------------------------------
def utc(as_of: datetime | str) -> datetime:
    """``as_of`` as an aware UTC datetime (naive = UTC; ISO-8601 text accepted)."""
    return run_clock(as_of).as_of


def iso_z(ts: datetime) -> str:
    """``2026-11-24T09:00:00Z`` (microseconds only when there are some)."""
    ts = utc(ts)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if ts.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def sha256_hex(values: pl.Series) -> pl.Series:
    """sha256 hex digest of each string (UTF-8). Stable across library versions, unlike
    ``polars.Series.hash``; ≈ 1.3 µs a value with the Python loop included (measured:
    DuckDB's ``sha256()`` gives the same hex but costs more CPU)."""
    sha = hashlib.sha256
    return pl.Series(values.name, [sha(v.encode()).hexdigest() for v in values.to_list()], dtype=pl.String)


def json_column(df: pl.DataFrame, columns: tuple[str, ...]) -> pl.Series:
    """Each row's ``columns`` as one compact JSON object (columnar, in the given order)."""
    return df.select(pl.struct(list(columns)).struct.json_encode().alias("j")).to_series()


_EMPTY_STATE = pl.DataFrame(
    schema={"business_key": pl.String, "content": pl.String, "content_version": pl.String,
            "run_as_of": pl.Datetime("us", "UTC")}
)


def last_state(outbox: EmittedState | None, payload_type: str) -> pl.DataFrame:
    """The outbox's last emitted state per business key (empty without an outbox)."""
    return outbox.last_emitted(payload_type) if outbox is not None else _EMPTY_STATE


_LAST_COLUMNS = ("_last_content", "_last_version", "_last_run")


def join_last(frame: pl.DataFrame, last: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with ``business_key``) and the last emitted ``content``,
    ``content_version`` and ``run_as_of`` of each key (null when never emitted)."""
    last = last.select("business_key", *(pl.col(c).alias(a) for c, a in
                                          zip(("content", "content_version", "run_as_of"), _LAST_COLUMNS)))
    return frame.join(last, on="business_key", how="left")


def version_records(
    frame: pl.DataFrame,
    payload_type: str,
    run_as_of: datetime,
    last: pl.DataFrame = _EMPTY_STATE,
    full_sync: bool = False,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Add business_key / content / content_version / idempotency_key and keep the
    records to emit: delta against ``last`` (the state :func:`last_state` returns; see
    the module doc)."""
    fields = FIELDS[payload_type]
    joined = _LAST_COLUMNS[0] in frame.columns  # already joined to ``last`` by the caller
    df = frame.select(*fields, *(_LAST_COLUMNS if joined else ())).with_columns(
        business_key=frame["business_key"] if "business_key" in frame.columns
        else json_column(frame, BUSINESS_KEY[payload_type]),
        content=json_column(frame, COMPARED[payload_type]),
    )
    if not joined:
        df = join_last(df, last)
    changed = pl.col("_last_content").is_null() | (pl.col("_last_content") != pl.col("content"))
    if full_sync:
        same_run = pl.col("_last_run").is_not_null() & (pl.col("_last_run") == pl.lit(run_as_of))
        keep = changed | ~same_run
    else:
        keep = changed
    out = df.filter(keep)
    stats = {"candidates": df.height, "unchanged": df.height - out.height}
    versions = sha256_hex(out.select(
        pl.concat_str(pl.col("_last_version").fill_null(""), pl.lit(":"), pl.col("content"))).to_series())
    out = out.with_columns(content_version=versions)
    keys = sha256_hex(out.select(
        pl.concat_str(pl.lit(f"{payload_type}\n"), pl.col("business_key"), pl.lit("\n"), pl.col("content_version"))
    ).to_series())
    out = out.with_columns(idempotency_key=keys)
    return out.select(*fields, "idempotency_key", *INTERNAL_COLUMNS), stats


# --- blocking checks ----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedCheck:
    """The blocking checks of one feed for a run (§6): stale, newest delivered file
    rejected, or no current file at all."""

    system: str
    feed: str
    missing: bool = False
    stale: bool = False
    rejected: bool = False
    reasons: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return bool(self.reasons)


def check_feed(con: duckdb.DuckDBPyConnection, as_of: datetime, system: str, feed: str) -> FeedCheck:
    """Run the blocking checks of ``system/feed`` at ``as_of`` (from ``ingest.feed_status``
    of the latest run not after ``as_of`` and ``ingest.manifest``)."""
    reasons: list[str] = []
    status = None
    if table_exists(con, "ingest.feed_status"):
        status = con.execute(
            """SELECT stale, newest_file, age_hours, freshness_limit_hours
               FROM ingest.feed_status
               WHERE lower(system) = $system AND feed = $feed
                 AND (run_as_of IS NULL OR run_as_of <= $as_of)
               ORDER BY run_as_of DESC NULLS LAST LIMIT 1""",
            {"system": system, "feed": feed, "as_of": as_of},
        ).fetchone()
    missing = status is None or status[1] is None
    stale = not missing and bool(status[0])
    if missing:
        reasons.append(f"{system}/{feed} has no current file")
    elif stale:
        age = f"{status[2]:.0f} h old" if status[2] is not None else "too old"
        limit = f" (limit {status[3]:.0f} h)" if status[3] is not None else ""
        reasons.append(f"{system}/{feed} is stale: newest file {status[1]} is {age}{limit}")
    rejected = False
    if table_exists(con, "ingest.manifest"):
        # the latest version of each path (a re-delivered duplicate changes nothing), newest path
        newest = con.execute(
            """SELECT file_path, outcome, reason FROM (
                   SELECT * FROM ingest.manifest
                   WHERE lower(system) = $system AND feed = $feed
                     AND outcome IS DISTINCT FROM 'duplicate'
                     AND (run_as_of IS NULL OR run_as_of <= $as_of)
                   QUALIFY row_number() OVER (PARTITION BY file_path ORDER BY ingested_at DESC NULLS LAST,
                                              run_as_of DESC NULLS LAST) = 1)
               ORDER BY extract_ts DESC NULLS LAST, file_path DESC LIMIT 1""",
            {"system": system, "feed": feed, "as_of": as_of},
        ).fetchone()
        rejected = newest is not None and newest[1] == "rejected"
        if rejected:
            why = f": {newest[2]}" if newest[2] else ""
            reasons.append(f"newest {system}/{feed} file {newest[0]} was rejected{why}")
    return FeedCheck(system, feed, missing, stale, rejected, tuple(reasons))


def _other_run(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime) -> str | None:
    """A reason when ``table`` holds rows of another run and none of this one."""
    this, other = con.execute(
        f"""SELECT count(*) FILTER (WHERE run_as_of = $as_of),
                   max(run_as_of) FILTER (WHERE run_as_of IS DISTINCT FROM $as_of AND run_as_of IS NOT NULL)
            FROM {table}""",
        {"as_of": as_of},
    ).fetchone()
    if this == 0 and other is not None:
        return f"{table} was computed for run {iso_z(other)}, not {iso_z(as_of)}"
    return None


@dataclass(frozen=True)
class BlockingChecks:
    """Every blocking check of one payload type for a run: its mart belongs to another
    run (``other_run``), and the checks of each feed it depends on (in the order of
    :data:`BLOCKING_FEEDS`)."""

    other_run: str | None
    feeds: tuple[FeedCheck, ...]

    @property
    def reason(self) -> str | None:
        reasons = [r for r in (self.other_run, *(r for f in self.feeds for r in f.reasons)) if r]
        return "; ".join(reasons) or None

    def outcome(self) -> list:
        """What the records depend on, without the run-specific wording of the reasons
        (a stale feed's age, the other run's time): for the input fingerprint."""
        return [self.other_run is not None,
                [[f.system, f.feed, f.missing, f.stale, f.rejected] for f in self.feeds]]


MART: dict[str, str] = {
    PLANNING_INVENTORY_SYNC: "marts.inventory_drift",
    ERP_REPLENISHMENT_PROPOSAL: "marts.replenishment_proposal",
}
BLOCKING_FEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    PLANNING_INVENTORY_SYNC: (("erp", "inventory_balance"),),
    ERP_REPLENISHMENT_PROPOSAL: PROPOSAL_BLOCKING_FEEDS,
}


def blocking_checks(con: duckdb.DuckDBPyConnection, payload_type: str, as_of: datetime) -> BlockingChecks:
    as_of = utc(as_of)
    return BlockingChecks(_other_run(con, MART[payload_type], as_of),
                          tuple(check_feed(con, as_of, system, feed) for system, feed in BLOCKING_FEEDS[payload_type]))


# --- input fingerprint (skip an unchanged rebuild) ----------------------------------------
def _digest(columns: str) -> str:
    """count, xor and sum of a row hash: an order-independent digest of a set of rows."""
    return f"count(*), bit_xor(hash({columns})), sum(hash({columns})::HUGEINT)"


# exactly the rows and columns each build reads
_FINGERPRINT_SQL = {
    PLANNING_INVENTORY_SYNC: f"""
SELECT (SELECT [{_digest("item_id, location_id, erp_qty, erp_present, erp_as_of, status_wms")}]::VARCHAR
        FROM marts.inventory_drift),
       (SELECT [{_digest("item_id, external_code")}]::VARCHAR FROM canonical.item_xref
        WHERE upper(system) = 'PLANNING' AND external_code IS NOT NULL),
       (SELECT [{_digest("location_id, external_code")}]::VARCHAR FROM canonical.location_xref
        WHERE upper(system) = 'PLANNING' AND external_code IS NOT NULL),
       (SELECT [{_digest("item_id, base_uom")}]::VARCHAR FROM canonical.item)
""",
    ERP_REPLENISHMENT_PROPOSAL: f"""
SELECT [{_digest("matnr, item_id, location_id, quantity, base_uom, need_date, forecast_version")}]::VARCHAR
FROM marts.replenishment_proposal p
WHERE p.quantity > 0 AND (p.run_as_of = $as_of OR p.run_as_of IS NULL)
""",
}
_CODE = tuple(Path(__file__).resolve().parent.parent / f for f in (
    "reconciliation/payloads.py", "reconciliation/outbox.py", "contracts/outgoing.py"))


def input_fingerprint(con: duckdb.DuckDBPyConnection, payload_type: str, as_of: datetime,
                      checks: BlockingChecks, full_sync: bool = False, schema_version: str = "") -> str:
    """A content fingerprint of everything a build of ``payload_type`` reads from the
    warehouse (the digest of exactly the mart, xref and item rows and columns it reads,
    not their ``run_as_of``), the outcome of its blocking checks, ``full_sync`` (with the
    run's ``as_of``, which a full sync depends on), the schema version and the code that
    builds, checks and emits the records. Combined with the outbox's state token it says
    whether a rebuild could give anything but the last build's result."""
    as_of = utc(as_of)
    params = {"as_of": as_of} if "$as_of" in _FINGERPRINT_SQL[payload_type] else {}
    digest = con.execute(_FINGERPRINT_SQL[payload_type], params).fetchone()
    code = code_stamp(*_CODE)
    parts = [payload_type, list(digest), checks.outcome(), full_sync, iso_z(as_of) if full_sync else None,
             schema_version, code]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def after_emission(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats a rebuild gives right after its records were all emitted: the same
    candidates, every one now unchanged, nothing to send (a full sync too: everything was
    just sent by this run)."""
    out = dict(stats)
    out["records"] = 0
    if "candidates" in out:
        out["unchanged"] = out["candidates"]
    return out


# --- planning_inventory_sync --------------------------------------------------------------
_PLANNING_SQL = """
WITH ix AS (
    SELECT item_id, min(external_code) AS product_code, count(DISTINCT external_code) AS n
    FROM canonical.item_xref WHERE upper(system) = 'PLANNING' AND external_code IS NOT NULL
    GROUP BY item_id
), lx AS (
    SELECT location_id, min(external_code) AS site_code, count(DISTINCT external_code) AS n
    FROM canonical.location_xref WHERE upper(system) = 'PLANNING' AND external_code IS NOT NULL
    GROUP BY location_id
), units AS (
    SELECT item_id, any_value(base_uom) AS base_uom FROM canonical.item GROUP BY item_id
), snapshot AS (
    SELECT max(erp_as_of) AS t FROM marts.inventory_drift
)
SELECT d.item_id, d.location_id, ix.product_code, lx.site_code,
       coalesce(ix.n, 0) AS item_codes, coalesce(lx.n, 0) AS location_codes,
       round(CASE WHEN d.erp_present THEN coalesce(d.erp_qty, 0) ELSE 0 END, $decimals) AS on_hand,
       u.base_uom AS uom,
       strftime(coalesce(d.erp_as_of, snapshot.t) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ') AS as_of,
       coalesce(d.erp_present, false) AS erp_present,
       d.status_wms = 'unverifiable' AS unverifiable,
       {wms_drift} AS wms_drift
FROM marts.inventory_drift d
CROSS JOIN snapshot
LEFT JOIN ix ON ix.item_id = d.item_id
LEFT JOIN lx ON lx.location_id = d.location_id
LEFT JOIN units u ON u.item_id = d.item_id
"""

def build_planning_inventory_sync(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | str,
    settings: Settings,
    outbox: EmittedState | None = None,
    full_sync: bool = False,
) -> PayloadBuild:
    """Records of ``planning_inventory_sync`` to emit for the run at ``as_of``.

    Returns ``(records, blocked_reason)``; when ``blocked_reason`` is not None the records
    are what *would* have been sent — report them, do not emit them. ``.stats`` counts
    the item-locations seen, unmapped, ambiguous, unchanged and emitted.
    """
    del settings  # no tunable number here: freshness is already in ingest.feed_status
    as_of = utc(as_of)
    checks = blocking_checks(con, PLANNING_INVENTORY_SYNC, as_of)
    erp = checks.feeds[0]
    # a key has an open WMS INVENTORY_DRIFT exception exactly when this run's drift mart
    # says status_wms = 'drift' (that is the exception's rule); reading the mart keeps the
    # hourly sync, which does not rebuild the exceptions, as fresh as its drift
    base = con.execute(_PLANNING_SQL.format(wms_drift="coalesce(d.status_wms = 'drift', false)"),
                       {"decimals": QTY_DECIMALS}).pl()
    base = base.with_columns(
        quality=pl.when(pl.lit(erp.stale)).then(pl.lit("stale"))
        .when(pl.col("unverifiable").fill_null(False)).then(pl.lit("unverifiable"))
        .when(pl.col("wms_drift").fill_null(False)).then(pl.lit("drift"))
        .otherwise(pl.lit("reconciled")),
        business_key=json_column(base, BUSINESS_KEY[PLANNING_INVENTORY_SYNC]),
    )
    unmapped = (pl.col("item_codes") == 0) | (pl.col("location_codes") == 0)
    ambiguous = ~unmapped & ((pl.col("item_codes") > 1) | (pl.col("location_codes") > 1))
    in_erp = base.filter(pl.col("erp_present"))
    stats: dict[str, Any] = {
        "item_locations": in_erp.height,
        "unmapped": in_erp.filter(unmapped).height,
        "ambiguous_mapping": in_erp.filter(ambiguous).height,
    }
    last = last_state(outbox, PLANNING_INVENTORY_SYNC)
    # a key absent from ERP is sent (as 0) only when the planning system has had a value
    # one join with the last state serves this filter and the delta in version_records
    mapped = join_last(base.filter(~unmapped & ~ambiguous), last).filter(
        pl.col("erp_present") | pl.col("_last_content").is_not_null())
    stats["dropped_out_of_erp"] = mapped.filter(~pl.col("erp_present")).height
    records, vstats = version_records(mapped, PLANNING_INVENTORY_SYNC, as_of, last, full_sync)
    stats.update(vstats, records=records.height, full_sync=full_sync)
    return PayloadBuild(records.sort(["product_code", "site_code"]), checks.reason, stats)


# --- erp_replenishment_proposal -----------------------------------------------------------
_PROPOSAL_SQL = """
SELECT coalesce(p.matnr, lpad(p.item_id, 18, '0')) AS "MATNR",
       p.location_id AS "WERKS",
       round(p.quantity, $decimals) AS quantity,
       p.base_uom AS "MEINS",
       strftime(p.need_date, '%Y-%m-%d') AS need_date,
       p.forecast_version
FROM marts.replenishment_proposal p
WHERE p.quantity > 0 AND (p.run_as_of = $as_of OR p.run_as_of IS NULL)
"""


def build_erp_replenishment_proposal(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | str,
    settings: Settings,
    outbox: EmittedState | None = None,
) -> PayloadBuild:
    """Records of ``erp_replenishment_proposal`` not yet emitted (same content for the same
    ``MATNR``/``WERKS``/``need_date`` is never sent twice). Returns
    ``(records, blocked_reason)`` like :func:`build_planning_inventory_sync`."""
    del settings
    as_of = utc(as_of)
    checks = blocking_checks(con, ERP_REPLENISHMENT_PROPOSAL, as_of)
    frame = con.execute(_PROPOSAL_SQL, {"decimals": QTY_DECIMALS, "as_of": as_of}).pl()
    last = last_state(outbox, ERP_REPLENISHMENT_PROPOSAL)
    records, vstats = version_records(frame, ERP_REPLENISHMENT_PROPOSAL, as_of, last)
    stats = {"proposals": frame.height, **vstats, "records": records.height}
    return PayloadBuild(records.sort(["MATNR", "WERKS", "need_date"]), checks.reason, stats)

