"""The ingest fast paths give exactly what the plain evaluation gives.

- rule checks once per distinct value (``raw.suspect_mask``) vs pandera over every row;
- duplicate candidates by sorted key hashes (``mapping._duplicates``) vs ``is_duplicated``;
- quarantined rows dropped by a filter (``mapping.prepare``): order kept, bad rows gone.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pandera.polars as pa
import polars as pl
import pytest

from contracts import mapping, raw
from contracts.feeds import FEEDS
from contracts.readers import ROW_NUMBER

# value pools: good values, nulls, blanks, malformed and out-of-range values, so every
# rule of the feeds below fails somewhere and every distinct value occurs in many rows
TEXT_POOLS = {
    "product_code": ["PRD1", "PRD2", "PRD3", None, "", "  "],
    "site_code": ["DC-1", "DC-2", None, " "],
    "week_start": ["2026-11-23", "2026-11-30", "2026-11-24", "2026-02-30", "20261123", "", None, " 2026-11-23"],
    "qty": ["1.0", "12", "0", "-0.0", "-5", "1e3", "abc", "12.5.1", ".5", "5.", " 7 ", "", None, "NaN", "inf"],
    "on_hand": ["3.0", "-1", "x", None, ""],
    "uom": ["EA", "CS", "", None],
    "forecast_version": ["FV-1", "", None],
    "published_at": ["2026-11-28T06:00:00Z", "2026-11-28T06:00:00+01:00", "2026-11-28 06:00:00",
                     "2026-11-28T06:00:00z", "", None],
    "as_of": ["2026-11-28T06:00:00Z", "yesterday", None],
    "recommendation_id": ["R1", "R2", "R3", "R4", None, ""],
    "need_date": ["2026-12-01", "2026-13-01", None],
    "released_at": ["2026-11-28T06:00:00Z", "bad", None],
    "status": ["RELEASED", "CANCELLED", "released", "", None],
    # ERP purchase order
    "EBELN": ["4500000001", "4500000002", "450000001", "", None, "45000000XX"],
    "EBELP": ["00010", "00020", "10", None],
    "MATNR": ["000000000000000101", "101", "", None],
    "WERKS": ["1010", "10100", "", None],
    "LIFNR": ["V1", None],
    "BEDAT": ["20261110", "20261340", "2026-11-10", "", None],
    "EINDT": ["20261201", None],
    "MENGE": ["10.000", "-1", "ten", None],
    "BSTME": ["EA", "", None],
    "WEMNG": ["0.000", "-2", "x", None, ""],
    "LOEKZ": ["", "L", "X", " ", None],
    "ELIKZ": ["", "X", "L", None],
    "CONF_DATE": ["20261111", "bad", None, ""],
    "PLAN_REF": [None, "P1"],
    "CHANGED_AT": ["20261123060000", "2026112306000", None],
}


def text_frame(feed_name: str, n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    cols = FEEDS[feed_name].columns
    data = {c: [rng.choice(TEXT_POOLS[c]) for _ in range(n)] for c in cols}
    df = pl.DataFrame(data, schema={c: pl.String for c in cols})
    return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))


def snapshot_frame(n: int, seed: int) -> pl.DataFrame:
    """WMS Parquet arrives typed: integers, timestamps."""
    rng = random.Random(seed)
    ts = datetime(2026, 11, 24, 5, tzinfo=timezone.utc)
    df = pl.DataFrame({
        "warehouse_code": [rng.choice(["WHA", "WHB", None, ""]) for _ in range(n)],
        "sku": [rng.choice(["SKU-1", "SKU-2", None]) for _ in range(n)],
        "lot": [rng.choice(["L1", None]) for _ in range(n)],
        "bin": [rng.choice(["B1", "B2", " ", None]) for _ in range(n)],
        "qty_each": [rng.choice([0, 5, -3, None]) for _ in range(n)],
        "status": [rng.choice(["AVAILABLE", "HOLD", "DAMAGED", "LOST", None]) for _ in range(n)],
        "snapshot_at": [rng.choice([ts, None]) for _ in range(n)],
    }, schema={"warehouse_code": pl.String, "sku": pl.String, "lot": pl.String, "bin": pl.String,
               "qty_each": pl.Int64, "status": pl.String, "snapshot_at": pl.Datetime("us", "UTC")})
    return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))


FRAMES = {
    "forecast": lambda: text_frame("forecast", 3000, 1),
    "inventory_position": lambda: text_frame("inventory_position", 2000, 2),
    "planned_order": lambda: text_frame("planned_order", 2000, 3),
    "purchase_order": lambda: text_frame("purchase_order", 3000, 4),
    "stock_snapshot": lambda: snapshot_frame(2000, 5),
}


def pandera_failures(feed_name: str, df: pl.DataFrame) -> pl.DataFrame:
    """The plain evaluation: the feed's pandera schema over every row."""
    try:
        raw.raw_schema(feed_name).validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
        return fc.select(pl.col("index").cast(pl.Int64).alias("_row_idx"), pl.col("check").alias("rule"),
                         "column").unique().sort(pl.all())
    return pl.DataFrame(schema={"_row_idx": pl.Int64, "rule": pl.String, "column": pl.String})


def plain_suspects(feed_name: str, df: pl.DataFrame) -> list[int]:
    exprs = [r.build(c).fill_null(False) for c, rules in raw.column_rules(FEEDS[feed_name]).items() for r in rules]
    return df.with_row_index("_pos").filter(~pl.all_horizontal(exprs)).get_column("_pos").to_list()


@pytest.mark.parametrize("feed_name", sorted(FRAMES))
@pytest.mark.parametrize("per_value", [True, False])
def test_suspect_rows_equal_the_plain_evaluation(feed_name, per_value):
    df = FRAMES[feed_name]()
    mask = raw.suspect_mask(FEEDS[feed_name], df, per_value=per_value)
    got = df.with_row_index("_pos").filter(mask).get_column("_pos").to_list() if mask is not None else []
    assert got == plain_suspects(feed_name, df)
    assert got, "the pools must break some rules"


@pytest.mark.parametrize("feed_name", sorted(FRAMES))
@pytest.mark.parametrize("share", [1.0, -1.0])   # every column by value / none (ids path)
def test_rule_failures_equal_pandera_over_every_row(feed_name, share, monkeypatch):
    monkeypatch.setattr(raw, "PER_VALUE_MAX_SHARE", share)
    df = FRAMES[feed_name]()
    got = raw.rule_failures(FEEDS[feed_name], df)
    expected = pandera_failures(feed_name, df)
    assert expected.height > 0
    assert got.select("_row_idx", "rule", "column").sort(pl.all()).equals(expected)
    # every broken rule of the pools is seen, nulls and blanks included
    assert set(got.get_column("rule")) == set(expected.get_column("rule"))


def test_low_cardinality_columns_take_the_per_value_path():
    df = text_frame("forecast", 3000, 1)
    feed = FEEDS["forecast"]
    for col, rules in raw.column_rules(feed).items():
        assert raw._per_value(df, col, [r.build(col) for r in rules]), col
    ids = pl.DataFrame({"recommendation_id": [f"R{i}" for i in range(3000)]})
    assert not raw._per_value(ids, "recommendation_id", [raw.NULL_KEY.build("recommendation_id")])


def test_a_rule_reading_another_column_is_evaluated_row_by_row():
    # a value's verdict could then depend on its row: per value would be wrong
    df = pl.DataFrame({"qty": ["1", "1", "-1"], "uom": ["EA", "CS", "EA"]})
    ctx = pl.col("qty").is_not_null() & (pl.col("uom") == "EA")
    assert not raw._per_value(df, "qty", [ctx])
    floats = pl.DataFrame({"x": [1.0, float("nan"), None]})
    assert not raw._per_value(floats, "x", [pl.col("x") >= 0])


def test_all_passing_values_give_no_suspects():
    df = pl.DataFrame({c: [TEXT_POOLS[c][0]] * 500 for c in FEEDS["forecast"].columns})
    assert raw.suspect_mask(FEEDS["forecast"], df) is None
    assert raw.rule_failures(FEEDS["forecast"], df).height == 0


# --- duplicates -------------------------------------------------------------------------
def plain_duplicates(feed, df):
    key, cols = list(feed.key), list(feed.columns)
    cand = df.filter(pl.struct(key).hash(seed=0).is_duplicated())
    if cand.height == 0:
        return df, 0, df.head(0)
    first = cand.unique(subset=cols, keep="first", maintain_order=True)
    drop_rows = cand.join(first.select(ROW_NUMBER), on=ROW_NUMBER, how="anti").select(ROW_NUMBER)
    kept = df.join(drop_rows, on=ROW_NUMBER, how="anti") if drop_rows.height else df
    present = pl.all_horizontal([pl.col(k).is_not_null() for k in key if k != "lot"])
    return kept, drop_rows.height, first.filter(present & pl.struct(key).is_duplicated())


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_duplicates_by_sorted_hashes_equal_is_duplicated(seed):
    feed = FEEDS["forecast"]
    rng = random.Random(seed)
    rows = []
    for i in range(20_000):   # many keys: hashes on both sides of 2**63
        rows.append({"product_code": f"PRD{i}", "site_code": "DC-1", "week_start": "2026-11-23", "qty": "1",
                     "uom": "EA", "forecast_version": "FV", "published_at": "2026-11-28T06:00:00Z"})
    for _ in range(300):      # exact copies, conflicting copies, null keys repeated
        r = dict(rng.choice(rows))
        kind = rng.choice(["exact", "conflict", "null"])
        if kind == "conflict":
            r["qty"] = str(rng.randint(2, 9))
        elif kind == "null":
            r["site_code"] = None
            rows.append(dict(r))
        rows.append(r)
    rng.shuffle(rows)
    df = pl.DataFrame(rows, schema={c: pl.String for c in feed.columns})
    df = df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
    kept, n, conflict = mapping._duplicates(feed, df)
    kept0, n0, conflict0 = plain_duplicates(feed, df)
    assert n == n0 and n > 0
    assert kept.equals(kept0)
    assert conflict.equals(conflict0) and conflict.height > 0


def test_no_duplicates_returns_the_frame_itself():
    feed = FEEDS["forecast"]
    df = text_frame("forecast", 10, 1).with_columns(pl.col(ROW_NUMBER).cast(pl.String).alias("product_code"))
    kept, n, conflict = mapping._duplicates(feed, df)
    assert kept is df and n == 0 and conflict.height == 0


# --- accepted rows ----------------------------------------------------------------------
def test_prepare_drops_every_quarantined_row_and_keeps_the_order():
    feed = FEEDS["forecast"]
    refs = mapping.References(
        items=pl.DataFrame({"item_id": ["1", "2"], "matnr": ["1".zfill(18), "2".zfill(18)], "base_uom": ["EA", "EA"]}),
        locations=pl.DataFrame({"location_id": ["1010"]}),
        uom=pl.DataFrame({"item_id": ["1"], "uom": ["CS"], "factor": [12.0]}),
        item_xref=pl.DataFrame({"system": ["PLANNING", "PLANNING"], "external_code": ["PRD1", "PRD2"],
                                "item_id": ["1", "2"]}),
        location_xref=pl.DataFrame({"system": ["PLANNING"], "external_code": ["DC-1"], "location_id": ["1010"]}),
    )
    rng = random.Random(7)
    monday = date(2026, 11, 23)
    rows = []
    for i in range(3000):   # good rows, one in five with one value drawn from the pools
        r = {"product_code": rng.choice(["PRD1", "PRD2"]), "site_code": "DC-1",
             "week_start": (monday + timedelta(weeks=i)).isoformat(), "qty": str(i % 50),
             "uom": rng.choice(["EA", "CS"]), "forecast_version": "FV", "published_at": "2026-11-28T06:00:00Z"}
        if i % 5 == 0:
            col = rng.choice(list(r))
            r[col] = rng.choice(TEXT_POOLS[col])
        rows.append(r)
    df = pl.DataFrame(rows, schema={c: pl.String for c in feed.columns})
    df = df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
    prep = mapping.prepare(feed, df.clone(), refs)
    bad = set(prep.quarantine.get_column(ROW_NUMBER))
    staged = prep.staged.get_column(ROW_NUMBER).to_list()
    assert bad and staged, prep.quarantine.group_by("rule").len()
    assert staged == sorted(staged)  # file order
    expected = [r for r in mapping._duplicates(feed, df)[0].get_column(ROW_NUMBER).to_list() if r not in bad]
    assert staged == expected


# --- typed staging columns ----------------------------------------------------------------
@pytest.mark.parametrize("share", [1.0, -1.0])   # by value / row by row
def test_timestamps_parsed_by_value_equal_the_plain_parse(share, monkeypatch):
    monkeypatch.setattr(raw, "PER_VALUE_MAX_SHARE", share)
    rng = random.Random(3)
    pool = ["2026-11-28T06:00:00Z", "2026-11-28T07:00:00+01:00", "2026-11-28T06:00:00.123456z",
            "2026-11-28T06:00:00-05:30", None, "bad"]
    df = pl.DataFrame({"published_at": [rng.choice(pool) for _ in range(5000)]})
    got = df.select(mapping._by_value(df, "published_at", raw.iso_timestamp))
    assert got.equals(df.select(raw.iso_timestamp("published_at")))
    assert got.schema == df.select(raw.iso_timestamp("published_at")).schema
    empty = df.head(0)
    assert empty.select(mapping._by_value(empty, "published_at", raw.iso_timestamp)).schema == got.schema


# --- reference lookups once per run of equal codes ----------------------------------------
def planning_refs(dup_xref: bool = False) -> mapping.References:
    ix_codes, ix_items = ["PRD1", "PRD2", "PRD3"], ["1", "2", "3"]
    if dup_xref:   # a repeated xref key: the join multiplies rows, the run path must not hide it
        ix_codes, ix_items = ix_codes + ["PRD1"], ix_items + ["2"]
    return mapping.References(
        items=pl.DataFrame({"item_id": ["1", "2", "3"], "matnr": [c.zfill(18) for c in "123"],
                            "base_uom": ["EA", "EA", "CS"]}),
        locations=pl.DataFrame({"location_id": ["1010", "1020"]}),
        uom=pl.DataFrame({"item_id": ["1", "3"], "uom": ["CS", "EA"], "factor": [12.0, 0.5]}),
        item_xref=pl.DataFrame({"system": ["PLANNING"] * len(ix_codes), "external_code": ix_codes,
                                "item_id": ix_items}),
        location_xref=pl.DataFrame({"system": ["PLANNING", "PLANNING"], "external_code": ["DC-1", "DC-2"],
                                    "location_id": ["1010", "1020"]}),
    )


def sorted_codes_frame(n_chunks: int) -> pl.DataFrame:
    """Item-locations one after the other (runs), unknown codes and nulls among them,
    split in several chunks like the JSON reader's frames."""
    rng = random.Random(5)
    rows = []
    for _ in range(400):
        code, site, uom = rng.choice(["PRD1", "PRD2", "PRD3", "PRDX", None]), rng.choice(["DC-1", "DC-2", "DC-9", None]), \
            rng.choice(["EA", "CS", "KG", None])
        rows += [{"product_code": code, "site_code": site, "uom": uom, "qty": str(w)} for w in range(rng.randint(1, 12))]
    df = pl.DataFrame(rows, schema={"product_code": pl.String, "site_code": pl.String, "uom": pl.String,
                                    "qty": pl.String})
    df = df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
    size = -(-df.height // n_chunks)
    return pl.concat([df.slice(i * size, size) for i in range(n_chunks)], rechunk=False)


@pytest.mark.parametrize("dup_xref", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])   # runs / no runs (plain fallback)
def test_lookups_by_runs_equal_the_plain_joins(dup_xref, shuffle):
    refs = planning_refs(dup_xref)
    df = sorted_codes_frame(7)
    if shuffle:
        df = df.sample(fraction=1.0, shuffle=True, seed=1)

    def lookup(f):
        return mapping._factor(mapping._map_xref(f, refs, "PLANNING", "product_code", "site_code"), refs, "uom")

    got = mapping._by_runs(df, ["product_code", "site_code", "uom"], lookup)
    expected = lookup(df)
    assert got.columns == expected.columns
    if dup_xref:   # join output order is not defined with repeated keys: same rows
        assert got.sort(pl.all()).equals(expected.sort(pl.all()))
    else:
        assert got.equals(expected)
    assert got.filter(pl.col("_item_id").is_null()).height > 0 and got.filter(pl.col("_factor").is_null()).height > 0


def test_prepare_on_a_chunked_frame_equals_the_single_chunk_frame(tmp_path):
    # the JSON reader's frames come in many chunks; the lookups' columns in one (polars
    # 2.1 panicked formatting the unmapped codes of such a frame)
    import json

    from contracts.readers import read_feed_file

    feed = FEEDS["forecast"]
    rng = random.Random(9)
    path = tmp_path / "forecast_20261128T060000Z.jsonl"
    with path.open("w") as fh:
        for k in range(4000):   # unique keys: every item-location has its own weeks
            code = rng.choice(["PRD1", "PRD2", "PRD3", "PRDX"])
            site, uom = rng.choice(["DC-1", "DC-2", "DC-9"]), rng.choice(["EA", "CS", "KG"])
            for w in range(rng.randint(1, 8)):
                fh.write(json.dumps({"product_code": code, "site_code": site,
                                     "week_start": (date(2026, 11, 23) + timedelta(weeks=8 * k + w)).isoformat(),
                                     "qty": float(w), "uom": uom, "forecast_version": "FV",
                                     "published_at": "2026-11-28T06:00:00Z"}) + "\n")
    df = read_feed_file(feed, path)
    assert df.n_chunks("all")[1] > 1, "the reader gave one chunk: the test does not test the layout"
    a = mapping.prepare(feed, df, planning_refs())
    b = mapping.prepare(feed, df.rechunk(), planning_refs())
    assert a.quarantine.height > 0 and a.staged.height > 0
    # every quarantined row carries its raw values
    raw_of = dict(df.select(ROW_NUMBER, pl.struct(list(feed.columns)).struct.json_encode().alias("raw")).iter_rows())
    assert all(raw == raw_of[row] for row, raw in a.quarantine.select(ROW_NUMBER, "raw").iter_rows())
    # (the quarantine's row order is set when it is written: sorted here)
    assert a.quarantine.sort(pl.all()).equals(b.quarantine.sort(pl.all())) and a.staged.equals(b.staged)
