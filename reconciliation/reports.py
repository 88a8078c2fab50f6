"""Exception reports for planners (semantics.md §7).

``write_reports(con, out_dir, as_of)`` writes, under ``out_dir`` (the ``reports`` folder):

* ``<run_date>/index.html`` — every planner: open exceptions by severity, what is new and
  what was resolved since the previous report, the alignment rate, links to each
  planner's page, stock mismatches by location;
* ``<run_date>/<planner>.html`` — one planner's open exceptions by severity then age
  (with a plain-language description of each), new and resolved since the previous
  report, stock mismatches by location, the alignment rate;
* ``<run_date>/<planner>.csv`` — the same open exceptions (UTF-8 with a byte-order mark so
  spreadsheet programs show accents right, header row);
* ``last_report.json`` — the ``as_of`` of every report written, so the next report knows
  which one came before it.

Decisions where the spec is silent:

* "Previous report" = the latest report ``as_of`` before this one in ``last_report.json``
  (re-writing a report for the same ``as_of`` compares with the one before, not itself);
  without that file, the latest earlier run in ``marts.kpis``; else none.
* New = still open and first seen after the previous report; resolved = ``resolved_at``
  in (previous report, this report].
* Exceptions without a planner (file and feed problems) are on the ``UNASSIGNED`` page.
* Planner codes become file names with every character outside ``A-Z a-z 0-9 . _ -``
  replaced by ``_``; a code that had to change (or that would clash with another or with
  ``index``) gets a short hash of the original code appended.
* A page lists at most ``max_rows`` exceptions per table (default 500) and says so; the
  CSV always has all of them.
* CSV text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
  ``-``, ``@``) get a leading apostrophe — extracts are not trusted.
* All values from extracts go through jinja2 autoescaping; the pages use inline CSS only
  (they open offline, from a file share or an e-mail attachment).
* Rows with the same sort keys (severity, age, type, item, plant, reference) are listed
  by exception id, so the same report written twice is the same file.

How it is computed: the exceptions come out of DuckDB as one polars frame; ordering,
grouping per planner, counts and the CSV are column operations, and only the first
``max_rows`` rows of each table become Python values for the page templates. The
plain-language sentence (``describe``) is Python, once per distinct (type, details, unit),
and cached between reports in ``<reports>/.cache/descriptions.parquet`` (see
``_with_descriptions``): an hourly report in the same week describes only what changed. A
planner's CSV whose rows did not change since this code wrote it is left as it is
(``_WrittenCsv``, ``<reports>/.cache/csv.json``); the pages are always written (they show
the run's ``as_of`` and what is new since the previous report).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import duckdb
import jinja2
import polars as pl
import markupsafe

from contracts.canonical import key_hash
from contracts.files import write_atomic, write_parquet_atomic
from contracts.warehouse import table_exists

from .incremental import code_stamp
from .payloads import iso_z, utc

SEVERITIES = ("high", "medium", "low")
UNASSIGNED = "UNASSIGNED"
MAX_ROWS = 500

# plain names and a one-line explanation per exception type (the glossary)
EXCEPTION_TYPES: dict[str, tuple[str, str]] = {
    "PROJECTED_SHORTAGE": ("Shortage within lead time",
                           "Stock is projected to fall below safety stock before a new order could arrive. "
                           "Expedite open orders or move stock from another plant."),
    "LATE_PO": ("Late purchase order",
                "A purchase order line is past its delivery date and still has quantity open. Chase the supplier."),
    "INVENTORY_DRIFT": ("Stock mismatch",
                        "ERP stock and the warehouse system (WMS) or the planning system disagree by more than "
                        "the tolerance, after allowing for stock movements between the two snapshots. "
                        "Check for unposted movements or a count."),
    "UNCONVERTED_RECOMMENDATION": ("Recommendation not ordered",
                                   "The planning system released an order recommendation some days ago and no "
                                   "purchase order refers to it yet."),
    "RECOMMENDATION_QTY_MISMATCH": ("Ordered quantity differs from recommendation",
                                    "Purchase order lines refer to a recommendation but order a different total "
                                    "quantity."),
    "UNCONFIRMED_PO": ("Unconfirmed purchase order",
                       "The supplier has not confirmed an open purchase order line placed several days ago."),
    "EXCESS_SUPPLY": ("Excess supply",
                      "Open purchase orders will push stock well above need (safety stock plus eight weeks of "
                      "average demand). Consider postponing or reducing them."),
    "UNMAPPED_CODE": ("Unknown product or site code",
                      "A system sent a code that no cross-reference maps to an ERP material or plant; its rows "
                      "were set aside. Master data needs a new cross-reference."),
    "CONTRACT_VIOLATION": ("Rows set aside",
                           "Rows of a delivered file broke a data rule (missing key, bad number, unknown unit, …) "
                           "and were not used."),
    "FEED_REJECTED": ("File rejected",
                      "A delivered file could not be used at all; the previous good file is still in use, so "
                      "figures may be older than you expect."),
    "STALE_FEED": ("Data out of date",
                   "The newest file of a feed is older than its freshness limit; figures based on it may be "
                   "out of date."),
}
PAIR_NAMES = {"wms": "vs warehouse (WMS)", "planning": "vs planning system"}

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_RESERVED = {"index", "last_report"}


# --- formatting ---------------------------------------------------------------------------
def fmt_qty(value: Any) -> str:
    """1234.5 → '1,234.5'; whole numbers without decimals; '' for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, float)):
        if float(value).is_integer():
            return f"{int(value):,}"
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def fmt_money(value: Any, currency: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.2f}" + (f" {currency}" if currency else "")


def fmt_ts(value: Any) -> str:
    """'2026-11-24 09:00 UTC' for timestamps (aware or ISO text), dates as they are."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


_BREAK_AFTER = re.compile(r"([/_|])")
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def breakable(value: Any) -> markupsafe.Markup:
    """Escaped text for a table cell: lines may break after ``/``, ``_`` and ``|`` (file
    paths, PO numbers) but never inside a date. (Escaping first is safe: an escaped text
    has none of ``/ _ |`` nor a date inside an entity.)"""
    text = str(markupsafe.escape("" if value is None else value))
    text = _BREAK_AFTER.sub(r"\1<wbr>", text)
    return markupsafe.Markup(_DATE.sub(r'<span class="nowrap">\1</span>', text))


def fmt_rate(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1%}"


def _listing(values: Any) -> str:
    if isinstance(values, list):
        return ", ".join(str(v) for v in values)
    return str(values)


# the details a sentence needs; without them the details are listed as they are
RULE_NAMES = {
    "null_value": "a required value is missing",
    "malformed_key": "a key is malformed",
    "bad_number": "a number cannot be read",
    "bad_date": "a date cannot be read",
    "negative_quantity": "a negative stock quantity",
    "invalid_value": "a value outside the allowed list",
    "unknown_uom": "a unit with no conversion for the item",
    "unknown_item": "an item not in the item master",
    "unknown_location": "a plant not in the plant master",
    "unmapped_code": "a code not in the cross-reference",
    "conflicting_duplicate": "two different rows for the same key",
}


def _plural(n: Any, word: str) -> str:
    return f"{fmt_qty(n)} {word}{'' if n == 1 else 's'}"


_REQUIRED = {
    "INVENTORY_DRIFT": ("erp_qty", "diff"),
    "PROJECTED_SHORTAGE": ("first_shortage_week", "shortage_qty"),
    "EXCESS_SUPPLY": ("excess_qty",),
    "LATE_PO": ("ebeln", "ebelp", "delivery_date"),
    "UNCONFIRMED_PO": ("ebeln", "ebelp", "order_date"),
    "UNCONVERTED_RECOMMENDATION": ("recommendation_id",),
    "RECOMMENDATION_QTY_MISMATCH": ("recommendation_id", "recommended_qty", "ordered_qty"),
    "UNMAPPED_CODE": ("system", "code"),
    "CONTRACT_VIOLATION": ("rule",),
    "FEED_REJECTED": (),
    "STALE_FEED": ("system", "feed"),
}


def _week_phrase(week: Any, week0: date | None) -> str:
    try:
        w = int(week)
    except (TypeError, ValueError):
        return f"in week {week}"
    when = {0: "this week", 1: "next week"}.get(w, f"in {w} weeks")
    if week0 is not None:
        when += f" (week of {(week0 + timedelta(days=7 * w)).isoformat()})"
    return when


def describe(exception_type: str, details: Any, uom: str | None = None, week0: date | None = None) -> str:
    """A plain-language sentence for one exception from its ``details`` JSON (the keys
    ``reconciliation.exceptions`` writes). ``week0`` is the Monday of the run's week.
    Missing details never produce 'None' in a sentence: the details are listed instead."""
    if isinstance(details, str):
        try:
            d = json.loads(details)
        except ValueError:
            return details
    else:
        d = details or {}
    if not isinstance(d, dict):
        return str(d)
    if any(d.get(k) is None for k in _REQUIRED.get(exception_type, ("-",))):
        listed = "; ".join(f"{k.replace('_', ' ')}: {_listing(v)}" for k, v in d.items() if v is not None)
        return listed or "No further details recorded."
    u = f" {uom}" if uom else ""

    def q(key: str) -> str:
        return fmt_qty(d.get(key)) + u

    def opt(text: str, *keys: str) -> str:
        return text if all(d.get(k) is not None for k in keys) else ""

    try:
        match exception_type:
            case "INVENTORY_DRIFT":
                other = "the warehouse system (WMS)" if d.get("pair") == "wms" else "the planning system"
                short = "WMS" if d.get("pair") == "wms" else "planning"
                diff = float(d["diff"])
                other_qty = d.get("other_aligned_qty", d.get("other_qty"))
                text = (f"ERP has {q('erp_qty')}"
                        + (f", {other} {fmt_qty(other_qty)}{u}" if other_qty is not None else "")
                        + f": {short} shows {fmt_qty(abs(diff))}{u} {'less' if diff < 0 else 'more'}")
                if d.get("drift_value") is not None:
                    text += f", worth {fmt_money(d.get('drift_value'), d.get('currency'))}"
                text += "."
                if d.get("other_present") is False:
                    text += f" The {short} stock file does not have this item."
                elif d.get("erp_present") is False:
                    text += " The ERP stock file does not have this item."
                return text
            case "PROJECTED_SHORTAGE":
                return (f"Stock falls below safety stock{opt(' (' + q('safety_stock') + ')', 'safety_stock')} "
                        f"{_week_phrase(d['first_shortage_week'], week0)}, short by {q('shortage_qty')}"
                        + opt(f", inside the lead time of {_plural(d.get('lead_time_weeks'), 'week')}", "lead_time_weeks")
                        + "." + opt(f" On hand now: {q('on_hand')}.", "on_hand"))
            case "EXCESS_SUPPLY":
                return (opt(f"Projected stock at the end of the horizon is {q('projected_end')}, ", "projected_end")
                        + f"{q('excess_qty')} more than needed"
                        + opt(f" (limit {q('excess_threshold')}: safety stock + 8 weeks of demand)", "excess_threshold")
                        + ", with purchase orders still due.")
            case "LATE_PO":
                return (f"PO line {d['ebeln']}/{d['ebelp']}" + opt(f" from supplier {d.get('supplier')}", "supplier")
                        + f" was due {d['delivery_date']}" + opt(f" ({d.get('days_late')} days late)", "days_late")
                        + opt(f"; {fmt_qty(d.get('open_qty'))}{u} still to be delivered", "open_qty") + ".")
            case "UNCONFIRMED_PO":
                return (f"PO line {d['ebeln']}/{d['ebelp']}" + opt(f" to supplier {d.get('supplier')}", "supplier")
                        + f", ordered {d['order_date']}" + opt(f" ({d.get('days_since_order')} days ago)", "days_since_order")
                        + ", has no supplier confirmation.")
            case "UNCONVERTED_RECOMMENDATION":
                return (f"Recommendation {d['recommendation_id']}" + opt(f" for {q('recommended_qty')}", "recommended_qty")
                        + opt(f" needed {d.get('need_date')}", "need_date")
                        + opt(f" was released {fmt_ts(d.get('released_at'))};", "released_at")
                        + " no purchase order refers to it.")
            case "RECOMMENDATION_QTY_MISMATCH":
                return (f"Recommendation {d['recommendation_id']} asked for {q('recommended_qty')}; "
                        + opt(f"PO line(s) {_listing(d.get('po_lines'))} ", "po_lines") + f"order {q('ordered_qty')}.")
            case "UNMAPPED_CODE":
                kind = {"item": "product", "location": "site"}.get(str(d.get("code_kind")), "")
                return (f"{str(d['system']).upper()} {kind + ' ' if kind else ''}code {d['code']} is not in the "
                        "cross-reference" + opt(f"; {_plural(d.get('rows'), 'row')} set aside", "rows") + ".")
            case "CONTRACT_VIOLATION":  # the file is in the Reference column
                cols = f" in column {_listing(d['columns'])}" if d.get("columns") else ""
                rule = RULE_NAMES.get(str(d["rule"]), str(d["rule"]).replace("_", " "))
                rows = _plural(d.get("rows"), "row") if d.get("rows") is not None else "Rows"
                return f"{rows} of this file set aside: {rule}{cols}."
            case "FEED_REJECTED":
                return ("The whole file was rejected" + opt(f": {d.get('reason')}", "reason")
                        + ". The previous good file is still in use.")
            case "STALE_FEED":
                feed = f"{str(d['system']).upper()} {str(d['feed']).replace('_', ' ')}"
                age = d.get("age_hours")
                return (f"The newest {feed} file" + opt(f" ({d.get('newest_file')})", "newest_file")
                        + (f" is {fmt_qty(round(age))} hours old" if age is not None else " is too old")
                        + opt(f"; the limit is {fmt_qty(d.get('freshness_limit_hours'))} hours", "freshness_limit_hours")
                        + ".")
    except (KeyError, TypeError, ValueError):  # details of an unexpected shape
        pass
    return "; ".join(f"{k.replace('_', ' ')}: {_listing(v)}" for k, v in d.items() if v is not None)


def planner_file_names(planners: Iterable[str]) -> dict[str, str]:
    """A safe, unique file stem per planner code (see module doc)."""
    planners = sorted(set(planners))
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for code in planners:
        safe = _SAFE.sub("_", code)[:80] or "_"
        if safe != code or safe.lower() in _RESERVED or safe.lower() in taken:
            safe = f"{safe}-{hashlib.sha256(code.encode()).hexdigest()[:8]}"
        taken.add(safe.lower())
        stems[code] = safe
    return stems


# --- data ---------------------------------------------------------------------------------
def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or {})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _previous_as_of(con: duckdb.DuckDBPyConnection, state_file: Path, as_of: datetime) -> datetime | None:
    if state_file.exists():
        try:
            seen = [utc(s) for s in json.loads(state_file.read_text(encoding="utf-8")).get("reports", [])]
            earlier = [s for s in seen if s < as_of]
            return max(earlier) if earlier else None
        except (ValueError, AttributeError, TypeError):
            pass  # unreadable: fall back to the runs
    if table_exists(con, "marts.kpis"):
        row = con.execute("SELECT max(run_as_of) FROM marts.kpis WHERE run_as_of < $a", {"a": as_of}).fetchone()
        return utc(row[0]) if row and row[0] is not None else None
    return None


def _remember(state_file: Path, as_of: datetime) -> None:
    seen: list[str] = []
    if state_file.exists():
        try:
            seen = list(json.loads(state_file.read_text(encoding="utf-8")).get("reports", []))
        except (ValueError, AttributeError, TypeError):
            seen = []
    reports = sorted({iso_z(utc(s)) for s in seen} | {iso_z(as_of)})[-500:]
    payload = {"as_of": max(reports), "reports": reports}
    write_atomic(state_file, (json.dumps(payload, indent=2) + "\n").encode(), fsync=False)


_EXCEPTIONS_SQL = """
SELECT e.exception_id, e.exception_type, e.severity, e.status, e.item_id, e.location_id, e.reference,
       coalesce(nullif(trim(e.planner_code), ''), 'UNASSIGNED') AS planner_code, e.details,
       e.first_seen_at, e.resolved_at, e.age_days,
       {item_desc} AS item_description, {uom} AS uom, {loc_name} AS location_name
FROM marts.exceptions e
{joins}
WHERE (e.first_seen_at IS NULL OR e.first_seen_at <= $as_of)
  AND (e.status = 'open' OR (e.resolved_at > $previous AND e.resolved_at <= $as_of))
"""

# the columns the query returns, typed as the report uses them
_FETCHED = {**{c: pl.String for c in ("exception_id", "exception_type", "severity", "status", "item_id",
                                      "location_id", "reference", "planner_code", "details", "item_description",
                                      "uom", "location_name")},
            "first_seen_at": pl.Datetime("us", "UTC"), "resolved_at": pl.Datetime("us", "UTC"), "age_days": pl.Int64}
# the columns ``describe`` reads; a description is a pure function of them and week0
_DESCRIBED_BY = ("exception_type", "details", "uom")
# a cached description is only used by the code that wrote it: the key names this file
_CODE_STAMP = code_stamp(__file__)[:12]


def _exceptions(con: duckdb.DuckDBPyConnection, as_of: datetime, previous: datetime | None,
                cache_dir: Path | None = None) -> pl.DataFrame:
    """Open exceptions and those resolved since the previous report (not the whole,
    ever-growing history), with their plain-language fields, in report order: severity,
    oldest first, type, item, plant, reference, then the exception id (so that a report
    written twice lists its rows in the same order). One frame, column by column."""
    week0 = as_of.date() - timedelta(days=as_of.date().weekday())
    has_item = table_exists(con, "canonical.item")
    has_loc = table_exists(con, "canonical.location")
    joins = []
    if has_item:
        joins.append("LEFT JOIN (SELECT item_id, any_value(description) AS description, any_value(base_uom) AS "
                     "base_uom FROM canonical.item GROUP BY item_id) i ON i.item_id = e.item_id")
    if has_loc:
        joins.append("LEFT JOIN (SELECT location_id, any_value(name) AS name FROM canonical.location "
                     "GROUP BY location_id) l ON l.location_id = e.location_id")
    sql = _EXCEPTIONS_SQL.format(
        item_desc="i.description" if has_item else "NULL",
        uom="i.base_uom" if has_item else "NULL",
        loc_name="l.name" if has_loc else "NULL",
        joins="\n".join(joins),
    )
    frame = (con.execute(sql, {"as_of": as_of, "previous": previous or as_of}).pl().cast(_FETCHED)
             if table_exists(con, "marts.exceptions") else pl.DataFrame(schema=_FETCHED))
    types = frame.get_column("exception_type").unique().to_list()
    names = {t: EXCEPTION_TYPES.get(t, (str(t).replace("_", " ").title(), ""))[0] for t in types}
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    frame = frame.with_columns(
        pl.col("exception_type").replace_strict(names, return_dtype=pl.String).alias("type_name"),
        pl.when(pl.col("exception_type") == "INVENTORY_DRIFT")
        .then(pl.col("reference").replace(PAIR_NAMES))
        .otherwise(pl.col("reference").fill_null("")).alias("reference_text"),
        pl.col("severity").replace_strict(rank, default=len(SEVERITIES), return_dtype=pl.Int32)
        .fill_null(len(SEVERITIES)).alias("_rank"),
    )
    frame = _with_descriptions(frame, week0, cache_dir)
    return frame.sort(
        pl.col("_rank"), -pl.col("age_days").fill_null(0), pl.col("exception_type"),
        *[pl.col(c).fill_null("") for c in ("item_id", "location_id", "reference")], pl.col("exception_id"),
    )


# a report that needs fewer new sentences than this leaves the cache file as it is:
# describing them again next time costs less than rewriting ~365k cached rows
_CACHE_REWRITE_MIN_MISSES = 1000


def _description_key(frame: pl.DataFrame) -> pl.Series:
    """A 64-bit hash of the described-by columns (the contracts' ``key_hash``): the cache
    is matched on it, then confirmed column by column (a hash collision is a miss, never
    a wrong sentence)."""
    return frame.select(key_hash(list(_DESCRIBED_BY))).to_series()


def _with_descriptions(frame: pl.DataFrame, week0: date, cache_dir: Path | None) -> pl.DataFrame:
    """``frame`` with a ``description`` column: ``describe`` once per distinct (type,
    details, unit) the cache does not already hold for the same week and code.

    The cache is ``<reports>/.cache/descriptions.parquet`` (the key columns, the code
    stamp and ``week0``, the text). Rows are matched to it on a hash of the key columns
    and confirmed on the columns themselves. It is rewritten, with exactly this report's
    descriptions, when it was missing, foreign or unreadable, or when this report needed
    at least ``_CACHE_REWRITE_MIN_MISSES`` new ones; an hourly report whose only new
    details are a few (a stale feed's age, say) describes those few again instead. At a
    million item-locations (~530k open exceptions, ~365k distinct details) this turns
    ~6 s of Python into a hash join."""
    schema = {"exception_type": pl.String, "details": pl.String, "uom": pl.String, "description": pl.String}
    cached = pl.DataFrame(schema=schema)
    path = cache_dir / "descriptions.parquet" if cache_dir is not None else None
    stamp = f"{_CODE_STAMP}|{week0.isoformat()}"
    usable = False
    if path is not None and path.exists():
        try:
            held = pl.read_parquet(path)
            if held.height and held.get_column("stamp")[0] == stamp:
                cached, usable = held.select(list(schema)).cast(schema), True
        except (OSError, pl.exceptions.PolarsError):
            pass  # a broken cache is only a slower report
    held_as = {c: f"_cached_{c}" for c in _DESCRIBED_BY}
    cached = (cached.rename(held_as).with_columns(_key=_description_key(cached))
              .unique("_key", keep="first", maintain_order=False))
    joined = frame.with_columns(_key=_description_key(frame)).join(cached, on="_key", how="left")
    same = pl.all_horizontal(pl.col(c).eq_missing(pl.col(h)) for c, h in held_as.items())
    joined = joined.with_columns(pl.when(same).then(pl.col("description")).alias("description")) \
        .drop("_key", *held_as.values())
    hit = pl.col("description").is_not_null()
    missed = joined.filter(~hit).drop("description")
    if not missed.height:
        return joined
    misses = missed.select(_DESCRIBED_BY).unique()
    described = misses.with_columns(pl.Series(
        "description", [describe(t, d, u, week0) for t, d, u in misses.iter_rows()], dtype=pl.String))
    out = pl.concat([joined.filter(hit),
                     missed.join(described, on=list(_DESCRIBED_BY), how="left", nulls_equal=True)])
    if path is not None and (not usable or misses.height >= _CACHE_REWRITE_MIN_MISSES):
        table = out.select(*_DESCRIBED_BY, "description").unique(list(_DESCRIBED_BY))
        write_parquet_atomic(table.with_columns(pl.lit(stamp).alias("stamp")), path, compression="zstd", fsync=False)
    return out


def _drift_by_location(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per planner and location: item-locations checked, mismatches per system, value."""
    if not table_exists(con, "marts.inventory_drift"):
        return []
    name = ("(SELECT any_value(name) FROM canonical.location l WHERE l.location_id = d.location_id)"
            if table_exists(con, "canonical.location") else "NULL")
    return _rows(con, f"""
        SELECT coalesce(nullif(trim(planner_code), ''), 'UNASSIGNED') AS planner_code, location_id,
               any_value({name}) AS location_name,
               count(*) AS checked,
               count(*) FILTER (WHERE status_wms = 'drift') AS drift_wms,
               count(*) FILTER (WHERE status_planning = 'drift') AS drift_planning,
               count(*) FILTER (WHERE status = 'unverifiable') AS unverifiable,
               coalesce(sum(drift_value_wms) FILTER (WHERE status_wms = 'drift'), 0) AS value_wms,
               coalesce(sum(drift_value_planning) FILTER (WHERE status_planning = 'drift'), 0) AS value_planning
        FROM marts.inventory_drift d
        GROUP BY ALL ORDER BY location_id, planner_code""")


def _alignment(con: duckdb.DuckDBPyConnection, as_of: datetime) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Per planner: item-locations with a forecast, aligned ones, status counts; and the
    run's overall alignment rate (marts.kpis, else computed the same way)."""
    per: dict[str, dict[str, Any]] = {}
    overall = None
    if table_exists(con, "marts.forecast_order_alignment"):
        cols = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'marts' "
            "AND table_name = 'forecast_order_alignment'").fetchall()}
        has_fc = "has_forecast" if "has_forecast" in cols else "coalesce(demand_horizon, 0) > 0"
        for r in _rows(con, f"""
                SELECT coalesce(nullif(trim(planner_code), ''), 'UNASSIGNED') AS planner_code,
                       count(*) FILTER (WHERE {has_fc}) AS with_forecast,
                       count(*) FILTER (WHERE {has_fc} AND status = 'aligned') AS aligned,
                       count(*) FILTER (WHERE status = 'needs_order') AS needs_order,
                       count(*) FILTER (WHERE status = 'shortage_in_lead_time') AS shortage,
                       count(*) FILTER (WHERE status = 'excess') AS excess,
                       count(*) AS item_locations
                FROM marts.forecast_order_alignment GROUP BY ALL"""):
            r["rate"] = r["aligned"] / r["with_forecast"] if r["with_forecast"] else None
            per[r["planner_code"]] = r
        total = sum(r["with_forecast"] for r in per.values())
        overall = sum(r["aligned"] for r in per.values()) / total if total else None
    if table_exists(con, "marts.kpis"):
        row = con.execute("SELECT value FROM marts.kpis WHERE kpi = 'alignment_rate' AND run_as_of = $a",
                          {"a": as_of}).fetchone()
        if row is not None and row[0] is not None:
            overall = row[0]
    return per, overall


def _feeds(con: duckdb.DuckDBPyConnection, as_of: datetime) -> list[dict[str, Any]]:
    if not table_exists(con, "ingest.feed_status"):
        return []
    return _rows(con, """
        SELECT lower(system) AS system, feed, newest_file, newest_extract_ts, age_hours, stale
        FROM ingest.feed_status
        WHERE run_as_of = (SELECT max(run_as_of) FROM ingest.feed_status WHERE run_as_of <= $a)
        ORDER BY stale DESC, system, feed""", {"a": as_of})


# --- rendering ----------------------------------------------------------------------------
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reconciliation", "templates"),
        autoescape=True,  # every value from an extract is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(qty=fmt_qty, money=fmt_money, ts=fmt_ts, rate=fmt_rate, breakable=breakable)
    return env


CSV_COLUMNS = (
    ("severity", "Severity"), ("type_name", "Problem"), ("exception_type", "Problem code"),
    ("item_id", "Item"), ("item_description", "Item description"), ("location_id", "Plant"),
    ("reference_text", "Reference"), ("description", "What we found"),
    ("first_seen_at", "First seen (UTC)"), ("age_days", "Age (days)"), ("exception_id", "Exception id"),
)


def _write_csv(path: Path, rows: pl.DataFrame) -> None:
    """UTF-8 with a byte-order mark (spreadsheets), CRLF, minimal quoting; timestamps as
    ISO-8601 Z; cells that a spreadsheet would run as a formula are defused. Formatted
    column by column (a planner's list can hold hundreds of thousands of rows)."""
    frame = rows.select(
        (pl.col(k).cast(pl.Datetime("us", "UTC")) if k == "first_seen_at" else pl.col(k).cast(pl.Int64)
         if k == "age_days" else pl.col(k).cast(pl.String)).alias(title) for k, title in CSV_COLUMNS)
    ts_title = dict(CSV_COLUMNS)["first_seen_at"]
    ts = pl.col(ts_title)
    frame = frame.with_columns(
        pl.when(ts.dt.microsecond() > 0).then(ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"))
        .otherwise(ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")).alias(ts_title),
        *[pl.when(pl.col(c).str.contains(r"^[=+\-@\t\r]")).then(pl.lit("'") + pl.col(c))
          .when(pl.col(c) == "").then(None)   # empty and missing are written alike
          .otherwise(pl.col(c)).alias(c) for c, t in frame.schema.items() if t == pl.String and c != ts_title],
    )
    body = frame.write_csv(line_terminator="\r\n", null_value="")
    write_atomic(path, body.encode("utf-8-sig"), fsync=False)


class _WrittenCsv:
    """The planner CSV files this code wrote, with a digest of the rows each one holds, so
    that a report whose rows did not change (the hourly run of the same day) leaves the
    file alone. Kept in ``<reports>/.cache/csv.json``; a file that was changed, replaced or
    removed since (its size or modification time differ) is written again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            held = None
        self.files: dict[str, dict[str, Any]] = held if isinstance(held, dict) else {}
        self.dirty = False

    @staticmethod
    def _key(path: Path) -> str:
        return f"{path.parent.name}/{path.name}"  # <run_date>/<planner>.csv

    @staticmethod
    def digest(rows: pl.DataFrame) -> str:
        # row hashes are stable for one polars version only: the version is part of the digest
        h = hashlib.sha256(f"{_CODE_STAMP}|{pl.__version__}|{rows.height}".encode())
        if rows.height:
            hashes = rows.select([k for k, _ in CSV_COLUMNS]).hash_rows(seed=7).rechunk().to_arrow()
            h.update(memoryview(hashes.buffers()[1])[hashes.offset * 8:(hashes.offset + len(hashes)) * 8])
        return h.hexdigest()

    def unchanged(self, path: Path, digest: str) -> bool:
        """Whether ``path`` is the file this code wrote for rows of this ``digest``."""
        held = self.files.get(self._key(path))
        if not held:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        return (held.get("size") == st.st_size and held.get("mtime_ns") == st.st_mtime_ns
                and held.get("digest") == digest)

    def record(self, path: Path, digest: str) -> None:
        st = path.stat()
        self.files[self._key(path)] = {"digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            keep = dict(sorted(self.files.items())[-2000:])  # bounded: the latest days' files
            write_atomic(self.path, (json.dumps(keep, indent=1) + "\n").encode(), fsync=False)


def _counts(rows: pl.DataFrame) -> dict[str, int]:
    c = {s: 0 for s in SEVERITIES}
    for severity, n in rows.group_by("severity").len().iter_rows():
        c[severity] = n
    c["total"] = rows.height
    return c


def _totals(locs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("checked", "drift_wms", "drift_planning", "unverifiable", "value_wms", "value_planning")
    return {k: sum(r[k] for r in locs) for k in keys}


def _merge_locations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-planner location rows summed over planners (for the index page)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(r["location_id"], {"location_id": r["location_id"], "location_name": r["location_name"],
                                              "checked": 0, "drift_wms": 0, "drift_planning": 0,
                                              "unverifiable": 0, "value_wms": 0.0, "value_planning": 0.0})
        for k in ("checked", "drift_wms", "drift_planning", "unverifiable", "value_wms", "value_planning"):
            m[k] += r[k]
    return [out[k] for k in sorted(out, key=lambda x: str(x))]


def write_reports(
    con: duckdb.DuckDBPyConnection,
    out_dir: str | os.PathLike,
    as_of: datetime | str,
    previous_as_of: datetime | str | None = None,
    *,
    max_rows: int = MAX_ROWS,
) -> dict[str, Any]:
    """Write the index, one HTML page and one CSV per planner for the run at ``as_of``
    under ``out_dir/<run_date>/``; returns the paths and counts."""
    as_of = utc(as_of)
    out = Path(out_dir)
    state_file = out / "last_report.json"
    previous = utc(previous_as_of) if previous_as_of is not None else _previous_as_of(con, state_file, as_of)
    run_dir = out / as_of.date().isoformat()
    run_dir.mkdir(parents=True, exist_ok=True)

    exceptions = _exceptions(con, as_of, previous, out / ".cache")
    opened = exceptions.filter(pl.col("status") == "open")
    new = (opened.filter(pl.col("first_seen_at") > previous) if previous is not None
           else opened.clear())
    resolved = exceptions.filter(pl.col("status") == "resolved")  # since the previous report
    locations = _drift_by_location(con)
    alignment, overall_rate = _alignment(con, as_of)
    feeds = _feeds(con, as_of)
    currency = _single_currency(con)

    planners = sorted(set(exceptions.get_column("planner_code").unique().to_list()) | set(alignment)
                      | {r["planner_code"] for r in locations})
    stems = planner_file_names(planners)
    env = _environment()
    common = {
        "as_of": as_of, "run_date": as_of.date().isoformat(), "previous": previous,
        "glossary": EXCEPTION_TYPES, "severities": SEVERITIES, "currency": currency, "max_rows": max_rows,
        "feeds": feeds, "stale_feeds": [f for f in feeds if f["stale"]],
    }
    result: dict[str, Any] = {"dir": str(run_dir), "as_of": iso_z(as_of),
                              "previous_as_of": iso_z(previous) if previous else None, "planners": {}}
    summary = []
    written = _WrittenCsv(out / ".cache" / "csv.json")
    by_planner = {name: _group(rows) for name, rows in (("open", opened), ("new", new), ("resolved", resolved))}
    locations_of: dict[str, list[dict[str, Any]]] = {}
    for r in locations:
        locations_of.setdefault(r["planner_code"], []).append(r)
    for code in planners:
        mine, mine_new, mine_resolved = (by_planner[k].get(code, exceptions.clear()) for k in
                                         ("open", "new", "resolved"))
        mine_locs = locations_of.get(code, [])
        align = alignment.get(code)
        stem = stems[code]
        counts = _counts(mine)
        page = env.get_template("planner.html").render(
            **common, planner=code, csv_name=f"{stem}.csv", open_rows=mine.head(max_rows).to_dicts(),
            new_rows=mine_new.head(max_rows).to_dicts(), new_total=mine_new.height,
            resolved_rows=mine_resolved.head(max_rows).to_dicts(), resolved_total=mine_resolved.height,
            counts=counts, locations=mine_locs, location_totals=_totals(mine_locs), alignment=align,
        )
        html_path, csv_path = run_dir / f"{stem}.html", run_dir / f"{stem}.csv"
        write_atomic(html_path, page.encode("utf-8"), fsync=False)
        digest = written.digest(mine)
        if not written.unchanged(csv_path, digest):
            _write_csv(csv_path, mine)
            written.record(csv_path, digest)
        summary.append({"planner": code, "href": f"{stem}.html", "csv": f"{stem}.csv", "counts": counts,
                        "new": mine_new.height, "resolved": mine_resolved.height, "alignment": align,
                        "mismatches": sum(r["drift_wms"] + r["drift_planning"] for r in mine_locs)})
        result["planners"][code] = {"html": str(html_path), "csv": str(csv_path), "open": counts["total"],
                                    "new": mine_new.height, "resolved": mine_resolved.height}
    summary.sort(key=lambda s: (-s["counts"]["high"], -s["counts"]["total"], s["planner"]))
    all_locs = _merge_locations(locations)
    index = env.get_template("index.html").render(
        **common, planners=summary, counts=_counts(opened), new_count=new.height, resolved_count=resolved.height,
        overall_rate=overall_rate, locations=all_locs, location_totals=_totals(all_locs),
        alignment_totals=_alignment_totals(alignment),
    )
    index_path = run_dir / "index.html"
    write_atomic(index_path, index.encode("utf-8"), fsync=False)
    written.save()
    _remember(state_file, as_of)
    result.update(index=str(index_path), open=opened.height, new=new.height, resolved=resolved.height,
                  alignment_rate=overall_rate)
    return result


def _group(rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Rows per planner code, order kept."""
    return {key[0]: part for key, part in rows.partition_by("planner_code", as_dict=True,
                                                             maintain_order=True).items()}


def _alignment_totals(alignment: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = ("with_forecast", "aligned", "needs_order", "shortage", "excess", "item_locations")
    return {k: sum(r[k] for r in alignment.values()) for k in keys}


def _single_currency(con: duckdb.DuckDBPyConnection) -> str | None:
    """The currency of standard costs when there is only one (drift values are summed)."""
    if not table_exists(con, "canonical.item"):
        return None
    rows = con.execute("SELECT DISTINCT currency FROM canonical.item WHERE currency IS NOT NULL LIMIT 2").fetchall()
    return rows[0][0] if len(rows) == 1 else None
