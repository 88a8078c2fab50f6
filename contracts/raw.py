"""Raw contracts: one pandera (polars) schema per feed, one named rule per check.

CSV and JSON Lines values arrive as text; the rules say what the text must look like.
Parquet values arrive typed; the rules check nulls, ranges and allowed values.
Rule names are what operators see in ``ingest.quarantine.rule``:

| rule | meaning |
|---|---|
| ``null_key`` | a natural-key column is empty |
| ``missing_value`` | a required non-key column is empty |
| ``malformed_key`` | a key is not of its form (MATNR 18 digits, WERKS 4 characters, EBELN 10 digits, EBELP 5 digits) |
| ``bad_number`` / ``bad_integer`` | not a decimal with ``.`` / not a whole number |
| ``bad_date`` / ``bad_timestamp`` | not ``YYYYMMDD`` / ``YYYYMMDDHHMMSS`` (ERP), not ISO-8601 (planning) |
| ``negative_quantity`` | a stock or order quantity below 0 |
| ``non_positive_factor`` | ``UMREZ`` / ``UMREN`` not > 0 |
| ``invalid_value`` | a value outside its allowed set (status, SYSTEM, flags) |
| ``not_a_monday`` | a forecast ``week_start`` that is not a Monday |

Rules that need other feeds (``unmapped_code``, ``unknown_item``, ``unknown_location``,
``unknown_uom``) and ``conflicting_duplicate`` are in ``contracts/mapping.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import pandera.polars as pa
import polars as pl

from contracts.feeds import FEEDS, Feed

Expr = pl.Expr


# --- value parsers (shared with the canonical transform) ----------------------------------
def erp_number(c: str) -> Expr:
    return pl.col(c).str.strip_chars().cast(pl.Float64, strict=False)


def erp_date(c: str) -> Expr:
    return pl.col(c).str.to_date("%Y%m%d", strict=False)


def erp_timestamp(c: str) -> Expr:
    return pl.col(c).str.to_datetime("%Y%m%d%H%M%S", time_zone="UTC", time_unit="us", strict=False)


def iso_date(c: str) -> Expr:
    return pl.col(c).str.to_date("%Y-%m-%d", strict=False)


def iso_timestamp(c: str) -> Expr:
    return (
        pl.col(c)
        .str.replace(r"[Zz]$", "+00:00")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_zone="UTC", time_unit="us", strict=False)
    )


def _text_number_ok(c: str) -> Expr:
    return pl.col(c).str.contains(r"^\s*-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


# --- rule builders: each returns an expression that is True where the row passes ---------
@dataclass(frozen=True)
class Rule:
    """``build(c)`` is True where the value of column ``c`` passes. It must be row-wise
    (a row's result depends only on that row's value of ``c``, no aggregation): the
    fast pass of ``rule_failures`` evaluates it once per distinct value."""

    name: str
    build: Callable[[str], Expr]
    detail: str


def _present(c: str) -> Expr:
    return pl.col(c).is_not_null() & (pl.col(c).cast(pl.String).str.strip_chars() != "")


NULL_KEY = Rule("null_key", _present, "key column is empty")
MISSING = Rule("missing_value", _present, "required value is empty")


def regex(pattern: str, what: str, name: str = "malformed_key") -> Rule:
    return Rule(name, lambda c: pl.col(c).is_null() | pl.col(c).str.contains(pattern), what)


MATNR = regex(r"^\d{18}$", "MATNR must be 18 digits")
WERKS = regex(r"^[A-Za-z0-9]{4}$", "WERKS must be 4 characters")
EBELN = regex(r"^\d{10}$", "EBELN must be 10 digits")
EBELP = regex(r"^\d{5}$", "EBELP must be 5 digits")
NUMBER = Rule("bad_number", lambda c: pl.col(c).is_null() | (_text_number_ok(c) & erp_number(c).is_finite()),
              "not a decimal number")
INTEGER = Rule("bad_integer", lambda c: pl.col(c).is_null() | pl.col(c).str.contains(r"^\s*-?\d+\s*$"),
               "not a whole number")
NON_NEGATIVE = Rule("negative_quantity",
                    lambda c: pl.col(c).is_null() | ~_text_number_ok(c) | (erp_number(c) >= 0),
                    "quantity below 0")
POSITIVE_FACTOR = Rule("non_positive_factor",
                       lambda c: pl.col(c).is_null() | ~_text_number_ok(c) | (erp_number(c) > 0),
                       "conversion factor must be > 0")
ERP_DATE = Rule("bad_date", lambda c: pl.col(c).is_null() | erp_date(c).is_not_null(), "not a YYYYMMDD date")
ERP_TS = Rule("bad_timestamp", lambda c: pl.col(c).is_null() | erp_timestamp(c).is_not_null(),
              "not a YYYYMMDDHHMMSS timestamp")
ISO_DATE = Rule("bad_date", lambda c: pl.col(c).is_null() | iso_date(c).is_not_null(), "not a YYYY-MM-DD date")
ISO_TS = Rule("bad_timestamp", lambda c: pl.col(c).is_null() | iso_timestamp(c).is_not_null(),
              "not an ISO-8601 timestamp with Z or an offset")
MONDAY = Rule("not_a_monday", lambda c: iso_date(c).is_null() | (iso_date(c).dt.weekday() == 1),
              "week_start is not a Monday")
INT_NON_NEGATIVE = Rule("negative_quantity", lambda c: pl.col(c).is_null() | (pl.col(c) >= 0), "quantity below 0")


def one_of(*allowed: str | None) -> Rule:
    values = [a for a in allowed if a is not None]
    nullable = None in allowed
    return Rule(
        "invalid_value",
        lambda c: (pl.col(c).is_null() if nullable else pl.lit(False)) | pl.col(c).is_in(values),
        f"must be one of {allowed}",
    )


def nullable_one_of(*allowed: str) -> Rule:
    return Rule(
        "invalid_value",
        lambda c: pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") | pl.col(c).is_in(list(allowed)),
        f"must be empty or one of {allowed}",
    )


KEY, REQ = "key", "required"

# feed -> column -> rules (null_key / missing_value are added from the key and REQ marks)
RULES: dict[str, dict[str, tuple]] = {
    "item_master": {
        "MATNR": (KEY, MATNR), "MAKTX": (), "MEINS": (REQ,), "MATKL": (),
        "STPRS": (REQ, NUMBER, NON_NEGATIVE), "WAERS": (), "LVORM": (nullable_one_of("X"),),
    },
    "uom_conversion": {
        "MATNR": (KEY, MATNR), "MEINH": (KEY,),
        "UMREZ": (REQ, INTEGER, POSITIVE_FACTOR), "UMREN": (REQ, INTEGER, POSITIVE_FACTOR),
    },
    "location_master": {"WERKS": (KEY, WERKS), "NAME1": (), "LAND1": (), "REGIO": ()},
    "item_location": {
        "MATNR": (KEY, MATNR), "WERKS": (KEY, WERKS), "DISPO": (),
        "PLIFZ": (REQ, INTEGER, NON_NEGATIVE), "EISBE": (REQ, NUMBER, NON_NEGATIVE),
        "BSTRF": (REQ, NUMBER, NON_NEGATIVE),
    },
    "item_xref": {"MATNR": (REQ, MATNR), "SYSTEM": (KEY, one_of("PLANNING", "WMS")), "EXTERNAL_CODE": (KEY,)},
    "location_xref": {"WERKS": (REQ, WERKS), "SYSTEM": (KEY, one_of("PLANNING", "WMS")), "EXTERNAL_CODE": (KEY,)},
    "inventory_balance": {
        "MATNR": (KEY, MATNR), "WERKS": (KEY, WERKS), "LGORT": (KEY,),
        "LABST": (REQ, NUMBER, NON_NEGATIVE), "INSME": (REQ, NUMBER, NON_NEGATIVE),
        "SPEME": (REQ, NUMBER, NON_NEGATIVE), "MEINS": (REQ,), "EXTRACTED_AT": (REQ, ERP_TS),
    },
    "purchase_order": {
        "EBELN": (KEY, EBELN), "EBELP": (KEY, EBELP), "MATNR": (REQ, MATNR), "WERKS": (REQ, WERKS),
        "LIFNR": (), "BEDAT": (REQ, ERP_DATE), "EINDT": (REQ, ERP_DATE),
        "MENGE": (REQ, NUMBER, NON_NEGATIVE), "BSTME": (REQ,), "WEMNG": (NUMBER, NON_NEGATIVE),
        "LOEKZ": (nullable_one_of("L"),), "ELIKZ": (nullable_one_of("X"),), "CONF_DATE": (ERP_DATE,),
        "PLAN_REF": (), "CHANGED_AT": (ERP_TS,),
    },
    "forecast": {
        "product_code": (KEY,), "site_code": (KEY,), "week_start": (KEY, ISO_DATE, MONDAY),
        "qty": (REQ, NUMBER, NON_NEGATIVE), "uom": (REQ,), "forecast_version": (REQ,),
        "published_at": (REQ, ISO_TS),
    },
    "inventory_position": {
        "product_code": (KEY,), "site_code": (KEY,), "on_hand": (REQ, NUMBER, NON_NEGATIVE),
        "uom": (REQ,), "as_of": (REQ, ISO_TS),
    },
    "planned_order": {
        "recommendation_id": (KEY,), "product_code": (REQ,), "site_code": (REQ,),
        "qty": (REQ, NUMBER, NON_NEGATIVE), "uom": (REQ,), "need_date": (REQ, ISO_DATE),
        "released_at": (REQ, ISO_TS), "status": (REQ, one_of("RELEASED", "CANCELLED")),
    },
    "stock_snapshot": {
        "warehouse_code": (KEY,), "sku": (KEY,), "lot": (), "bin": (KEY,),
        "qty_each": (REQ, INT_NON_NEGATIVE), "status": (KEY, one_of("AVAILABLE", "HOLD", "DAMAGED")),
        "snapshot_at": (REQ,),
    },
    "transaction": {
        "txn_id": (KEY,), "warehouse_code": (REQ,), "sku": (REQ,), "qty_each": (REQ,),
        "txn_type": (REQ, one_of("RECEIPT", "SHIPMENT", "ADJUSTMENT", "TRANSFER_IN", "TRANSFER_OUT")),
        "txn_at": (REQ,), "reference": (),
    },
}
assert set(RULES) == set(FEEDS)


def column_rules(feed: Feed) -> dict[str, list[Rule]]:
    """Every rule of every column, presence rules first."""
    out: dict[str, list[Rule]] = {}
    for col, marks in RULES[feed.name].items():
        rules: list[Rule] = []
        if KEY in marks:
            rules.append(NULL_KEY)
        elif REQ in marks:
            rules.append(MISSING)
        rules.extend(m for m in marks if isinstance(m, Rule))
        out[col] = rules
    return out


def _pandera_check(rule: Rule, column: str) -> pa.Check:
    expr = rule.build(column)

    def check(data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(expr.fill_null(False).alias(data.key))

    return pa.Check(check, name=rule.name)


@lru_cache(maxsize=None)
def raw_schema(feed_name: str) -> pa.DataFrameSchema:
    """The pandera schema of a feed's raw rows (text columns for CSV / JSON Lines)."""
    feed = FEEDS[feed_name]
    columns = {}
    for col, rules in column_rules(feed).items():
        columns[col] = pa.Column(
            None,  # dtypes are enforced by the readers (text, or the Parquet types)
            nullable=True,
            checks=[_pandera_check(r, col) for r in rules],
            required=True,
        )
    return pa.DataFrameSchema(columns, name=f"raw_{feed.qualified}", strict=False)


# a column is checked value by value when a sample of it has at most this share of
# distinct values (codes, units, dates, quantities); ids are checked row by row
PER_VALUE_SAMPLE = 20_000
PER_VALUE_MAX_SHARE = 0.2


def few_distinct(series: pl.Series) -> bool:
    """Whether a column is worth evaluating once per distinct value: a sample of its
    first rows has at most ``PER_VALUE_MAX_SHARE`` distinct values."""
    sample = series.head(PER_VALUE_SAMPLE)
    return sample.n_unique() <= max(1, int(sample.len() * PER_VALUE_MAX_SHARE))


def _per_value(df: pl.DataFrame, col: str, exprs: list[Expr]) -> bool:
    """Whether the column's rules may be evaluated once per distinct value (they read
    only that column, its values compare exactly) and that is likely to pay."""
    series = df.get_column(col)
    if series.dtype.is_float() or series.dtype.is_nested() or series.dtype == pl.Object:
        return False  # NaN and nested values do not round-trip through is_in exactly
    if any(set(e.meta.root_names()) != {col} for e in exprs):
        return False
    return few_distinct(series)


def suspect_mask(feed: Feed, df: pl.DataFrame, per_value: bool | None = None) -> Expr | None:
    """An expression over ``df`` that is True for every row that breaks at least one
    rule of the feed; None when no row can (every distinct value passed).

    A low-cardinality column's rules are evaluated once per distinct value, and the
    rows are then matched to the failing values (``is_in``), which is exact because
    the rules are row-wise functions of the one value. A column whose distinct values
    all pass costs only its ``unique()``. Other columns are evaluated row by row.
    ``per_value`` forces one path for every column (tests); None chooses per column.
    """
    direct: list[Expr] = []
    masks: list[Expr] = []
    for col, rules in column_rules(feed).items():
        exprs = [r.build(col).fill_null(False) for r in rules]
        if not exprs:
            continue
        use = _per_value(df, col, exprs) if per_value is None else per_value
        if not use:
            direct.extend(exprs)
            continue
        values = df.select(pl.col(col).unique())
        bad = values.filter(~pl.all_horizontal(exprs)).get_column(col)
        if bad.len() == 0:
            continue
        mask = pl.col(col).is_in(bad.drop_nulls().implode()).fill_null(False)
        if bad.null_count():
            mask = mask | pl.col(col).is_null()
        masks.append(mask)
    if direct:
        masks.append(~pl.all_horizontal(direct))
    return pl.any_horizontal(masks) if masks else None


def rule_failures(feed: Feed, df: pl.DataFrame) -> pl.DataFrame:
    """Validate ``df`` lazily with the feed's pandera schema.

    Returns one row per (row, rule, column) broken: ``_row_idx`` (0-based position in
    ``df``), ``rule``, ``column``, ``detail``.

    Speed: every rule of the schema is first evaluated in one polars pass (the same
    expressions the pandera checks run, once per distinct value where a column has few,
    see ``suspect_mask``); pandera then validates only the rows that broke at least one
    rule, which is where its failure cases come from. On clean data that is one pass
    over the file instead of one per check.
    """
    schema = raw_schema(feed.name)
    empty = pl.DataFrame(schema={"_row_idx": pl.Int64, "rule": pl.String, "column": pl.String, "detail": pl.String})
    if df.height == 0:
        return empty
    mask = suspect_mask(feed, df)
    if mask is None:
        return empty
    suspects = df.with_row_index("_pos").filter(mask)
    if suspects.height == 0:
        return empty
    positions = suspects.select(pl.col("_pos").cast(pl.Int64))
    try:
        schema.validate(suspects.drop("_pos"), lazy=True)
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
        unexpected = fc.filter(pl.col("index").is_null())
        if unexpected.height:
            # a schema-level failure (a column missing): the readers should have caught it
            raise ValueError(f"raw contract of {feed.name}: {unexpected.row(0, named=True)}") from None
        details = pl.DataFrame(
            [(col, r.name, f"{col}: {r.detail}") for col, rules in column_rules(feed).items() for r in rules],
            schema={"column": pl.String, "rule": pl.String, "detail": pl.String},
            orient="row",
        ).unique(subset=["column", "rule"])
        local = positions.with_row_index("_local").with_columns(pl.col("_local").cast(pl.Int64))
        return (
            fc.select(
                pl.col("index").cast(pl.Int64).alias("_local"),
                pl.col("check").alias("rule"),
                pl.col("column"),
            )
            .unique()
            .join(local, on="_local", how="left")
            .select(pl.col("_pos").alias("_row_idx"), "rule", "column")
            .join(details, on=["column", "rule"], how="left")
        )
    raise AssertionError(f"{feed.name}: rows failed the fast rule pass but passed pandera")  # pragma: no cover
