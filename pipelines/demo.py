"""Demo landing generator: a complete, realistic landing folder for all 13 feeds.

``generate_landing(landing, scale, as_of, seed)`` writes
``<landing>/<system>/<feed>/<feed>_<YYYYMMDDTHHMMSSZ>.<ext>`` exactly as
``shared/spec/extracts.md`` describes, and returns a summary dict (scale, as_of, every
file written with its row count, rows per feed, every planted problem, the expected
drift keys). The same ``seed``, ``scale`` and ``as_of`` always give the same bytes.

Scales (``SCALES``): ``small`` 50 items x 3 plants, ``medium`` 10k items x 10 plants,
``large`` 50k items x 20 plants = 1M item-locations with 16 forecast weeks. Every item
is stocked at every plant. Generation is columnar (polars expressions over random
columns drawn in bulk from ``random.Random(...).randbytes``; numpy is not a dependency
of the project): there is no Python loop per row or per item-location.

The world
---------
* Items: ``MATNR`` 18 digits zero-padded (6-digit ids), base unit ``EA``; every item
  has ``CS`` (24 or 12 EA), about half ``PL`` (10 or 20 cases), about 15 % ``PK`` with
  the fractional factor ``UMREZ=5 / UMREN=2`` (2.5 EA); 10 % list ``EA`` itself (1/1).
  Descriptions contain ``|`` (quoted in the CSV), ``"`` (doubled) and umlauts (UTF-8).
* ``item_xref`` maps every item to a planning product ``PRD<6 digits>`` and a WMS
  ``SKU-<6 digits>``; ``location_xref`` maps every plant (``1010``, ``1020`` ...) to a
  planning site ``DC-<country>-<nn>`` and a WMS warehouse ``WH<letter>``.
* Times, relative to ``as_of`` (default: now, rounded down to the hour, UTC):
  ERP ``inventory_balance`` at ``T_e = as_of - 3 h``; planning ``inventory_position`` at
  ``T_p = as_of - 2 h``; WMS ``stock_snapshot`` at ``T_w = as_of - 1 h``; eight hourly WMS
  ``transaction`` files covering ``(as_of - 8 h, as_of]``; masters 1 day before;
  ``purchase_order`` deltas at ``as_of - 28 h`` and ``as_of - 4 h``; the current forecast
  published 2 days before (weeks starting at week 0 = the ISO week of as_of's date) and
  an older version 9 days before; ``planned_order`` deltas 5 and 3 days before.
* Stock: ERP stock per item-location at ``T_e`` over 1-2 storage locations (``LGORT``
  0001/0002), split into LABST/INSME/SPEME, ~15 % of item-locations in ``CS``. WMS stock
  = ERP stock + the movements in ``(T_e, T_w]`` split over 1-3 lots/bins/statuses;
  planning ``on_hand`` = ERP stock + movements in ``(T_e, T_p]``, ~20 % in ``CS``. So
  after time alignment (semantics.md §3) every key matches except the planted drifts:
  ~2.5 % of item-locations with a WMS drift (a quantity off by 1-20 EA, or missing from
  the WMS altogether) and ~2 % with a planning drift. Their keys are in
  ``summary["expected"]``.
* Demand: a weekly forecast for ~75 % of item-locations (60 % at ``large``; the older
  version covers a quarter of those), in EA, or in CS (two decimals) where at least half
  a case sells per week. Stock cover is a mix of short (0-1.5 weeks), thin (2-10),
  healthy (11.5-17) and long (22-30 weeks); safety stock 0-2 weeks, lead times 7-35
  days, order multiples of a case or 10. With the default settings about half of the
  forecast item-locations come out ``aligned``, a quarter ``needs_order``, a tenth each
  ``shortage_in_lead_time`` and ``excess``.
* Purchase orders: open, partly received, completed (``ELIKZ=X``), deleted
  (``LOEKZ=L``), past due (some more than 14 days), beyond the horizon, unconfirmed
  (empty ``CONF_DATE``; old ones are ``UNCONFIRMED_PO``, ones ordered today are not), in
  EA, CS or PK; the second delta receives, confirms and deletes some lines and adds new
  ones. Lines with ``PLAN_REF`` realise planned orders: exactly, split over two lines,
  with a different quantity (``RECOMMENDATION_QTY_MISMATCH``), only through a deleted
  line, or not at all (``UNCONVERTED_RECOMMENDATION``); some recommendations are
  ``CANCELLED`` (some only in the later delta). WMS receipts reference an ``EBELN``.

Planted problems (each listed in ``summary["problems"]`` with file, key and the outcome
the pipeline should record; files are landing-relative, ``<X>`` = TS relative to as_of)
---------------------------------------------------------------------------------------
Row problems in files that must stay *accepted* (each file < 5 % bad rows):

* ``erp/inventory_balance/<T-3h>``: ``MATNR='ABC'`` (``malformed_key``); MATNR
  ``000000000000000042`` not in item_master (``unknown_item``); an extra ``LGORT 0099``
  row with ``LABST=-7.000`` (``negative_quantity``); an extra ``LGORT 0098`` row in
  ``MEINS=BOX``, a unit with no conversion (``unknown_uom``); the same
  ``MATNR, WERKS, 0001`` twice with different ``LABST`` (``conflicting_duplicate``: that
  item-location is ``unverifiable`` for both pairs); one row delivered twice
  byte-identical (collapsed, counted as duplicate; the key still matches). The keys
  with the extra bad rows still ``match``.
* ``erp/purchase_order/<T-28h>``: a line with empty ``EBELP`` (``null_key``), ``MENGE``
  ``12,500`` (``bad_number``), ``EINDT`` ``20261341``-style impossible date
  (``bad_date``), ``WERKS=9999`` not in location_master (``unknown_location``).
* ``wms/stock_snapshot/<T-1h>``: ``status='LOST'`` (``invalid_value``; the key still
  matches), ``sku='SKU-NEW01'`` (``unmapped_code``), one natural key twice with
  different ``qty_each`` (``conflicting_duplicate``: WMS pair ``unverifiable``), one row
  twice identical (collapsed; still matches).
* ``planning/inventory_position/<T-2h>``: product ``PRD-NEW01`` (``unmapped_code``).
* ``planning/forecast/<T-2d>``: product ``PRD-NEW02`` (``unmapped_code``).
* ``wms/transaction``: one transaction (in ``(T_e, T_w]``) is in both the ``<T-2h>``
  and ``<T-1h>`` files; it must count once (its key matches; twice would be drift).

Whole files that must be *rejected*, each with an earlier good version of the same
feed that stays current (degraded mode):

* ``erp/location_master/<T-1d>``: comma-delimited (wrong delimiter). The previous good
  file is ``<T-9d>``, older than the 7-day master limit: ``location_master`` is
  **stale** (``STALE_FEED``).
* ``erp/item_master/<T-12h>``: latin-1 bytes (not UTF-8).
* ``erp/uom_conversion/<T-12h>``: 0 bytes (empty).
* ``erp/item_location/<T-12h>``: wrong columns (``BSTRF`` missing).
* ``planning/inventory_position/<T-1h>``: an HTML 502 error page.
* ``wms/stock_snapshot/<T-30m>``: truncated Parquet (first 60 % of the bytes).
* ``erp/inventory_balance/<T-4h>`` (an older extract, delivered late): well-formed, but ~12 % of its rows are in
  ``MEINS=ST`` (no conversion): more than 5 % quarantined rows, so rejected.

Out-of-order arrival: the two purchase-order deltas are written newest first (their
modification times are in the reverse order of their names). Re-delivery: calling
``generate_landing`` again with the same arguments rewrites byte-identical files (an
identical re-delivery, ``duplicate``); ``deliver_correction(landing, summary)`` rewrites
the current ERP inventory file under the same name without the conflicting duplicate
(a correction: that key becomes verifiable and matches).

Existing files in ``landing`` are never deleted; a second call with another ``as_of``
adds a later set of deliveries next to the first.
"""

from __future__ import annotations

import io
import math
import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SCALES", "Scale", "generate_landing", "deliver_correction", "FEED_COLUMNS"]

UTC = timezone.utc


@dataclass(frozen=True)
class Scale:
    items: int
    plants: int
    forecast_weeks: int
    forecast_share: float = 0.75     # share of item-locations with a forecast
    # share of those also in the previous forecast version (it only has to exist and lose
    # to the current one by published_at; keeping it small keeps `large` fast)
    previous_forecast_share: float = 0.25

    @property
    def item_locations(self) -> int:
        return self.items * self.plants


SCALES: dict[str, Scale] = {
    "small": Scale(items=50, plants=3, forecast_weeks=13),
    "medium": Scale(items=10_000, plants=10, forecast_weeks=13),
    "large": Scale(items=50_000, plants=20, forecast_weeks=16, forecast_share=0.6),
}

FEED_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("erp", "item_master"): ("MATNR", "MAKTX", "MEINS", "MATKL", "STPRS", "WAERS", "LVORM"),
    ("erp", "uom_conversion"): ("MATNR", "MEINH", "UMREZ", "UMREN"),
    ("erp", "location_master"): ("WERKS", "NAME1", "LAND1", "REGIO"),
    ("erp", "item_location"): ("MATNR", "WERKS", "DISPO", "PLIFZ", "EISBE", "BSTRF"),
    ("erp", "item_xref"): ("MATNR", "SYSTEM", "EXTERNAL_CODE"),
    ("erp", "location_xref"): ("WERKS", "SYSTEM", "EXTERNAL_CODE"),
    ("erp", "inventory_balance"): ("MATNR", "WERKS", "LGORT", "LABST", "INSME", "SPEME", "MEINS",
                                   "EXTRACTED_AT"),
    ("erp", "purchase_order"): ("EBELN", "EBELP", "MATNR", "WERKS", "LIFNR", "BEDAT", "EINDT", "MENGE",
                                "BSTME", "WEMNG", "LOEKZ", "ELIKZ", "CONF_DATE", "PLAN_REF", "CHANGED_AT"),
    ("planning", "forecast"): ("product_code", "site_code", "week_start", "qty", "uom", "forecast_version",
                               "published_at"),
    ("planning", "inventory_position"): ("product_code", "site_code", "on_hand", "uom", "as_of"),
    ("planning", "planned_order"): ("recommendation_id", "product_code", "site_code", "qty", "uom",
                                    "need_date", "released_at", "status"),
    ("wms", "stock_snapshot"): ("warehouse_code", "sku", "lot", "bin", "qty_each", "status", "snapshot_at"),
    ("wms", "transaction"): ("txn_id", "warehouse_code", "sku", "qty_each", "txn_type", "txn_at", "reference"),
}
_EXT = {"erp": "csv", "planning": "jsonl", "wms": "parquet"}

_TS_UTC = pa.timestamp("us", tz="UTC")
PARQUET_SCHEMAS = {
    "stock_snapshot": pa.schema([
        ("warehouse_code", pa.string()), ("sku", pa.string()), ("lot", pa.string()), ("bin", pa.string()),
        ("qty_each", pa.int64()), ("status", pa.string()), ("snapshot_at", _TS_UTC)]),
    "transaction": pa.schema([
        ("txn_id", pa.string()), ("warehouse_code", pa.string()), ("sku", pa.string()),
        ("qty_each", pa.int64()), ("txn_type", pa.string()), ("txn_at", _TS_UTC), ("reference", pa.string())]),
}

# 20 plants: name (UTF-8 on purpose), country, region
_PLANTS = [
    ("Hamburg DC", "DE", "HH"), ("Köln Werk", "DE", "NW"), ("München DC", "DE", "BY"),
    ("Düsseldorf Hub", "DE", "NW"), ("Wien Lager", "AT", "9"), ("Rotterdam DC", "NL", "ZH"),
    ("Poznań Plant", "PL", "30"), ("Lyon DC", "FR", "ARA"), ("Milano Hub", "IT", "MI"),
    ("Madrid DC", "ES", "MD"), ("Zürich Lager", "CH", "ZH"), ("Brno Plant", "CZ", "64"),
    ("Göteborg DC", "SE", "O"), ("Antwerpen Hub", "BE", "VAN"), ("Leipzig Werk", "DE", "SN"),
    ("Graz Lager", "AT", "6"), ("Lille DC", "FR", "HDF"), ("Porto DC", "PT", "13"),
    ("Århus Lager", "DK", "82"), ("Bremen Hub", "DE", "HB"),
]
_NOUNS = ["Kühlbox", "Bolt", "Nut", "Washer", "Hose", "Valve", "Bearing", "Gasket", "Filter", "Pump",
          "Cable", "Maßband", "Schlüssel", "Sensor", "Bracket", "Clamp", "Fuse", "Relay", "Seal", "Spring"]
_VARIANTS = ["M6", "M8", "M10", '1/2"', '3/4"', "10m", "25mm", "Typ A", "Typ B", "HD", "std", "mini", "XL",
             "Größe 2"]
_PACKS = ["std", "10er Pack", "bulk", "retail"]

_HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>upstream timed out</body></html>\n"


# --- small helpers -------------------------------------------------------------------------
def _ts(t: datetime) -> str:
    return t.strftime("%Y%m%dT%H%M%SZ")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _erp_ts(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S")


class _Rand:
    """A named random stream; draws whole columns at once (no per-row Python)."""

    def __init__(self, seed: int, stream: str) -> None:
        # str seeds are hashed with sha512: stable across runs and PYTHONHASHSEED
        self._r = random.Random(f"distsync-demo:{seed}:{stream}")

    def u(self, n: int, name: str = "u") -> pl.Series:
        """n floats uniform in [0, 1)."""
        if n == 0:
            return pl.Series(name, [], dtype=pl.Float64)
        buf = pa.py_buffer(self._r.randbytes(4 * n))
        arr = pa.Array.from_buffers(pa.uint32(), n, [None, buf])
        return (pl.from_arrow(arr).cast(pl.Float64) / 4294967296.0).alias(name)

    def cols(self, n: int, *names: str) -> list[pl.Series]:
        return [self.u(n, nm) for nm in names]

    def coprime(self, modulus: int) -> int:
        while True:
            a = self._r.randrange(modulus // 7, modulus - 1)
            if math.gcd(a, modulus) == 1:
                return a

    def randrange(self, n: int) -> int:
        return self._r.randrange(n)


def _choose(u: pl.Expr, values: list, weights: list[float]) -> pl.Expr:
    """Pick values[i] with probability weights[i] (weights sum to 1) from a uniform column."""
    cum, acc = [], 0.0
    for w in weights[:-1]:
        acc += w
        cum.append(acc)
    idx = pl.lit(0, pl.Int64)
    for c in cum:
        idx = idx + (u >= c).cast(pl.Int64)
    dtype = pl.Int64 if isinstance(values[0], int) else pl.String
    return pl.lit(pl.Series(values, dtype=dtype)).gather(idx)


def _ifloor(e: pl.Expr) -> pl.Expr:
    return e.floor().cast(pl.Int64)


def _pick(values: list, u: pl.Expr) -> pl.Expr:
    """values[floor(u * len(values))], for u in [0, 1) (the index is clipped: when/then
    evaluates every branch on every row)."""
    return pl.lit(pl.Series(values)).gather(_ifloor(u * len(values)).clip(0, len(values) - 1))


def _cover(u: pl.Expr, pieces: list[tuple[float, float, float]]) -> pl.Expr:
    """A piecewise-uniform value: pieces of (upper bound of u, low, high), u in [0, 1)."""
    expr, lo_u = None, 0.0
    for hi_u, lo, hi in pieces:
        val = lo + (hi - lo) * (u - lo_u) / (hi_u - lo_u)
        expr = pl.when(u < hi_u).then(val) if expr is None else expr.when(u < hi_u).then(val)
        lo_u = hi_u
    return expr.otherwise(pl.lit(pieces[-1][2]))


def _dec3(e: pl.Expr) -> pl.Expr:
    """An integer quantity as an ERP decimal with 3 places: 24 -> '24.000'."""
    return e.cast(pl.String) + pl.lit(".000")


def _zfill(e: pl.Expr, width: int) -> pl.Expr:
    return e.cast(pl.String).str.zfill(width)


def _perm_codes(n: int, rnd: _Rand, lo: int = 100_000, hi: int = 1_000_000) -> pl.Expr:
    """n distinct pseudo-random integers in [lo, hi): an affine permutation of the index."""
    m = hi - lo
    a, b = rnd.coprime(m), rnd.randrange(m)
    return pl.lit(lo, pl.Int64) + (pl.int_range(n, dtype=pl.Int64) * a + b) % m


# --- writers -----------------------------------------------------------------------------------
class _Writer:
    def __init__(self, landing: Path) -> None:
        self.landing = landing
        self.files: dict[str, int] = {}          # rel path -> data rows (None-like -1 for broken)
        self.feed_rows: dict[str, int] = {}

    def path(self, system: str, feed: str, ts: datetime) -> tuple[Path, str]:
        rel = f"{system}/{feed}/{feed}_{_ts(ts)}.{_EXT[system]}"
        p = self.landing / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p, rel

    def _note(self, system: str, feed: str, rel: str, rows: int) -> str:
        self.files[rel] = rows
        key = f"{system}/{feed}"
        self.feed_rows[key] = self.feed_rows.get(key, 0) + max(rows, 0)
        return rel

    def csv(self, feed: str, ts: datetime, df: pl.DataFrame, *, separator: str = "|",
            encoding: str = "utf-8") -> str:
        cols = FEED_COLUMNS[("erp", feed)]
        if separator == "|" and encoding == "utf-8":
            assert tuple(df.columns) == cols, (feed, df.columns)
        p, rel = self.path("erp", feed, ts)
        if encoding == "utf-8":
            df.write_csv(p, separator=separator, null_value="", quote_style="necessary", line_terminator="\n")
        else:
            text = df.write_csv(separator=separator, null_value="", quote_style="necessary", line_terminator="\n")
            p.write_bytes(text.encode(encoding))
        return self._note("erp", feed, rel, df.height)

    def jsonl(self, feed: str, ts: datetime, df: pl.DataFrame, extra_lines: bytes = b"") -> str:
        assert tuple(df.columns) == FEED_COLUMNS[("planning", feed)], (feed, df.columns)
        p, rel = self.path("planning", feed, ts)
        if extra_lines:
            buf = io.BytesIO()
            df.write_ndjson(buf)
            p.write_bytes(buf.getvalue() + extra_lines)
        else:
            df.write_ndjson(p)
        return self._note("planning", feed, rel, df.height)

    def parquet(self, feed: str, ts: datetime, df: pl.DataFrame, truncate: float | None = None,
                rows: int | None = None) -> str:
        table = df.to_arrow().cast(PARQUET_SCHEMAS[feed])
        p, rel = self.path("wms", feed, ts)
        if truncate is None:
            pq.write_table(table, p, compression="zstd")
        else:
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            data = buf.getvalue()
            p.write_bytes(data[: int(len(data) * truncate)])
        return self._note("wms", feed, rel, df.height if rows is None else rows)

    def raw(self, system: str, feed: str, ts: datetime, data: bytes, rows: int = 0) -> str:
        p, rel = self.path(system, feed, ts)
        p.write_bytes(data)
        return self._note(system, feed, rel, rows)


# --- the generator -------------------------------------------------------------------------------
def _default_as_of() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _norm_as_of(as_of: datetime | None) -> datetime:
    if as_of is None:
        return _default_as_of()
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return as_of.astimezone(UTC).replace(microsecond=0)


def generate_landing(landing: Path, scale: str = "small", as_of: datetime | None = None, seed: int = 7) -> dict:
    """Write a complete landing folder for all 13 feeds; return a summary (see module doc)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; one of {sorted(SCALES)}")
    started = time.perf_counter()
    sc = SCALES[scale]
    as_of = _norm_as_of(as_of)
    landing = Path(landing)
    landing.mkdir(parents=True, exist_ok=True)
    g = _Gen(sc, as_of, seed, _Writer(landing))
    g.run()
    w = g.w
    return {
        "scale": scale,
        "seed": seed,
        "as_of": _iso(as_of),
        "landing": str(landing),
        "items": sc.items,
        "plants": sc.plants,
        "item_locations": sc.item_locations,
        "forecast_weeks": sc.forecast_weeks,
        "files": dict(sorted(w.files.items())),
        "rows_per_feed": dict(sorted(w.feed_rows.items())),
        "bytes": sum((landing / rel).stat().st_size for rel in w.files),
        "seconds": round(time.perf_counter() - started, 3),
        "problems": g.problems,
        "expected": g.expected,
        "counts": g.counts,
    }


class _Gen:
    def __init__(self, sc: Scale, as_of: datetime, seed: int, writer: _Writer) -> None:
        self.sc, self.as_of, self.seed, self.w = sc, as_of, seed, writer
        self.problems: list[dict] = []
        self.expected: dict = {}
        self.counts: dict = {}
        self.run_date: date = as_of.date()
        self.week0: date = self.run_date - timedelta(days=self.run_date.weekday())
        h = timedelta(hours=1)
        self.t_e = as_of - 3 * h          # ERP inventory
        self.t_p = as_of - 2 * h          # planning position
        self.t_w = as_of - 1 * h          # WMS snapshot
        self.t_master = as_of - 24 * h
        self.t_broken_master = as_of - 12 * h
        self.t_loc_master_good = as_of - 9 * 24 * h
        self.t_po1 = as_of - 28 * h
        self.t_po2 = as_of - 4 * h
        self.t_fc = as_of - 48 * h
        self.t_fc_old = as_of - 9 * 24 * h
        self.t_rec_a = as_of - 5 * 24 * h
        self.t_rec_b = as_of - 3 * 24 * h

    def rnd(self, stream: str) -> _Rand:
        return _Rand(self.seed, stream)

    def problem(self, pid: str, what: str, file: str, key: dict | None, expect: str, rule: str | None = None,
                rows: int = 1) -> None:
        self.problems.append({"id": pid, "what": what, "file": file, "key": key, "rows": rows,
                              "rule": rule, "expect": expect})

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.build_dimensions()
        self.build_item_locations()
        self.build_recommendations()
        self.build_purchase_orders()
        self.build_transactions()
        self.build_stock()
        self.write_masters()
        self.write_inventory_balance()
        self.write_purchase_orders()
        self.write_planning()
        self.write_wms()

    # --- dimensions ------------------------------------------------------------------------------
    def build_dimensions(self) -> None:
        sc = self.sc
        n = sc.items
        r = self.rnd("items")
        codes = self.rnd("codes")
        items = pl.select(
            _perm_codes(n, codes).alias("item_id"),
            _perm_codes(n, codes).alias("prd_no"),
            _perm_codes(n, codes).alias("sku_no"),
        ).sort("item_id").with_row_index("item_idx").with_columns(
            r.cols(n, "u_noun", "u_var", "u_pack", "u_grp", "u_price", "u_del", "u_cs", "u_pl", "u_pk",
                   "u_ea", "u_plf")
        )
        items = items.with_columns(
            MATNR=_zfill(pl.col("item_id"), 18),
            item_id_s=pl.col("item_id").cast(pl.String),
            noun=pl.when(pl.col("item_idx") == 0).then(pl.lit("Kühlbox"))
            .otherwise(_pick(_NOUNS, pl.col("u_noun"))),
            variant=_pick(_VARIANTS, pl.col("u_var")),
            pack=pl.when(pl.col("u_pack") < 0.3)
            .then(pl.lit(" | ") + _pick(_PACKS, pl.col("u_pack") / 0.3))
            .otherwise(pl.lit("")),
            MATKL=pl.lit("MG0") + (1 + _ifloor(pl.col("u_grp") * 8)).cast(pl.String),
            price_cents=200 + _ifloor(pl.col("u_price").pow(2) * 30_000),
            LVORM=pl.when(pl.col("u_del") < 0.015).then(pl.lit("X")).otherwise(pl.lit(None, pl.String)),
            f=pl.when(pl.col("u_cs") < 0.6).then(pl.lit(24, pl.Int64)).otherwise(pl.lit(12, pl.Int64)),
            has_pl=pl.col("u_pl") < 0.5,
            pl_cases=pl.when(pl.col("u_plf") < 0.5).then(pl.lit(10, pl.Int64)).otherwise(pl.lit(20, pl.Int64)),
            has_pk=pl.col("u_pk") < 0.15,
            has_ea=pl.col("u_ea") < 0.10,
            product_code=pl.lit("PRD") + pl.col("prd_no").cast(pl.String),
            sku=pl.lit("SKU-") + pl.col("sku_no").cast(pl.String),
        ).with_columns(
            MAKTX=pl.col("noun") + pl.lit(" ") + pl.col("variant") + pl.col("pack"),
        )
        self.items = items.select(
            "item_idx", "item_id", "item_id_s", "MATNR", "MAKTX", "MATKL", "price_cents", "LVORM", "f",
            "has_pl", "pl_cases", "has_pk", "has_ea", "product_code", "sku",
        )
        plants = [
            {"plant_idx": k, "WERKS": f"1{k + 1:02d}0", "NAME1": _PLANTS[k][0], "LAND1": _PLANTS[k][1],
             "REGIO": _PLANTS[k][2], "site_code": f"DC-{_PLANTS[k][1]}-{k + 1:02d}",
             "warehouse_code": f"WH{chr(65 + k)}"}
            for k in range(sc.plants)
        ]
        self.plants = pl.DataFrame(plants).with_columns(pl.col("plant_idx").cast(pl.Int64))

    # --- item-locations ----------------------------------------------------------------------------
    def build_item_locations(self) -> None:
        n = self.sc.item_locations
        r = self.rnd("il")
        il = (
            self.items.select("item_idx", "item_id_s", "MATNR", "f", "has_pk", "product_code", "sku")
            .join(self.plants.select("plant_idx", "WERKS", "site_code", "warehouse_code"), how="cross")
            .sort("item_idx", "plant_idx")
            .with_row_index("il_idx")
            .with_columns(pl.col("il_idx").cast(pl.Int64))
            .with_columns(
                r.cols(n, "u_mu", "u_lt", "u_ss", "u_ssw", "u_bstrf", "u_dispo", "u_zero", "u_cover", "u_cls",
                       "u_role", "u_lg", "u_split", "u_ins1", "u_ins1q", "u_spe1", "u_spe1q", "u_ins2",
                       "u_ins2q", "u_spe2", "u_spe2q", "u_zrow", "u_ntx", "u_parts", "u_p1", "u_p2",
                       "u_drift", "u_dsign", "u_absent", "u_fc", "u_fccs", "u_npo", "u_rec", "u_special")
            )
        )
        il = il.with_columns(
            mu=1 + _ifloor(pl.col("u_mu").pow(3) * 150),
            PLIFZ=_choose(pl.col("u_lt"), [7, 10, 14, 21, 28, 35], [0.15, 0.2, 0.25, 0.2, 0.12, 0.08]),
            DISPO=pl.when(pl.col("u_dispo") < 0.02).then(pl.lit(None, pl.String)).otherwise(
                pl.lit("P") + _zfill(1 + (pl.col("item_idx") * 7 + pl.col("plant_idx") * 3) % 12, 2)),
        ).with_columns(
            # order multiple: a case for items that sell at least half a case a week
            BSTRF=pl.when((pl.col("u_bstrf") < 0.5) & (pl.col("mu") * 2 >= pl.col("f"))).then(pl.col("f"))
            .when((pl.col("u_bstrf") >= 0.85) & (pl.col("mu") >= 5)).then(pl.lit(10, pl.Int64))
            .otherwise(pl.lit(0, pl.Int64)),
            EISBE=pl.when(pl.col("u_ss") < 0.25).then(pl.lit(0, pl.Int64))
            .otherwise(_ifloor(pl.col("mu") * (0.5 + 1.5 * pl.col("u_ssw")) + 0.5)),
            # weeks of cover: short (a shortage within the lead time), thin (needs an order),
            # healthy (aligned) or long (excess when a PO is also on its way)
            S_raw=pl.when(pl.col("u_zero") < 0.04).then(pl.lit(0, pl.Int64)).otherwise(_ifloor(pl.col("mu") * _cover(
                pl.col("u_cover"), [(0.06, 0.0, 1.5), (0.30, 2.0, 10.0), (0.94, 11.5, 17.0), (1.0, 22.0, 30.0)])
                + 0.5)),
            # ERP quantities in cases / planning on_hand in cases / both in EA
            cls=_choose(pl.col("u_cls"), ["erp_cs", "plan_cs", "ea"], [0.15, 0.20, 0.65]),
            n_tx=_choose(pl.col("u_ntx"), [0, 1, 2, 3], [0.70, 0.15, 0.10, 0.05]),
            n_parts=_choose(pl.col("u_parts"), [1, 2, 3], [0.5, 0.35, 0.15]),
            has_fc=pl.col("u_fc") < self.sc.forecast_share,
            n_po=_choose(pl.col("u_npo"), [0, 1, 2], [0.35, 0.40, 0.25]),
        )
        # roles: exact counts via the rank of a random key
        n_wd = max(3, round(0.025 * n))
        n_pd = max(3, round(0.02 * n))
        rank = il["u_role"].rank("ordinal").cast(pl.Int64) - 1
        il = il.with_columns(rank.alias("role_rank")).with_columns(
            role=pl.when(pl.col("role_rank") < n_wd).then(pl.lit("wms_drift"))
            .when(pl.col("role_rank") < n_wd + n_pd).then(pl.lit("planning_drift"))
            .otherwise(pl.lit("clean"))
        )
        # item-locations that carry one planted problem each: clean, EA, enough stock
        special_names = ["erp_conflict", "erp_dup", "erp_negative", "erp_unknown_uom", "wms_conflict",
                         "wms_dup", "wms_lost", "txn_overlap"]
        cand = il.filter((pl.col("role") == "clean") & (pl.col("cls") == "ea") & (pl.col("S_raw") >= 20)
                         & (pl.col("n_tx") >= 1)).sort("u_special").head(len(special_names))
        if cand.height < len(special_names):
            raise RuntimeError("scale too small to plant every problem")
        self.special = {name: cand.row(i, named=True) for i, name in enumerate(special_names)}
        special_idx = pl.DataFrame({"il_idx": cand["il_idx"], "special": special_names})
        self.il = il.join(special_idx, on="il_idx", how="left")

    # --- planned orders (recommendations) ------------------------------------------------------------
    _REC_CATS = ["conv_exact", "conv_split", "conv_mismatch", "unconverted", "deleted_only", "cancelled",
                 "cancelled_later", "conv_closed"]

    def build_recommendations(self) -> None:
        base = self.il.select("il_idx", "MATNR", "WERKS", "f", "product_code", "site_code", "u_rec").filter(
            pl.col("u_rec") < 0.15).drop("u_rec")
        n = base.height
        r = self.rnd("rec")
        rec = base.with_columns(r.cols(n, "u_cat", "u_k", "u_uom", "u_need", "u_file", "u_pofile", "u_order",
                                       "u_bstme", "u_conf"))
        cats = self._REC_CATS
        rank = rec["u_order"].rank("ordinal").cast(pl.Int64) - 1
        rec = rec.with_columns(rank.alias("r_rank")).with_columns(
            cat=pl.when(pl.col("r_rank") < len(cats))
            .then(pl.lit(pl.Series(cats)).gather(pl.col("r_rank").clip(0, len(cats) - 1)))
            .otherwise(_choose(pl.col("u_cat"), cats, [0.50, 0.06, 0.08, 0.12, 0.04, 0.10, 0.05, 0.05])),
            k=1 + _ifloor(pl.col("u_k") * 8),
            rec_uom=pl.when(pl.col("u_uom") < 0.6).then(pl.lit("EA")).otherwise(pl.lit("CS")),
            need_date=pl.lit(self.week0) + pl.duration(days=7 * (1 + _ifloor(pl.col("u_need") * 10))),
            # the first len(cats) recommendations (one per category) are in file A
            file=pl.when((pl.col("r_rank") < len(cats)) | (pl.col("u_file") < 0.65))
            .then(pl.lit("A")).otherwise(pl.lit("B")),
        ).with_columns(
            cat=pl.when((pl.col("cat") == "conv_split") & (pl.col("k") < 2)).then(pl.lit("conv_exact"))
            .when((pl.col("cat") == "cancelled_later") & (pl.col("file") == "B")).then(pl.lit("cancelled"))
            .otherwise(pl.col("cat")),
        )
        rec = rec.sort("file", "il_idx").with_row_index("seq").with_columns(
            recommendation_id=pl.lit("REC-") + _zfill(pl.col("seq") + 1, 7),
            base_qty=pl.col("k") * pl.col("f"),
            released=pl.when(pl.col("file") == "A").then(pl.lit(self.t_rec_a)).otherwise(pl.lit(self.t_rec_b)),
        )
        self.rec = rec
        self.counts["recommendations"] = dict(sorted(rec.group_by("cat").len().iter_rows()))

    # --- purchase orders -------------------------------------------------------------------------------
    def build_purchase_orders(self) -> None:
        il = self.il.select("il_idx", "MATNR", "WERKS", "f", "has_pk", "mu", "PLIFZ", "BSTRF", "n_po").filter(
            pl.col("n_po") > 0)
        lines = il.with_columns(pl.int_ranges(0, pl.col("n_po")).alias("k_line")).explode("k_line")
        n = lines.height
        r = self.rnd("po")
        run_date, week0 = self.run_date, self.week0
        d1 = self.t_po1.date()
        lines = lines.with_columns(
            r.cols(n, "u_cat", "u_due", "u_unit", "u_qty", "u_lead", "u_recv", "u_conf", "u_confd", "u_chg",
                   "u_ord", "u_under")
        ).with_columns(
            cat=_choose(pl.col("u_cat"),
                        ["open", "past_due", "partial", "completed", "deleted", "beyond"],
                        [0.53, 0.05, 0.12, 0.17, 0.05, 0.08]),
            # cases only when the order is at least a case; PK (2.5 EA) for items that have it
            BSTME=pl.when(pl.col("has_pk") & (pl.col("u_unit") < 0.3)).then(pl.lit("PK"))
            .when((pl.col("u_unit") < 0.6) & (pl.col("mu") * (1.5 + 3 * pl.col("u_qty")) >= pl.col("f")))
            .then(pl.lit("CS")).otherwise(pl.lit("EA")),
            target=pl.col("mu") * (1.5 + 3 * pl.col("u_qty")),
        ).with_columns(
            MENGE=pl.when(pl.col("BSTME") == "CS").then(
                pl.max_horizontal(pl.lit(1), _ifloor(pl.col("target") / pl.col("f") + 0.5)))
            .when(pl.col("BSTME") == "PK").then(2 * pl.max_horizontal(pl.lit(1), _ifloor(pl.col("target") / 5)))
            .when(pl.col("BSTRF") > 0).then(
                pl.col("BSTRF") * pl.max_horizontal(pl.lit(1), (pl.col("target") / pl.col("BSTRF")).ceil()
                                                    .cast(pl.Int64)))
            .otherwise(pl.max_horizontal(pl.lit(1), _ifloor(pl.col("target")))),
            days=pl.when(pl.col("cat") == "past_due").then(-(1 + _ifloor(pl.col("u_due") * 35)))
            .when(pl.col("cat") == "completed").then(-(1 + _ifloor(pl.col("u_due") * 40)))
            .when(pl.col("cat") == "partial").then(-4 + _ifloor(pl.col("u_due") * 24))
            .when(pl.col("cat") == "deleted").then(-30 + _ifloor(pl.col("u_due") * 90))
            .when(pl.col("cat") == "beyond").then(17 * 7 + _ifloor(pl.col("u_due") * 60))
            .otherwise(1 + _ifloor(pl.col("u_due") * 11 * 7)),
        ).with_columns(
            # past-due lines are due before the Monday of week 0; others relative to run_date
            EINDT=pl.when(pl.col("cat") == "past_due").then(pl.lit(week0) + pl.duration(days=pl.col("days")))
            .otherwise(pl.lit(run_date) + pl.duration(days=pl.col("days"))),
        ).with_columns(
            BEDAT=pl.min_horizontal(
                pl.col("EINDT") - pl.duration(days=pl.col("PLIFZ") + _ifloor(pl.col("u_lead") * 7)),
                pl.lit(d1) - pl.duration(days=_ifloor(pl.col("u_lead") * 4)),
            ),
            MENGE=pl.when((pl.col("cat") == "partial") & (pl.col("MENGE") < 2)).then(pl.lit(2, pl.Int64))
            .otherwise(pl.col("MENGE")),
        ).with_columns(
            WEMNG=pl.when(pl.col("cat") == "completed").then(
                pl.when(pl.col("u_under") < 0.1).then(pl.col("MENGE") - 1).otherwise(pl.col("MENGE")))
            .when(pl.col("cat") == "partial").then(
                pl.max_horizontal(pl.lit(1), _ifloor(pl.col("MENGE") * (0.2 + 0.6 * pl.col("u_recv")))))
            .otherwise(pl.lit(0, pl.Int64)),
            LOEKZ=pl.when(pl.col("cat") == "deleted").then(pl.lit("L")).otherwise(pl.lit(None, pl.String)),
            ELIKZ=pl.when(pl.col("cat") == "completed").then(pl.lit("X")).otherwise(pl.lit(None, pl.String)),
            CONF_DATE=pl.when(pl.col("u_conf") < 0.8).then(
                pl.min_horizontal(pl.col("BEDAT") + pl.duration(days=1 + _ifloor(pl.col("u_confd") * 3)),
                                  pl.lit(d1)))
            .otherwise(pl.lit(None, pl.Date)),
            PLAN_REF=pl.lit(None, pl.String),
            group=pl.col("il_idx") * 4 + pl.col("k_line"),
            EBELP=pl.lit(10, pl.Int64),
            po_file=pl.lit(1, pl.Int64),
        )
        self.counts["po_lines_by_category"] = dict(sorted(lines.group_by("cat").len().iter_rows()))

        # lines realising recommendations
        rec = self.rec.filter(pl.col("cat").is_in(["conv_exact", "conv_split", "conv_mismatch", "deleted_only",
                                                   "conv_closed"]))
        rr = self.rnd("po_rec")
        rec = rec.with_columns(rr.cols(rec.height, "u_split", "u_bed"))
        one = rec.with_columns(
            n_cases=pl.when(pl.col("cat") == "conv_split").then(pl.max_horizontal(pl.lit(1), pl.col("k") // 2))
            .when(pl.col("cat") == "conv_mismatch").then(pl.col("k") + 1).otherwise(pl.col("k")),
            EBELP=pl.lit(10, pl.Int64),
        )
        two = rec.filter(pl.col("cat") == "conv_split").with_columns(
            n_cases=pl.col("k") - pl.max_horizontal(pl.lit(1), pl.col("k") // 2), EBELP=pl.lit(20, pl.Int64))
        rl = pl.concat([one, two]).with_columns(
            BSTME=pl.when((pl.col("u_bstme") < 0.5) | (pl.col("EBELP") == 20)).then(pl.lit("CS"))
            .otherwise(pl.lit("EA")),
            po_file=pl.when((pl.col("file") == "A") | (pl.col("u_pofile") < 0.5)).then(pl.lit(1, pl.Int64))
            .otherwise(pl.lit(2, pl.Int64)),
        ).with_columns(
            MENGE=pl.when(pl.col("BSTME") == "CS").then(pl.col("n_cases")).otherwise(pl.col("n_cases") * pl.col("f")),
            BEDAT=pl.col("released").dt.date() + pl.duration(days=_ifloor(pl.col("u_bed") * 2)),
            EINDT=pl.col("need_date"),
            cat=pl.when(pl.col("cat") == "deleted_only").then(pl.lit("deleted"))
            .when(pl.col("cat") == "conv_closed").then(pl.lit("completed")).otherwise(pl.lit("open")),
        ).with_columns(
            WEMNG=pl.when(pl.col("cat") == "completed").then(pl.col("MENGE")).otherwise(pl.lit(0, pl.Int64)),
            LOEKZ=pl.when(pl.col("cat") == "deleted").then(pl.lit("L")).otherwise(pl.lit(None, pl.String)),
            ELIKZ=pl.when(pl.col("cat") == "completed").then(pl.lit("X")).otherwise(pl.lit(None, pl.String)),
            CONF_DATE=pl.when(pl.col("u_conf") < 0.85).then(pl.min_horizontal(
                pl.col("BEDAT") + pl.duration(days=1),
                pl.when(pl.col("po_file") == 1).then(pl.lit(d1)).otherwise(pl.lit(self.t_po2.date()))))
            .otherwise(pl.lit(None, pl.Date)),
            PLAN_REF=pl.col("recommendation_id"),
            group=-1 - pl.col("seq").cast(pl.Int64),
            u_ord=pl.col("u_split"),
        )
        keep = ["il_idx", "MATNR", "WERKS", "f", "cat", "BSTME", "MENGE", "EINDT", "BEDAT", "WEMNG", "LOEKZ",
                "ELIKZ", "CONF_DATE", "PLAN_REF", "group", "EBELP", "po_file", "u_ord"]
        allp = pl.concat([lines.select(keep), rl.select(keep)])
        # EBELN: one number per group, in order of order date, file-1 POs first
        groups = (allp.group_by("group").agg(pl.col("po_file").min(), pl.col("BEDAT").min(), pl.col("u_ord").min())
                  .sort("po_file", "BEDAT", "u_ord", "group").with_row_index("po_seq"))
        allp = allp.join(groups.select("group", "po_seq"), on="group").with_columns(
            EBELN=(pl.lit(4_500_000_001, pl.Int64) + pl.col("po_seq")).cast(pl.String),
        )
        allp = allp.sort("EBELN", "EBELP").with_columns(   # one supplier per PO
            LIFNR=pl.lit("V") + (1000 + (pl.col("po_seq") * 37 + self.seed) % 150).cast(pl.String))
        self.po = allp
        self.next_ebeln = 4_500_000_001 + groups.height

    # --- transactions ---------------------------------------------------------------------------------
    def build_transactions(self) -> None:
        il = self.il.select("il_idx", "warehouse_code", "sku", "f", "mu", "S_raw", "n_tx", "special").filter(
            pl.col("n_tx") > 0)
        tx = il.with_columns(pl.int_ranges(0, pl.col("n_tx")).alias("k_tx")).explode("k_tx")
        n = tx.height
        r = self.rnd("tx")
        start = self.as_of - timedelta(hours=8)
        window = 8 * 3600
        overlap_at = self.t_w - timedelta(minutes=58)       # in (T_e, T_w], in the <T-1h> file's hour
        tx = tx.with_columns(r.cols(n, "u_t", "u_sign", "u_type", "u_mag")).with_columns(
            sec=1 + _ifloor(pl.col("u_t") * (window - 1)),
            pos=(pl.col("S_raw") < 4) | (pl.col("u_sign") < 0.5),
            cap=pl.max_horizontal(pl.lit(1), pl.col("S_raw") // 4),
        ).with_columns(
            txn_type=pl.when(pl.col("pos")).then(
                _choose(pl.col("u_type"), ["RECEIPT", "TRANSFER_IN", "ADJUSTMENT"], [0.4, 0.3, 0.3]))
            .otherwise(_choose(pl.col("u_type"), ["SHIPMENT", "TRANSFER_OUT", "ADJUSTMENT"], [0.6, 0.25, 0.15])),
        ).with_columns(
            qty_each=pl.when(pl.col("pos")).then(
                pl.when(pl.col("txn_type") == "RECEIPT").then(pl.col("f") * (1 + _ifloor(pl.col("u_mag") * 3)))
                .when(pl.col("txn_type") == "TRANSFER_IN").then(
                    1 + _ifloor(pl.col("u_mag") * pl.max_horizontal(pl.lit(2), pl.col("mu"))))
                .otherwise(1 + _ifloor(pl.col("u_mag") * 3)))
            # at most 3 outflows of at most S_raw/4 each: stock never goes negative
            .otherwise(-(1 + _ifloor(pl.col("u_mag") * pl.when(pl.col("txn_type") == "ADJUSTMENT")
                                     .then(pl.min_horizontal(pl.col("cap"), pl.lit(3))).otherwise(pl.col("cap"))))),
            txn_at=pl.when((pl.col("special") == "txn_overlap") & (pl.col("k_tx") == 0))
            .then(pl.lit(overlap_at)).otherwise(pl.lit(start) + pl.duration(seconds=pl.col("sec"))),
        )
        tx = tx.with_columns(
            qty_each=pl.when((pl.col("special") == "txn_overlap") & (pl.col("k_tx") == 0))
            .then(pl.col("qty_each").abs()).otherwise(pl.col("qty_each")))
        # receipts reference a purchase order of the same item-location
        ref = self.po.group_by("il_idx").agg(pl.col("EBELN").min().alias("ref_ebeln"))
        tx = tx.join(ref, on="il_idx", how="left").with_columns(
            reference=pl.when(pl.col("txn_type") == "RECEIPT").then(pl.col("ref_ebeln"))
            .otherwise(pl.lit(None, pl.String)),
        ).sort("txn_at", "il_idx", "k_tx").with_row_index("t_seq").with_columns(
            txn_id=pl.lit("T") + _zfill(pl.col("t_seq") + 1 + 10_000_000 * (self.seed % 90 + 1), 10),
        )
        self.tx = tx
        t_e, t_p, t_w = self.t_e, self.t_p, self.t_w
        moves = tx.group_by("il_idx").agg(
            M_p=pl.col("qty_each").filter((pl.col("txn_at") > t_e) & (pl.col("txn_at") <= t_p)).sum(),
            M_w=pl.col("qty_each").filter((pl.col("txn_at") > t_e) & (pl.col("txn_at") <= t_w)).sum(),
        )
        self.il = self.il.join(moves, on="il_idx", how="left").with_columns(
            pl.col("M_p").fill_null(0), pl.col("M_w").fill_null(0))
        ov = tx.filter((pl.col("special") == "txn_overlap") & (pl.col("k_tx") == 0)).row(0, named=True)
        self.overlap_txn = ov

    # --- stock in the three systems --------------------------------------------------------------------
    def build_stock(self) -> None:
        f = pl.col("f")
        il = self.il.with_columns(
            S_e=pl.when(pl.col("cls") == "erp_cs").then((pl.col("S_raw") + f - 1) // f * f)
            .when(pl.col("cls") == "plan_cs").then((pl.col("S_raw") + pl.col("M_p") + f - 1) // f * f - pl.col("M_p"))
            .otherwise(pl.col("S_raw")),
        ).with_columns(
            W0=pl.col("S_e") + pl.col("M_w"),
            P0=pl.col("S_e") + pl.col("M_p"),
            delta_raw=(1 + _ifloor(pl.col("u_drift") * 20)) * pl.when(pl.col("u_dsign") < 0.5).then(-1).otherwise(1),
        ).with_columns(
            wms_absent=(pl.col("role") == "wms_drift") & (pl.col("u_absent") < 0.15) & (pl.col("W0") > 0),
            W=pl.when(pl.col("role") == "wms_drift").then(
                pl.when(pl.col("W0") + pl.col("delta_raw") < 0).then(pl.col("W0") + pl.col("delta_raw").abs())
                .otherwise(pl.col("W0") + pl.col("delta_raw")))
            .otherwise(pl.col("W0")),
            p_delta=pl.when(pl.col("cls") == "plan_cs").then(pl.col("delta_raw").sign() * f * (1 + pl.col("delta_raw").abs() % 3))
            .otherwise(pl.col("delta_raw")),
        ).with_columns(
            P=pl.when(pl.col("role") == "planning_drift").then(
                pl.when(pl.col("P0") + pl.col("p_delta") < 0).then(pl.col("P0") + pl.col("p_delta").abs())
                .otherwise(pl.col("P0") + pl.col("p_delta")))
            .otherwise(pl.col("P0")),
        ).with_columns(
            W=pl.when(pl.col("wms_absent")).then(pl.lit(0, pl.Int64)).otherwise(pl.col("W")),
        )
        self.il = il
        key = [pl.col("item_id_s"), pl.col("WERKS")]
        self.expected["drift_wms"] = il.filter(pl.col("role") == "wms_drift").select(key).sort(key).rows()
        self.expected["drift_planning"] = il.filter(pl.col("role") == "planning_drift").select(key).sort(key).rows()
        self.expected["wms_absent"] = il.filter(pl.col("wms_absent")).select(key).sort(key).rows()
        self.counts["item_locations_by_class"] = dict(sorted(il.group_by("cls").len().iter_rows()))

    # --- masters ---------------------------------------------------------------------------------------
    def write_masters(self) -> None:
        w, items, plants = self.w, self.items, self.plants
        im = items.select(
            "MATNR", "MAKTX", MEINS=pl.lit("EA"), MATKL=pl.col("MATKL"),
            STPRS=(pl.col("price_cents") // 100).cast(pl.String) + pl.lit(".")
            + _zfill(pl.col("price_cents") % 100, 2),
            WAERS=pl.lit("EUR"), LVORM=pl.col("LVORM"),
        )
        good = w.csv("item_master", self.t_master, im)
        bad = w.csv("item_master", self.t_broken_master, im, encoding="latin-1")
        self.problem("not_utf8", "item_master delivered in latin-1 (umlauts in MAKTX are single bytes)", bad,
                     {"MATNR": im["MATNR"][0], "MAKTX": im["MAKTX"][0]},
                     f"rejected (not UTF-8); {good} stays current", rows=im.height)

        f_str = pl.col("f").cast(pl.String)
        uom = pl.concat([
            items.select("item_idx", "MATNR", MEINH=pl.lit("CS"), UMREZ=f_str, UMREN=pl.lit("1"), o=pl.lit(1)),
            items.filter("has_pl").select("item_idx", "MATNR", MEINH=pl.lit("PL"),
                                          UMREZ=(pl.col("f") * pl.col("pl_cases")).cast(pl.String),
                                          UMREN=pl.lit("1"), o=pl.lit(2)),
            items.filter("has_pk").select("item_idx", "MATNR", MEINH=pl.lit("PK"), UMREZ=pl.lit("5"),
                                          UMREN=pl.lit("2"), o=pl.lit(3)),
            items.filter("has_ea").select("item_idx", "MATNR", MEINH=pl.lit("EA"), UMREZ=pl.lit("1"),
                                          UMREN=pl.lit("1"), o=pl.lit(0)),
        ]).sort("item_idx", "o").select(FEED_COLUMNS[("erp", "uom_conversion")])
        good = w.csv("uom_conversion", self.t_master, uom)
        bad = w.raw("erp", "uom_conversion", self.t_broken_master, b"")
        self.problem("empty_file", "uom_conversion delivered with 0 bytes", bad, None,
                     f"rejected (empty file); {good} stays current", rows=0)

        lm = plants.select("WERKS", "NAME1", "LAND1", "REGIO")
        good = w.csv("location_master", self.t_loc_master_good, lm)
        bad = w.csv("location_master", self.t_master, lm, separator=",")
        self.problem("wrong_delimiter", "location_master delivered comma-separated", bad, None,
                     f"rejected (wrong delimiter); {good} stays current", rows=lm.height)
        self.problem("stale_feed", "location_master: the newest accepted file is 9 days old (limit 7 days)", good,
                     {"system": "erp", "feed": "location_master"},
                     "STALE_FEED erp/location_master (high); still used as current version", rows=0)

        ilm = self.il.select(
            "MATNR", "WERKS", "DISPO", PLIFZ=pl.col("PLIFZ").cast(pl.String), EISBE=_dec3(pl.col("EISBE")),
            BSTRF=_dec3(pl.col("BSTRF")))
        good = w.csv("item_location", self.t_master, ilm)
        bad_df = ilm.drop("BSTRF")
        p, rel = w.path("erp", "item_location", self.t_broken_master)
        bad_df.write_csv(p, separator="|", null_value="", line_terminator="\n")
        w._note("erp", "item_location", rel, bad_df.height)
        self.problem("wrong_columns", "item_location delivered without the BSTRF column", rel,
                     {"header": list(bad_df.columns)}, f"rejected (wrong columns); {good} stays current",
                     rows=bad_df.height)

        xref = pl.concat([
            items.select("item_idx", "MATNR", SYSTEM=pl.lit("PLANNING"), EXTERNAL_CODE=pl.col("product_code")),
            items.select("item_idx", "MATNR", SYSTEM=pl.lit("WMS"), EXTERNAL_CODE=pl.col("sku")),
        ]).sort("item_idx", "SYSTEM").drop("item_idx")
        w.csv("item_xref", self.t_master, xref)
        lx = pl.concat([
            plants.select("plant_idx", "WERKS", SYSTEM=pl.lit("PLANNING"), EXTERNAL_CODE=pl.col("site_code")),
            plants.select("plant_idx", "WERKS", SYSTEM=pl.lit("WMS"), EXTERNAL_CODE=pl.col("warehouse_code")),
        ]).sort("plant_idx", "SYSTEM").drop("plant_idx")
        w.csv("location_xref", self.t_master, lx)

    # --- ERP inventory -------------------------------------------------------------------------------
    def write_inventory_balance(self) -> None:
        il = self.il.select(
            "il_idx", "MATNR", "WERKS", "cls", "f", "S_e", "u_zrow", "u_lg", "u_split", "u_ins1", "u_ins1q",
            "u_spe1", "u_spe1q", "u_ins2", "u_ins2q", "u_spe2", "u_spe2q",
        ).with_columns(
            unit=pl.when(pl.col("cls") == "erp_cs").then(pl.lit("CS")).otherwise(pl.lit("EA")),
            k=pl.when(pl.col("cls") == "erp_cs").then(pl.col("S_e") // pl.col("f")).otherwise(pl.col("S_e")),
        ).filter((pl.col("S_e") > 0) | (pl.col("u_zrow") < 0.5))
        il = il.with_columns(
            two=(pl.col("u_lg") < 0.35) & (pl.col("k") >= 2),
        ).with_columns(
            k1=pl.when(pl.col("two")).then(_ifloor(pl.col("k") * (0.3 + 0.5 * pl.col("u_split"))))
            .otherwise(pl.col("k")),
        ).with_columns(k2=pl.col("k") - pl.col("k1"))

        def rows(kcol: str, lgort: str, ins: str, spe: str, src: pl.DataFrame) -> pl.DataFrame:
            k = pl.col(kcol)
            return src.with_columns(
                INS=pl.when(pl.col(ins) < 0.3).then(_ifloor(k * 0.08 * pl.col(ins + "q"))).otherwise(0),
                SPE=pl.when(pl.col(spe) < 0.2).then(_ifloor(k * 0.05 * pl.col(spe + "q"))).otherwise(0),
            ).select(
                "il_idx", "MATNR", "WERKS", LGORT=pl.lit(lgort), LAB=k - pl.col("INS") - pl.col("SPE"),
                INS=pl.col("INS"), SPE=pl.col("SPE"), MEINS=pl.col("unit"))

        inv = pl.concat([
            rows("k1", "0001", "u_ins1", "u_spe1", il),
            rows("k2", "0002", "u_ins2", "u_spe2", il.filter("two")),
        ])
        ts = _erp_ts(self.t_e)
        sp = self.special

        def fmt(df: pl.DataFrame, extracted: str) -> pl.DataFrame:
            return df.select(
                "MATNR", "WERKS", "LGORT", LABST=_dec3(pl.col("LAB")), INSME=_dec3(pl.col("INS")),
                SPEME=_dec3(pl.col("SPE")), MEINS="MEINS", EXTRACTED_AT=pl.lit(extracted))

        def one(il_row: dict, lgort: str, lab: int, meins: str = "EA", matnr: str | None = None,
                werks: str | None = None) -> dict:
            return {"il_idx": il_row["il_idx"] if il_row else -1, "MATNR": matnr or il_row["MATNR"],
                    "WERKS": werks or il_row["WERKS"], "LGORT": lgort, "LAB": lab, "INS": 0, "SPE": 0,
                    "MEINS": meins}

        plant0 = self.plants["WERKS"][0]
        conf_row = inv.filter((pl.col("il_idx") == sp["erp_conflict"]["il_idx"]) & (pl.col("LGORT") == "0001"))
        dup_row = inv.filter((pl.col("il_idx") == sp["erp_dup"]["il_idx"]) & (pl.col("LGORT") == "0001"))
        extra = pl.DataFrame([
            one(None, "0001", 5, matnr="ABC", werks=plant0),
            one(None, "0001", 5, matnr="000000000000000042", werks=plant0),
            one(sp["erp_negative"], "0099", -7),
            one(sp["erp_unknown_uom"], "0098", 3, meins="BOX"),
        ], schema=inv.schema)
        extra = pl.concat([extra, conf_row.with_columns(LAB=pl.col("LAB") + 5), dup_row])
        full = pl.concat([inv, extra]).with_row_index("o").with_columns(
            sort_key=pl.when(pl.col("o") < inv.height).then(pl.col("il_idx") * 10)
            .otherwise(pl.col("il_idx") * 10 + 5))
        # planted rows sit next to their item-location (the malformed ones first)
        full = full.sort("sort_key", "LGORT", "o")
        cur = self.w.csv("inventory_balance", self.t_e, fmt(full, ts))
        key = lambda r, lg: {"MATNR": r["MATNR"], "WERKS": r["WERKS"], "LGORT": lg}  # noqa: E731
        ilkey = lambda r: [r["item_id_s"], r["WERKS"]]  # noqa: E731
        self.problem("malformed_key", "MATNR 'ABC' (not 18 digits)", cur,
                     {"MATNR": "ABC", "WERKS": plant0, "LGORT": "0001"}, "row quarantined", "malformed_key")
        self.problem("unknown_item", "MATNR 000000000000000042 is not in item_master", cur,
                     {"MATNR": "000000000000000042", "WERKS": plant0, "LGORT": "0001"}, "row quarantined",
                     "unknown_item")
        self.problem("negative_quantity", "LABST -7.000 in an extra storage location", cur,
                     key(sp["erp_negative"], "0099"),
                     f"row quarantined; item-location {ilkey(sp['erp_negative'])} still matches",
                     "negative_quantity")
        self.problem("unknown_uom", "MEINS 'BOX': no conversion for the item", cur,
                     key(sp["erp_unknown_uom"], "0098"),
                     f"row quarantined; item-location {ilkey(sp['erp_unknown_uom'])} still matches", "unknown_uom")
        self.problem("conflicting_duplicate_erp", "same MATNR/WERKS/LGORT twice with different LABST (+5)", cur,
                     key(sp["erp_conflict"], "0001"),
                     f"both rows quarantined; item-location {ilkey(sp['erp_conflict'])} unverifiable (both pairs)",
                     "conflicting_duplicate", rows=2)
        self.problem("exact_duplicate_erp", "one row delivered twice, byte-identical", cur,
                     key(sp["erp_dup"], "0001"),
                     f"collapsed and counted (rows_duplicate=1); item-location {ilkey(sp['erp_dup'])} matches",
                     None, rows=0)
        self.erp_current_file = cur

        # an earlier extract (delivered late) with too many rows in a unit that has no
        # conversion: rejected; being older than the current file it does not block the
        # planning sync, so the demo shows payloads flowing
        later = inv.with_row_index("o")
        n_bad = max(2, math.ceil(0.12 * later.height))
        rb = self.rnd("inv_bad").u(later.height, "u_bad").rank("ordinal").cast(pl.Int64) - 1
        later = later.with_columns(rb.alias("bad_rank")).with_columns(
            MEINS=pl.when(pl.col("bad_rank") < n_bad).then(pl.lit("ST")).otherwise(pl.col("MEINS")))
        t_rej = self.t_e - timedelta(hours=1)
        rej = self.w.csv("inventory_balance", t_rej, fmt(later, _erp_ts(t_rej)))
        self.problem("too_many_bad_rows", f"{n_bad} of {later.height} rows in MEINS 'ST' (no conversion)", rej,
                     {"MEINS": "ST"}, f"rejected (quarantined share > 5 %); {cur} stays current", "unknown_uom",
                     rows=n_bad)
        self.counts["erp_inventory_rows"] = inv.height

    # --- purchase orders: two deltas -------------------------------------------------------------------
    def write_purchase_orders(self) -> None:
        po = self.po
        d1, d2 = self.t_po1, self.t_po2
        r = self.rnd("po_files")
        f1 = po.filter(pl.col("po_file") == 1)
        # CHANGED_AT: on the extract's day, before the extract (and after the previous one)
        midnight = lambda t: t.replace(hour=0, minute=0, second=0)  # noqa: E731
        win1 = (d1 - midnight(d1)).total_seconds()
        win2 = (d2 - max(d1, midnight(d2))).total_seconds()
        f1 = f1.with_columns(r.cols(f1.height, "u_chg", "u_sel", "u_what", "u_q")).with_columns(
            CHANGED=pl.lit(d1) - pl.duration(seconds=_ifloor(pl.col("u_chg") * win1)))
        f1_open = (pl.col("LOEKZ").is_null() & pl.col("ELIKZ").is_null())
        # changes delivered in the second delta (full line images)
        chg = f1.filter(f1_open & (pl.col("u_sel") < 0.10) & pl.col("PLAN_REF").is_null()).with_columns(
            what=pl.when(pl.col("CONF_DATE").is_null()).then(pl.lit("confirm"))
            .otherwise(_choose(pl.col("u_what"), ["receive", "complete", "delete", "reschedule"],
                               [0.35, 0.35, 0.1, 0.2])),
        ).with_columns(
            CONF_DATE=pl.when(pl.col("what") == "confirm").then(pl.lit(d2.date())).otherwise(pl.col("CONF_DATE")),
            WEMNG=pl.when(pl.col("what") == "complete").then(pl.col("MENGE"))
            .when(pl.col("what") == "receive").then(pl.min_horizontal(
                pl.col("MENGE"), pl.col("WEMNG") + pl.max_horizontal(pl.lit(1), _ifloor(pl.col("MENGE") * 0.3))))
            .otherwise(pl.col("WEMNG")),
            ELIKZ=pl.when(pl.col("what") == "complete").then(pl.lit("X")).otherwise(pl.col("ELIKZ")),
            LOEKZ=pl.when(pl.col("what") == "delete").then(pl.lit("L")).otherwise(pl.col("LOEKZ")),
            EINDT=pl.when(pl.col("what") == "reschedule").then(pl.col("EINDT") + pl.duration(days=7))
            .otherwise(pl.col("EINDT")),
            CHANGED=pl.lit(d2) - pl.duration(seconds=_ifloor(pl.col("u_chg") * win2)),
        )
        self.counts["po_changes_in_second_delta"] = dict(sorted(chg.group_by("what").len().iter_rows()))
        f2_new = po.filter(pl.col("po_file") == 2)
        # brand-new lines ordered today: unconfirmed but too recent to be UNCONFIRMED_PO
        new_il = self.il.select("il_idx", "MATNR", "WERKS", "f", "mu", "u_npo").filter(
            pl.col("u_npo") < 0.03).drop("u_npo")
        rn = self.rnd("po_new")
        new = new_il.with_columns(rn.cols(new_il.height, "u_q", "u_d", "u_chg")).select(
            "il_idx", "MATNR", "WERKS", "f",
            cat=pl.lit("open"), BSTME=pl.lit("CS"),
            MENGE=1 + _ifloor(pl.col("mu") * 4 * pl.col("u_q") / pl.col("f")),
            EINDT=pl.lit(self.run_date) + pl.duration(days=14 + _ifloor(pl.col("u_d") * 60)),
            BEDAT=pl.lit(d2.date()), WEMNG=pl.lit(0, pl.Int64), LOEKZ=pl.lit(None, pl.String),
            ELIKZ=pl.lit(None, pl.String), CONF_DATE=pl.lit(None, pl.Date), PLAN_REF=pl.lit(None, pl.String),
            EBELP=pl.lit(10, pl.Int64), u_chg=pl.col("u_chg"),
        ).with_row_index("nseq").with_columns(
            EBELN=(pl.lit(self.next_ebeln, pl.Int64) + pl.col("nseq")).cast(pl.String),
            LIFNR=pl.lit("V") + (1000 + pl.col("il_idx") % 150).cast(pl.String),
        ).drop("nseq")
        self.next_ebeln += new.height
        f2n = pl.concat([f2_new, new], how="diagonal_relaxed").with_columns(
            CHANGED=pl.lit(d2) - pl.duration(seconds=_ifloor(pl.col("u_ord").fill_null(pl.col("u_chg")) * win2)))

        def fmt(df: pl.DataFrame) -> pl.DataFrame:
            return df.select(
                "EBELN", EBELP=_zfill(pl.col("EBELP"), 5), MATNR="MATNR", WERKS="WERKS", LIFNR="LIFNR",
                BEDAT=pl.col("BEDAT").dt.strftime("%Y%m%d"), EINDT=pl.col("EINDT").dt.strftime("%Y%m%d"),
                MENGE=_dec3(pl.col("MENGE")), BSTME="BSTME", WEMNG=_dec3(pl.col("WEMNG")), LOEKZ="LOEKZ",
                ELIKZ="ELIKZ", CONF_DATE=pl.col("CONF_DATE").dt.strftime("%Y%m%d"), PLAN_REF="PLAN_REF",
                CHANGED_AT=pl.col("CHANGED").dt.strftime("%Y%m%d%H%M%S"))

        file1 = fmt(f1)
        # planted bad lines in the first delta (copies of real lines under new PO numbers)
        src = file1.filter(pl.col("PLAN_REF").is_null() & pl.col("LOEKZ").is_null()).head(4)
        nb = self.next_ebeln
        bad = src.with_row_index("i").with_columns(
            EBELN=(pl.lit(nb, pl.Int64) + pl.col("i")).cast(pl.String),
        ).with_columns(
            EBELP=pl.when(pl.col("i") == 0).then(pl.lit(None, pl.String)).otherwise(pl.col("EBELP")),
            MENGE=pl.when(pl.col("i") == 1).then(pl.lit("12,500")).otherwise(pl.col("MENGE")),
            EINDT=pl.when(pl.col("i") == 2).then(pl.col("EINDT").str.slice(0, 4) + pl.lit("1341"))
            .otherwise(pl.col("EINDT")),
            WERKS=pl.when(pl.col("i") == 3).then(pl.lit("9999")).otherwise(pl.col("WERKS")),
        ).drop("i")
        self.next_ebeln += 4
        file1 = pl.concat([file1, bad])
        file2 = fmt(pl.concat([chg, f2n], how="diagonal_relaxed")).sort("EBELN", "EBELP")
        # the newer delta is written first: arrival order differs from name order
        rel2 = self.w.csv("purchase_order", d2, file2)
        rel1 = self.w.csv("purchase_order", d1, file1)
        b = bad.rows(named=True)
        self.problem("null_key", "EBELP empty", rel1, {"EBELN": b[0]["EBELN"], "EBELP": None}, "row quarantined",
                     "null_key")
        self.problem("bad_number", "MENGE '12,500' (decimal comma)", rel1, {"EBELN": b[1]["EBELN"], "EBELP": "00010"},
                     "row quarantined", "bad_number")
        self.problem("bad_date", f"EINDT '{b[2]['EINDT']}' (month 13)", rel1,
                     {"EBELN": b[2]["EBELN"], "EBELP": "00010"}, "row quarantined", "bad_date")
        self.problem("unknown_location", "WERKS 9999 is not in location_master", rel1,
                     {"EBELN": b[3]["EBELN"], "EBELP": "00010"}, "row quarantined", "unknown_location")
        self.problem("out_of_order", "the second PO delta was written (arrived) before the first", rel2,
                     {"earlier_name_arrived_later": rel1},
                     "both accepted; latest version of each line chosen by file <TS>, not arrival", None, rows=0)

    # --- planning -----------------------------------------------------------------------------------------
    def write_planning(self) -> None:
        w = self.w
        il = self.il
        # inventory position at T_p
        pos = il.select(
            "product_code", "site_code",
            on_hand=pl.when(pl.col("cls") == "plan_cs").then(pl.col("P") // pl.col("f")).otherwise(pl.col("P"))
            .cast(pl.Float64),
            uom=pl.when(pl.col("cls") == "plan_cs").then(pl.lit("CS")).otherwise(pl.lit("EA")),
            as_of=pl.lit(_iso(self.t_p)),
        )
        site0 = self.plants["site_code"][0]
        pos = pl.concat([pos, pl.DataFrame([{"product_code": "PRD-NEW01", "site_code": site0, "on_hand": 12.0,
                                             "uom": "EA", "as_of": _iso(self.t_p)}], schema=pos.schema)])
        cur = w.jsonl("inventory_position", self.t_p, pos)
        self.problem("unmapped_planning_product", "product PRD-NEW01 is in no item_xref", cur,
                     {"product_code": "PRD-NEW01", "site_code": site0},
                     "row quarantined (unmapped_code); open UNMAPPED_CODE planning/item/PRD-NEW01", "unmapped_code")
        bad = w.raw("planning", "inventory_position", self.t_w, _HTML_502)
        self.problem("html_in_jsonl", "an HTML 502 error page instead of JSON Lines", bad, None,
                     f"rejected (unparseable JSON Lines); {cur} stays current", rows=0)

        # forecasts: current version (2 days old) and the previous one (9 days old)
        H = self.sc.forecast_weeks
        fil = il.select("il_idx", "product_code", "site_code", "f", "mu", "u_fc", fc_cs=(pl.col("u_fccs") < 0.3)
                        & (pl.col("mu") * 2 >= pl.col("f"))).filter(
            pl.col("u_fc") < self.sc.forecast_share)
        prev_cut = self.sc.forecast_share * self.sc.previous_forecast_share
        weeks = pl.DataFrame({"w": list(range(H))}, schema={"w": pl.Int64})
        for tag, ts, start in (("old", self.t_fc_old, self.week0 - timedelta(days=7)),
                               ("cur", self.t_fc, self.week0)):
            iso_y, iso_w, _ = ts.isocalendar()
            version = f"FV-{iso_y}W{iso_w:02d}"
            wk = weeks.with_columns(week_start=(pl.lit(start) + pl.duration(days=7 * pl.col("w"))).dt.strftime(
                "%Y-%m-%d"))
            src = fil if tag == "cur" else fil.filter(pl.col("u_fc") < prev_cut)
            fc = src.drop("u_fc", "il_idx").join(wk, how="cross")
            u = self.rnd(f"fc_{tag}").u(fc.height, "u_q")
            fc = fc.with_columns(u).select(
                "product_code", "site_code", "week_start",
                qty=pl.when(pl.col("fc_cs"))
                .then((pl.col("mu") * (0.7 + 0.6 * pl.col("u_q")) / pl.col("f")).round(2))
                .otherwise((pl.col("mu") * (0.7 + 0.6 * pl.col("u_q"))).round(0)),
                uom=pl.when(pl.col("fc_cs")).then(pl.lit("CS")).otherwise(pl.lit("EA")),
                forecast_version=pl.lit(version), published_at=pl.lit(_iso(ts)),
            )
            if tag == "cur":
                new = wk.select("week_start", product_code=pl.lit("PRD-NEW02"), site_code=pl.lit(site0),
                                qty=pl.lit(10.0), uom=pl.lit("EA"), forecast_version=pl.lit(version),
                                published_at=pl.lit(_iso(ts))).select(fc.columns)
                fc = pl.concat([fc, new])
            rel = w.jsonl("forecast", ts, fc)
            if tag == "cur":
                self.problem("unmapped_planning_forecast_product", "forecast rows for product PRD-NEW02 (in no xref)",
                             rel, {"product_code": "PRD-NEW02", "site_code": site0},
                             f"{H} rows quarantined (unmapped_code); open UNMAPPED_CODE planning/item/PRD-NEW02",
                             "unmapped_code", rows=H)
                self.expected["forecast_current"] = rel

        # planned orders: two deltas
        rec = self.rec
        cols = FEED_COLUMNS[("planning", "planned_order")]

        def fmt(df: pl.DataFrame, status: pl.Expr) -> pl.DataFrame:
            return df.select(
                "recommendation_id", "product_code", "site_code",
                qty=pl.when(pl.col("rec_uom") == "CS").then(pl.col("k")).otherwise(pl.col("base_qty")).cast(pl.Float64),
                uom="rec_uom", need_date=pl.col("need_date").dt.strftime("%Y-%m-%d"),
                released_at=pl.col("released").dt.strftime("%Y-%m-%dT%H:%M:%SZ"), status=status,
            ).select(cols)

        cancelled_now = pl.when(pl.col("cat") == "cancelled").then(pl.lit("CANCELLED")).otherwise(pl.lit("RELEASED"))
        fa = fmt(rec.filter(pl.col("file") == "A"), cancelled_now)
        later = fmt(rec.filter(pl.col("cat") == "cancelled_later"), pl.lit("CANCELLED"))
        fb = pl.concat([later, fmt(rec.filter(pl.col("file") == "B"), cancelled_now)])
        w.jsonl("planned_order", self.t_rec_a, fa)
        w.jsonl("planned_order", self.t_rec_b, fb)
        rid = lambda c: rec.filter(pl.col("cat") == c)["recommendation_id"].sort().to_list()  # noqa: E731
        self.expected["unconverted_rec"] = sorted(rid("unconverted") + rid("deleted_only"))
        self.expected["rec_qty_mismatch"] = rid("conv_mismatch")
        self.expected["not_unconverted_rec"] = sorted(
            rid("conv_exact") + rid("conv_split") + rid("conv_closed") + rid("cancelled") + rid("cancelled_later"))

    # --- WMS -------------------------------------------------------------------------------------------
    def write_wms(self) -> None:
        w = self.w
        il = self.il.select("il_idx", "warehouse_code", "sku", "W", "n_parts", "u_p1", "u_p2").filter(
            pl.col("W") > 0)
        r = self.rnd("wms_rows")
        il = il.with_columns(r.cols(il.height, "u_lot1", "u_lot2", "u_lot3", "u_bin1", "u_bin2", "u_bin3", "u_st2",
                                    "u_st3", "u_lotn")).with_columns(
            n_parts=pl.when(pl.col("W") < 3).then(pl.lit(1, pl.Int64)).otherwise(pl.col("n_parts")),
        ).with_columns(
            q1=pl.when(pl.col("n_parts") >= 2).then(_ifloor(pl.col("W") * (0.4 + 0.5 * pl.col("u_p1"))))
            .otherwise(pl.col("W")),
        ).with_columns(
            q2=pl.when(pl.col("n_parts") == 3).then(_ifloor((pl.col("W") - pl.col("q1")) * (0.3 + 0.6 * pl.col("u_p2"))))
            .when(pl.col("n_parts") == 2).then(pl.col("W") - pl.col("q1")).otherwise(0),
        ).with_columns(q3=pl.col("W") - pl.col("q1") - pl.col("q2"))
        t_w = self.t_w

        def part(j: int, status: pl.Expr) -> pl.DataFrame:
            return il.select(
                "il_idx", "warehouse_code", "sku",
                lot=pl.when(pl.col(f"u_lot{j}") < 0.3).then(pl.lit(None, pl.String))
                .otherwise(pl.lit("L") + _zfill(_ifloor(pl.col("u_lotn") * 90000) + 10000 + j, 5)),
                bin=pl.lit("B") + _zfill(1 + _ifloor(pl.col(f"u_bin{j}") * 40), 2) + pl.lit("-")
                + _zfill((j - 1) * 30 + 1 + _ifloor(pl.col("u_p2") * 29), 2),
                qty_each=pl.col(f"q{j}"), status=status, part=pl.lit(j),
            ).filter(pl.col("qty_each") > 0)

        stock = pl.concat([
            part(1, pl.lit("AVAILABLE")),
            part(2, pl.when(pl.col("u_st2") < 0.6).then(pl.lit("HOLD")).otherwise(pl.lit("AVAILABLE"))),
            part(3, pl.when(pl.col("u_st3") < 0.6).then(pl.lit("DAMAGED")).otherwise(pl.lit("HOLD"))),
        ]).sort("il_idx", "part")
        sp = self.special
        first = lambda name: stock.filter((pl.col("il_idx") == sp[name]["il_idx"]) & (pl.col("part") == 1))  # noqa
        conf = first("wms_conflict").with_columns(qty_each=pl.col("qty_each") + 3)
        dup = first("wms_dup")
        lost = first("wms_lost").with_columns(bin=pl.lit("B99-99"), qty_each=pl.lit(4, pl.Int64),
                                              status=pl.lit("LOST"))
        new_sku = first("wms_lost").with_columns(sku=pl.lit("SKU-NEW01"), bin=pl.lit("B98-01"), lot=pl.lit(None, pl.String),
                                                 qty_each=pl.lit(6, pl.Int64))
        extra = pl.concat([conf, dup, lost, new_sku]).with_columns(part=pl.lit(9))
        full = pl.concat([stock, extra]).sort("il_idx", "part", maintain_order=True)
        cols = list(FEED_COLUMNS[("wms", "stock_snapshot")])
        snap = full.with_columns(snapshot_at=pl.lit(t_w).dt.cast_time_unit("us")).select(cols)
        cur = w.parquet("stock_snapshot", t_w, snap)
        nk = lambda df: {k: df[k][0] for k in ("warehouse_code", "sku", "lot", "bin", "status")}  # noqa: E731
        ilkey = lambda name: [sp[name]["item_id_s"], sp[name]["WERKS"]]  # noqa: E731
        self.problem("invalid_status", "status 'LOST' (allowed: AVAILABLE, HOLD, DAMAGED)", cur, nk(lost),
                     f"row quarantined (invalid_value); item-location {ilkey('wms_lost')} still matches",
                     "invalid_value")
        self.problem("unmapped_wms_sku", "sku SKU-NEW01 is in no item_xref", cur, nk(new_sku),
                     "row quarantined (unmapped_code); open UNMAPPED_CODE wms/item/SKU-NEW01", "unmapped_code")
        self.problem("conflicting_duplicate_wms", "same natural key twice with different qty_each (+3)", cur, nk(conf),
                     f"both rows quarantined; item-location {ilkey('wms_conflict')} WMS pair unverifiable",
                     "conflicting_duplicate", rows=2)
        self.problem("exact_duplicate_wms", "one row delivered twice, identical", cur, nk(dup),
                     f"collapsed and counted; item-location {ilkey('wms_dup')} matches", None, rows=0)
        trunc_ts = self.as_of - timedelta(minutes=30)
        bad = w.parquet("stock_snapshot", trunc_ts,
                        snap.with_columns(snapshot_at=pl.lit(trunc_ts).dt.cast_time_unit("us")), truncate=0.6, rows=0)
        self.problem("truncated_parquet", "Parquet file cut after 60 % of its bytes (no footer)", bad, None,
                     f"rejected (truncated Parquet); {cur} stays current", rows=0)
        self.expected["unverifiable"] = sorted([ilkey("erp_conflict"), ilkey("wms_conflict")])
        self.expected["must_match"] = sorted(
            [ilkey(nm) for nm in ("erp_dup", "erp_negative", "erp_unknown_uom", "wms_dup", "wms_lost",
                                  "txn_overlap")])

        # transactions: hourly files over (as_of - 8h, as_of], one txn in two files
        tx = self.tx.with_columns(pl.col("txn_at").dt.cast_time_unit("us"))
        tcols = list(FEED_COLUMNS[("wms", "transaction")])
        ov = self.overlap_txn
        for h in range(7, -1, -1):
            end = self.as_of - timedelta(hours=h)
            begin = end - timedelta(hours=1)
            part_df = tx.filter((pl.col("txn_at") > begin) & (pl.col("txn_at") <= end))
            if end == self.t_p:       # this file's export overlapped into the next hour
                part_df = pl.concat([part_df, tx.filter(pl.col("txn_id") == ov["txn_id"])])
            rel = w.parquet("transaction", end, part_df.select(tcols))
            if end == self.t_p:
                overlap_file = rel
            if end == self.t_w:
                self.problem("overlapping_transaction", "the same txn_id in two hourly files", rel,
                             {"txn_id": ov["txn_id"], "also_in": overlap_file},
                             f"counted once; item-location {ilkey('txn_overlap')} matches", None, rows=0)
        self.expected["rejected_files"] = sorted(
            p["file"] for p in self.problems if p["expect"].startswith("rejected"))
        self.expected["stale_feeds"] = [["erp", "location_master"]]
        self.expected["unmapped"] = [["wms", "SKU-NEW01"], ["planning", "PRD-NEW01"], ["planning", "PRD-NEW02"]]


# --- a correction under the same name --------------------------------------------------------------
def deliver_correction(landing: Path, summary: dict) -> str:
    """Re-deliver the current ERP inventory file under the same name, corrected.

    The corrected version drops the conflicting duplicate row (the second, +5 one), so
    that item-location becomes verifiable again. Returns the landing-relative path.
    """
    rel = next(p["file"] for p in summary["problems"] if p["id"] == "conflicting_duplicate_erp")
    key = next(p["key"] for p in summary["problems"] if p["id"] == "conflicting_duplicate_erp")
    path = Path(landing) / rel
    lines = path.read_bytes().decode("utf-8").split("\n")
    prefix = f"{key['MATNR']}|{key['WERKS']}|{key['LGORT']}|"
    hits = [i for i, ln in enumerate(lines) if ln.startswith(prefix)]
    if len(hits) < 2:
        return rel                               # already corrected
    del lines[hits[-1]]                          # the planted one is written after the real row
    path.write_bytes("\n".join(lines).encode("utf-8"))
    return rel
