"""The demo landing generator (pipelines/demo.py).

Everything is checked from the files themselves (an independent mini-reader here), not
from the generator's summary: layout, headers, Parquet types, JSON keys, determinism,
every planted problem, the bad-row shares, and that after time alignment exactly the
planted item-locations drift.
"""

from __future__ import annotations

import json
import re
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.demo import FEED_COLUMNS, SCALES, deliver_correction, generate_landing

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
NAME = re.compile(r"^(erp|planning|wms)/([a-z_]+)/([a-z_]+)_(\d{8}T\d{6}Z)\.(csv|jsonl|parquet)$")
EXT = {"erp": "csv", "planning": "jsonl", "wms": "parquet"}
TS_UTC = pa.timestamp("us", tz="UTC")
PARQUET = {
    "stock_snapshot": pa.schema([("warehouse_code", pa.string()), ("sku", pa.string()), ("lot", pa.string()),
                                 ("bin", pa.string()), ("qty_each", pa.int64()), ("status", pa.string()),
                                 ("snapshot_at", TS_UTC)]),
    "transaction": pa.schema([("txn_id", pa.string()), ("warehouse_code", pa.string()), ("sku", pa.string()),
                              ("qty_each", pa.int64()), ("txn_type", pa.string()), ("txn_at", TS_UTC),
                              ("reference", pa.string())]),
}
NUM = r"^-?\d+(\.\d+)?$"


# --- fixtures and readers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("landing")
    summary = generate_landing(root, "small", AS_OF, seed=7)
    return root, summary


def files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def ts_of(rel: str) -> datetime:
    return datetime.strptime(NAME.match(rel)[4], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def feed_files(root: Path, system: str, feed: str) -> list[str]:
    return sorted((f for f in files_of(root) if f.startswith(f"{system}/{feed}/")), key=ts_of)


def read_csv(root: Path, rel: str) -> pl.DataFrame:
    return pl.read_csv(root / rel, separator="|", infer_schema=False)


def read_jsonl(root: Path, rel: str) -> list[dict]:
    return [json.loads(line) for line in (root / rel).read_text("utf-8").splitlines()]


def is_good(root: Path, rel: str) -> bool:
    """Parses as its format with exactly the spec's columns (not the planted broken files)."""
    m = NAME.match(rel)
    system, feed = m[1], m[2]
    data = (root / rel).read_bytes()
    if not data:
        return False
    try:
        text = data.decode("utf-8") if system != "wms" else ""
    except UnicodeDecodeError:
        return False
    cols = list(FEED_COLUMNS[(system, feed)])
    if system == "erp":
        return text.split("\n", 1)[0] == "|".join(cols)
    if system == "planning":
        try:
            return all(list(json.loads(line)) == cols for line in text.splitlines())
        except json.JSONDecodeError:
            return False
    try:
        return pq.read_schema(root / rel).remove_metadata() == PARQUET[feed]
    except (pa.ArrowException, OSError):
        return False


def current(root: Path, system: str, feed: str) -> str:
    """The newest well-formed file of a snapshot feed (for ERP inventory: with <= 5 % bad rows)."""
    goods = [f for f in feed_files(root, system, feed) if is_good(root, f)]
    if feed == "inventory_balance":
        world = World(root)
        goods = [f for f in goods if erp_bad(world, df := read_csv(root, f))[0] <= 0.05 * df.height]
    return goods[-1]


class World:
    """Masters and mappings read back from the current master files."""

    def __init__(self, root: Path):
        self.items = set(read_csv(root, current(root, "erp", "item_master"))["MATNR"])
        self.plants = set(read_csv(root, current(root, "erp", "location_master"))["WERKS"])
        uom = read_csv(root, current(root, "erp", "uom_conversion"))
        self.factor = {(r["MATNR"], r["MEINH"]): int(r["UMREZ"]) / int(r["UMREN"]) for r in uom.iter_rows(named=True)}
        for m in self.items:
            self.factor[(m, "EA")] = 1.0       # the base unit (every item's MEINS is EA)
        ix = read_csv(root, current(root, "erp", "item_xref"))
        lx = read_csv(root, current(root, "erp", "location_xref"))
        self.item = {(r["SYSTEM"], r["EXTERNAL_CODE"]): r["MATNR"] for r in ix.iter_rows(named=True)}
        self.loc = {(r["SYSTEM"], r["EXTERNAL_CODE"]): r["WERKS"] for r in lx.iter_rows(named=True)}


def item_id(matnr: str) -> str:
    return matnr.lstrip("0")


def conflicting(rows: list[dict], key: tuple[str, ...]) -> set[tuple]:
    seen: dict[tuple, set] = {}
    for r in rows:
        seen.setdefault(tuple(r[k] for k in key), set()).add(tuple(sorted(r.items(), key=lambda kv: kv[0])))
    return {k for k, v in seen.items() if len(v) > 1}


def erp_bad(world: World, df: pl.DataFrame) -> tuple[int, set[tuple]]:
    """(number of bad rows, conflicting keys) of an inventory_balance file."""
    rows = df.unique(maintain_order=True).to_dicts()
    conf = conflicting(rows, ("MATNR", "WERKS", "LGORT"))
    bad = 0
    for r in rows:
        nums = [r["LABST"], r["INSME"], r["SPEME"]]
        ok = (r["MATNR"] is not None and re.match(r"^\d{18}$", r["MATNR"]) and r["MATNR"] in world.items
              and r["WERKS"] in world.plants and all(v is not None and re.match(NUM, v) for v in nums)
              and all(float(v) >= 0 for v in nums) and (r["MATNR"], r["MEINS"]) in world.factor
              and (r["MATNR"], r["WERKS"], r["LGORT"]) not in conf)
        bad += not ok
    return bad, conf


# --- layout --------------------------------------------------------------------------------------
def test_layout_names_and_every_feed(gen):
    root, summary = gen
    found = files_of(root)
    assert found == sorted(summary["files"])
    feeds = set()
    for rel in found:
        m = NAME.match(rel)
        assert m, rel
        system, feed, feed2, _, ext = m.groups()
        assert feed == feed2 and (system, feed) in FEED_COLUMNS and ext == EXT[system], rel
        assert ts_of(rel) <= AS_OF, rel
        feeds.add((system, feed))
    assert feeds == set(FEED_COLUMNS) and len(feeds) == 13
    assert summary["as_of"] == "2026-11-24T09:00:00Z"
    assert sum(summary["rows_per_feed"].values()) == sum(summary["files"].values())


def test_default_as_of_is_now_rounded_down_to_the_hour(tmp_path):
    before = datetime.now(timezone.utc)
    s = generate_landing(tmp_path, "small")
    as_of = datetime.strptime(s["as_of"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert as_of.minute == as_of.second == 0
    assert before - timedelta(hours=1) < as_of <= datetime.now(timezone.utc)
    assert f"wms/stock_snapshot/stock_snapshot_{(as_of - timedelta(hours=1)):%Y%m%dT%H%M%SZ}.parquet" in s["files"]


def test_csv_headers_formats_and_quoting(gen):
    root, _ = gen
    for (system, feed), cols in FEED_COLUMNS.items():
        if system != "erp":
            continue
        goods = [f for f in feed_files(root, system, feed) if is_good(root, f)]
        assert goods, feed
        for rel in goods:
            text = (root / rel).read_text("utf-8")
            assert text.split("\n", 1)[0] == "|".join(cols)
            assert text.endswith("\n") and "\r" not in text
            df = read_csv(root, rel)
            assert df.columns == list(cols) and df.height > 0
    im = (root / current(root, "erp", "item_master")).read_text("utf-8")
    assert re.search(r'\|"[^"\n]* \| [^"\n]*"\|EA\|', im)            # a description with | is quoted
    assert '""' in im and "ü" in im                                  # an embedded quote doubled; UTF-8
    inv = read_csv(root, current(root, "erp", "inventory_balance"))
    assert inv["LABST"].str.contains(r"^-?\d+\.000$").all()           # decimals like 24.000
    assert inv["EXTRACTED_AT"].unique().to_list() == ["20261124060000"]  # T_e = as_of - 3 h
    assert set(inv["MEINS"]) >= {"EA", "CS"}
    po = read_csv(root, feed_files(root, "erp", "purchase_order")[-1])
    assert po["BEDAT"].str.contains(r"^\d{8}$").all() and po["CHANGED_AT"].str.contains(r"^\d{14}$").all()
    assert po["EBELN"].str.contains(r"^\d{10}$").all() and po["EBELP"].str.contains(r"^\d{5}$").all()
    uom = read_csv(root, current(root, "erp", "uom_conversion"))
    assert {"CS", "PL", "PK"} <= set(uom["MEINH"])
    assert uom.filter(pl.col("MEINH") == "PK").select("UMREZ", "UMREN").unique().rows() == [("5", "2")]
    assert set(uom.filter(pl.col("MEINH") == "CS")["UMREZ"]) <= {"12", "24"}
    assert read_csv(root, current(root, "erp", "item_master"))["MATNR"].str.contains(r"^\d{18}$").all()


def test_parquet_schemas_exact(gen):
    root, _ = gen
    for feed, schema in PARQUET.items():
        goods = [f for f in feed_files(root, "wms", feed) if is_good(root, f)]
        assert goods
        for rel in goods:
            assert pq.read_schema(root / rel).remove_metadata() == schema, rel
    snap = pq.read_table(root / current(root, "wms", "stock_snapshot"))
    assert snap.column("snapshot_at").unique().to_pylist() == [AS_OF - timedelta(hours=1)]
    assert snap.column("lot").null_count > 0


def test_jsonl_keys_and_value_formats(gen):
    root, _ = gen
    iso_ts = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    for (system, feed), cols in FEED_COLUMNS.items():
        if system != "planning":
            continue
        goods = [f for f in feed_files(root, system, feed) if is_good(root, f)]
        assert goods, feed
        for rel in goods:
            for obj in read_jsonl(root, rel):
                assert list(obj) == list(cols)
                for k in ("published_at", "as_of", "released_at"):
                    if k in obj:
                        assert iso_ts.match(obj[k]), obj
                for k in ("qty", "on_hand"):
                    if k in obj:
                        assert isinstance(obj[k], float), obj
    pos = read_jsonl(root, current(root, "planning", "inventory_position"))
    assert {o["as_of"] for o in pos} == {"2026-11-24T07:00:00Z"}          # T_p = as_of - 2 h
    assert {o["uom"] for o in pos} == {"EA", "CS"}


def test_forecast_versions_and_weeks(gen):
    root, _ = gen
    old, cur = feed_files(root, "planning", "forecast")
    assert ts_of(cur) == AS_OF - timedelta(days=2) and ts_of(old) == AS_OF - timedelta(days=9)
    rows = read_jsonl(root, cur)
    weeks = sorted({date.fromisoformat(o["week_start"]) for o in rows})
    assert weeks[0] == date(2026, 11, 23)                                # ISO week of as_of's date
    assert len(weeks) == SCALES["small"].forecast_weeks >= 12
    assert all(w.weekday() == 0 for w in weeks)
    assert {o["uom"] for o in rows} == {"EA", "CS"}
    assert len({o["forecast_version"] for o in rows}) == 1
    assert {o["published_at"] for o in rows} == {"2026-11-22T09:00:00Z"}
    old_rows = read_jsonl(root, old)
    assert {o["forecast_version"] for o in old_rows}.isdisjoint({o["forecast_version"] for o in rows})


def test_deterministic_bytes(gen, tmp_path):
    root, summary = gen
    again = generate_landing(tmp_path / "a", "small", AS_OF, seed=7)
    assert again["files"] == summary["files"] and again["problems"] == summary["problems"]
    for rel in summary["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (root / rel).read_bytes(), rel
    other = generate_landing(tmp_path / "b", "small", AS_OF, seed=8)
    differ = [rel for rel in other["files"]
              if rel in summary["files"] and (tmp_path / "b" / rel).read_bytes() != (root / rel).read_bytes()]
    assert len(differ) > 10


# --- planted problems, checked from the files ------------------------------------------------------
def test_row_problems_in_erp_inventory(gen):
    root, _ = gen
    world = World(root)
    rel = current(root, "erp", "inventory_balance")
    assert ts_of(rel) == AS_OF - timedelta(hours=3)
    df = read_csv(root, rel)
    assert "ABC" in df["MATNR"].to_list()                                          # malformed key
    assert any(m not in world.items and re.match(r"^\d{18}$", m) for m in df["MATNR"])  # unknown item
    assert df.filter(pl.col("LABST").str.starts_with("-")).height == 1             # negative stock
    no_conv = [r for r in df.iter_rows(named=True) if (r["MATNR"], r["MEINS"]) not in world.factor
               and r["MATNR"] in world.items]
    assert [r["MEINS"] for r in no_conv] == ["BOX"]                                # unknown unit
    assert df.height - df.unique().height == 1                                     # one exact duplicate
    bad, conf = erp_bad(world, df)
    assert len(conf) == 1                                                          # one conflicting key
    assert bad == 6 and bad / df.unique().height < 0.05


def test_row_problems_in_purchase_orders(gen):
    root, _ = gen
    world = World(root)
    first, second = feed_files(root, "erp", "purchase_order")
    df = read_csv(root, first)
    null_key = df.filter(pl.col("EBELP").is_null())
    bad_num = df.filter(~pl.col("MENGE").str.contains(NUM))
    bad_date = df.filter(pl.col("EINDT").str.to_date("%Y%m%d", strict=False).is_null())
    unknown_plant = df.filter(~pl.col("WERKS").is_in(list(world.plants)))
    assert null_key.height == bad_num.height == bad_date.height == unknown_plant.height == 1
    assert bad_num["MENGE"][0] == "12,500" and unknown_plant["WERKS"][0] == "9999"
    assert 4 / df.height < 0.05
    # nothing else is wrong in either delta: units convert, items are known, flags valid
    for rel in (first, second):
        d = read_csv(root, rel).filter(pl.col("EBELP").is_not_null() & pl.col("MENGE").str.contains(NUM)
                                       & pl.col("WERKS").is_in(list(world.plants)))
        d = d.filter(pl.col("EINDT").str.to_date("%Y%m%d", strict=False).is_not_null())
        assert all((m, u) in world.factor for m, u in d.select("MATNR", "BSTME").iter_rows())
        assert set(d["LOEKZ"].drop_nulls()) <= {"L"} and set(d["ELIKZ"].drop_nulls()) <= {"X"}
        assert (d["CHANGED_AT"] <= ts_of(rel).strftime("%Y%m%d%H%M%S")).all()
    # the newer delta arrived first (modification time), although its name sorts later
    assert (root / second).stat().st_mtime_ns <= (root / first).stat().st_mtime_ns


def test_row_problems_in_wms_and_planning(gen):
    root, _ = gen
    world = World(root)
    snap = pl.from_arrow(pq.read_table(root / current(root, "wms", "stock_snapshot")))
    assert snap.filter(~pl.col("status").is_in(["AVAILABLE", "HOLD", "DAMAGED"]))["status"].to_list() == ["LOST"]
    unmapped = [s for s in snap["sku"] if ("WMS", s) not in world.item]
    assert unmapped == ["SKU-NEW01"]
    key = ["warehouse_code", "sku", "lot", "bin", "status"]
    assert snap.height - snap.unique().height == 1                                 # exact duplicate
    conf = snap.unique().group_by(key).len().filter(pl.col("len") > 1)
    assert conf.height == 1                                                        # conflicting key
    assert (1 + 1 + 2) / snap.unique().height < 0.05
    pos = read_jsonl(root, current(root, "planning", "inventory_position"))
    assert [o["product_code"] for o in pos if ("PLANNING", o["product_code"]) not in world.item] == ["PRD-NEW01"]
    fc = read_jsonl(root, feed_files(root, "planning", "forecast")[-1])
    new = {o["product_code"] for o in fc if ("PLANNING", o["product_code"]) not in world.item}
    assert new == {"PRD-NEW02"}
    assert sum(o["product_code"] == "PRD-NEW02" for o in fc) / len(fc) < 0.05
    # every other planning row maps and has a conversion
    for o in pos + fc:
        if o["product_code"].startswith("PRD-NEW"):
            continue
        assert ("PLANNING", o["site_code"]) in world.loc
        assert (world.item[("PLANNING", o["product_code"])], o["uom"]) in world.factor


def test_overlapping_transaction(gen):
    root, _ = gen
    txn_files = feed_files(root, "wms", "transaction")
    assert len(txn_files) == 8
    assert ts_of(txn_files[0]) == AS_OF - timedelta(hours=7) and ts_of(txn_files[-1]) == AS_OF
    seen: dict[str, list] = {}
    for rel in txn_files:
        t = pl.from_arrow(pq.read_table(root / rel))
        for row in t.iter_rows(named=True):
            seen.setdefault(row["txn_id"], []).append((rel, row))
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert len(twice) == 1
    (entries,) = twice.values()
    assert len(entries) == 2 and entries[0][1] == entries[1][1]
    assert {ts_of(e[0]) for e in entries} == {AS_OF - timedelta(hours=2), AS_OF - timedelta(hours=1)}
    assert AS_OF - timedelta(hours=3) < entries[0][1]["txn_at"] <= AS_OF - timedelta(hours=1)


def test_rejected_files_each_with_an_earlier_good_version(gen):
    root, summary = gen
    rejected = summary["expected"]["rejected_files"]
    kinds = {}
    for rel in rejected:
        data = (root / rel).read_bytes()
        system, feed = NAME.match(rel)[1], NAME.match(rel)[2]
        if not data:
            kinds["empty"] = rel
        elif system == "wms":
            with pytest.raises((pa.ArrowException, OSError)):
                pq.read_table(root / rel)
            kinds["truncated"] = rel
        elif data.startswith(b"<html"):
            kinds["html"] = rel
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                assert "ü" in data.decode("latin-1")
                kinds["latin1"] = rel
                continue
            header = text.split("\n", 1)[0]
            if "|" not in header and "," in header:
                kinds["comma"] = rel
            elif header != "|".join(FEED_COLUMNS[(system, feed)]):
                kinds["columns"] = rel
            else:
                bad, _ = erp_bad(World(root), read_csv(root, rel))
                assert bad / read_csv(root, rel).height > 0.05
                kinds["too_many_bad_rows"] = rel
                # an older extract delivered late: the newer good file stays current
                newer = [f for f in feed_files(root, system, feed) if is_good(root, f) and ts_of(f) > ts_of(rel)]
                assert newer, f"{rel} has no newer good version"
                continue
        goods = [f for f in feed_files(root, system, feed) if f != rel and is_good(root, f) and ts_of(f) < ts_of(rel)]
        assert goods, f"{rel} has no earlier good version"
    assert set(kinds) == {"empty", "truncated", "html", "latin1", "comma", "columns", "too_many_bad_rows"}
    # every other file is well-formed
    assert all(is_good(root, f) for f in files_of(root) if f not in rejected)


def test_stale_location_master(gen):
    root, _ = gen
    files = feed_files(root, "erp", "location_master")
    good = [f for f in files if is_good(root, f)]
    assert AS_OF - ts_of(good[-1]) > timedelta(days=7)                   # stale (limit 7 days)
    assert not is_good(root, files[-1])                                  # the newer one is broken
    fresh = {"inventory_balance": 24, "purchase_order": 24, "item_master": 24 * 7, "forecast": 24 * 8}
    for feed, hours in fresh.items():
        system = "planning" if feed == "forecast" else "erp"
        newest_good = [f for f in feed_files(root, system, feed) if is_good(root, f)][-1]
        assert AS_OF - ts_of(newest_good) <= timedelta(hours=hours), feed


# --- the reconciliation this data is made for ------------------------------------------------------
def test_after_time_alignment_only_planted_keys_drift(gen):
    root, summary = gen
    world = World(root)
    t_e, t_p, t_w = (AS_OF - timedelta(hours=h) for h in (3, 2, 1))
    inv = read_csv(root, current(root, "erp", "inventory_balance"))
    bad, erp_conf = erp_bad(world, inv)
    erp: dict[tuple, float] = {}
    for r in inv.unique().iter_rows(named=True):
        if (r["MATNR"] not in world.items or r["WERKS"] not in world.plants or r["LABST"].startswith("-")
                or (r["MATNR"], r["MEINS"]) not in world.factor or (r["MATNR"], r["WERKS"], r["LGORT"]) in erp_conf):
            continue
        k = (item_id(r["MATNR"]), r["WERKS"])
        q = (float(r["LABST"]) + float(r["INSME"]) + float(r["SPEME"])) * world.factor[(r["MATNR"], r["MEINS"])]
        erp[k] = erp.get(k, 0.0) + q
    unverifiable_erp = {(item_id(m), w) for m, w, _ in erp_conf}

    moves: dict[tuple, list] = {}
    seen = set()
    for rel in feed_files(root, "wms", "transaction"):
        for r in pl.from_arrow(pq.read_table(root / rel)).iter_rows(named=True):
            if r["txn_id"] in seen:
                continue
            seen.add(r["txn_id"])
            k = (item_id(world.item[("WMS", r["sku"])]), world.loc[("WMS", r["warehouse_code"])])
            moves.setdefault(k, []).append((r["txn_at"], r["qty_each"]))

    def moved(k, lo, hi):
        return sum(q for t, q in moves.get(k, []) if lo < t <= hi)

    snap = pl.from_arrow(pq.read_table(root / current(root, "wms", "stock_snapshot"))).unique()
    snap = snap.filter(pl.col("status").is_in(["AVAILABLE", "HOLD", "DAMAGED"]))
    wkey = ["warehouse_code", "sku", "lot", "bin", "status"]
    wconf = snap.group_by(wkey).len().filter(pl.col("len") > 1).drop("len")
    wms: dict[tuple, float] = {}
    unverifiable_wms = set()
    conf_rows = {tuple(r) for r in wconf.rows()}
    for r in snap.iter_rows(named=True):
        if ("WMS", r["sku"]) not in world.item:
            continue
        k = (item_id(world.item[("WMS", r["sku"])]), world.loc[("WMS", r["warehouse_code"])])
        if tuple(r[c] for c in wkey) in conf_rows:
            unverifiable_wms.add(k)
            continue
        wms[k] = wms.get(k, 0) + r["qty_each"]
    plan: dict[tuple, float] = {}
    for o in read_jsonl(root, current(root, "planning", "inventory_position")):
        if ("PLANNING", o["product_code"]) not in world.item:
            continue
        matnr = world.item[("PLANNING", o["product_code"])]
        plan[(item_id(matnr), world.loc[("PLANNING", o["site_code"])])] = o["on_hand"] * world.factor[(matnr, o["uom"])]

    universe = set(erp) | set(wms) | set(plan) | unverifiable_erp | unverifiable_wms
    drift_w, drift_p, matched = set(), set(), set()
    for k in universe:
        e = erp.get(k, 0.0)
        dw = wms.get(k, 0) - moved(k, t_e, t_w) - e
        dp = plan.get(k, 0.0) - moved(k, t_e, t_p) - e
        if k not in unverifiable_erp and k not in unverifiable_wms and abs(dw) > 1e-6:
            drift_w.add(k)
        if k not in unverifiable_erp and abs(dp) > 1e-6:
            drift_p.add(k)
        if abs(dw) <= 1e-6 and abs(dp) <= 1e-6:
            matched.add(k)
    exp = summary["expected"]
    assert drift_w == {tuple(k) for k in exp["drift_wms"]}
    assert drift_p == {tuple(k) for k in exp["drift_planning"]}
    assert unverifiable_erp | unverifiable_wms == {tuple(k) for k in exp["unverifiable"]}
    assert {tuple(k) for k in exp["must_match"]} <= matched
    assert 0 < len(drift_w) + len(drift_p) <= 0.1 * len(universe)
    # stock moved between the snapshots: without alignment many more keys would differ
    raw_diff = {k for k in universe if abs(wms.get(k, 0) - erp.get(k, 0.0)) > 1e-6}
    assert len(raw_diff) > len(drift_w) + 5


def test_purchase_orders_and_recommendations(gen):
    root, summary = gen
    world = World(root)
    run_date, week0 = AS_OF.date(), AS_OF.date() - timedelta(days=AS_OF.weekday())
    lines: dict[tuple, dict] = {}
    for rel in feed_files(root, "erp", "purchase_order"):                # latest version by file <TS>
        for r in read_csv(root, rel).iter_rows(named=True):
            if r["EBELP"] and re.match(NUM, r["MENGE"]) and r["WERKS"] in world.plants and \
                    re.match(r"^\d{8}$", r["EINDT"]) and r["EINDT"][4:6] <= "12":
                lines[(r["EBELN"], r["EBELP"])] = r
    d = lambda s: datetime.strptime(s, "%Y%m%d").date()  # noqa: E731
    open_ = [r for r in lines.values() if not r["LOEKZ"] and not r["ELIKZ"]]
    assert any(r["LOEKZ"] == "L" for r in lines.values()) and any(r["ELIKZ"] == "X" for r in lines.values())
    assert any(0 < float(r["WEMNG"]) < float(r["MENGE"]) for r in open_)                     # partly received
    late = [r for r in open_ if d(r["EINDT"]) < week0]
    assert late and any((run_date - d(r["EINDT"])).days > 14 for r in late)                  # past due
    assert any(not r["CONF_DATE"] and (run_date - d(r["BEDAT"])).days > 3 for r in open_)     # unconfirmed
    assert any(not r["CONF_DATE"] and (run_date - d(r["BEDAT"])).days <= 3 for r in open_)    # too recent
    assert {r["BSTME"] for r in lines.values()} == {"EA", "CS", "PK"}

    recs: dict[str, dict] = {}
    files = feed_files(root, "planning", "planned_order")
    assert [AS_OF - ts_of(f) for f in files] == [timedelta(days=5), timedelta(days=3)]
    for rel in files:
        for o in read_jsonl(root, rel):
            recs[o["recommendation_id"]] = o
    assert {o["status"] for o in recs.values()} == {"RELEASED", "CANCELLED"}
    refs: dict[str, float] = {}
    for r in lines.values():
        if r["PLAN_REF"] and r["LOEKZ"] != "L":
            refs[r["PLAN_REF"]] = refs.get(r["PLAN_REF"], 0.0) + float(r["MENGE"]) * world.factor[(r["MATNR"], r["BSTME"])]
    assert set(refs) <= set(recs)
    unconverted, mismatch = [], []
    for rid, o in recs.items():
        released = datetime.strptime(o["released_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        if o["status"] != "RELEASED" or AS_OF - released < timedelta(days=2):
            continue
        base = o["qty"] * world.factor[(world.item[("PLANNING", o["product_code"])], o["uom"])]
        if rid not in refs:
            unconverted.append(rid)
        elif abs(refs[rid] - base) > 1e-6:
            mismatch.append(rid)
    exp = summary["expected"]
    assert sorted(unconverted) == exp["unconverted_rec"] and unconverted
    assert sorted(mismatch) == exp["rec_qty_mismatch"] and mismatch
    assert any(r["EBELP"] == "00020" and r["PLAN_REF"] for r in lines.values())            # split over lines


def test_correction_under_the_same_name(gen, tmp_path):
    original, _ = gen
    root = tmp_path / "c"
    s = generate_landing(root, "small", AS_OF, seed=7)
    rel = deliver_correction(root, s)
    assert rel == current(root, "erp", "inventory_balance")
    assert (root / rel).read_bytes() != (original / rel).read_bytes()
    bad, conf = erp_bad(World(root), read_csv(root, rel))
    assert conf == set() and bad == 4                  # the conflicting pair is resolved, the rest stays
    assert read_csv(root, rel).height == read_csv(original, rel).height - 1
    assert all((root / f).read_bytes() == (original / f).read_bytes() for f in s["files"] if f != rel)
    assert deliver_correction(root, s) == rel and read_csv(root, rel).height == read_csv(original, rel).height - 1


def test_summary_lists_every_planted_problem(gen):
    _, summary = gen
    ids = {p["id"] for p in summary["problems"]}
    assert ids >= {
        "malformed_key", "unknown_item", "negative_quantity", "unknown_uom", "conflicting_duplicate_erp",
        "exact_duplicate_erp", "null_key", "bad_number", "bad_date", "unknown_location", "invalid_status",
        "unmapped_wms_sku", "unmapped_planning_product", "unmapped_planning_forecast_product",
        "conflicting_duplicate_wms", "exact_duplicate_wms", "overlapping_transaction", "wrong_delimiter",
        "not_utf8", "empty_file", "truncated_parquet", "wrong_columns", "html_in_jsonl", "too_many_bad_rows",
        "stale_feed", "out_of_order",
    }
    for p in summary["problems"]:
        assert p["file"] in summary["files"] and p["expect"], p


def test_medium_scale_is_fast(tmp_path):
    started = time.perf_counter()
    s = generate_landing(tmp_path, "medium", AS_OF, seed=7)
    elapsed = time.perf_counter() - started
    assert s["item_locations"] == 100_000 and s["rows_per_feed"]["erp/item_location"] >= 100_000
    assert elapsed < 15, elapsed
