"""Planner exception reports (§7): content, escaping, CSV, new/resolved, rendering."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import tempfile
import zlib
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from reconciliation.reports import describe, planner_file_names, write_reports
from tests.delivery.conftest import AS_OF, SCRIPT

PREVIOUS = AS_OF - timedelta(days=1)


class Page(HTMLParser):
    """Tags, text and links of a page (stdlib parser: no extra dependency)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.links: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("href", "src") and v]
        if tag not in ("wbr", "b", "span", "a"):  # inline tags do not separate words
            self.text.append(" ")

    def handle_endtag(self, tag):
        if tag not in ("wbr", "b", "span", "a"):
            self.text.append(" ")

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join("".join(self.text).split())


def add_report_data(w) -> None:
    """Exceptions of several types and ages, alignment rows and KPIs for the world."""
    old = AS_OF - timedelta(days=9)
    w.exception("PROJECTED_SHORTAGE", "high", item_id="104233", location_id="1010", first_seen=old, age_days=9,
                details={"first_shortage_week": 1, "shortage_qty": 40, "on_hand": 12, "safety_stock": 50,
                         "lead_time_weeks": 3})
    w.exception("LATE_PO", "medium", item_id="104233", location_id="1010", reference="4500000001/00010",
                details={"ebeln": "4500000001", "ebelp": "00010", "supplier": "ACME", "delivery_date": "2026-11-16",
                         "days_late": 8, "open_qty": 30}, first_seen=AS_OF - timedelta(hours=5))
    w.exception("EXCESS_SUPPLY", "low", item_id="104235", location_id="1020", planner="P02", first_seen=old,
                age_days=9, details={"excess_qty": 120, "projected_end": 400, "excess_threshold": 280})
    w.exception("UNMAPPED_CODE", "medium", reference=f"planning/item/{SCRIPT}", planner="UNASSIGNED",
                details={"system": "planning", "code_kind": "item", "code": SCRIPT, "rows": 3})
    w.exception("STALE_FEED", "high", reference="wms/transaction", planner="UNASSIGNED",
                details={"system": "wms", "feed": "transaction", "newest_file": "wms/transaction/t.parquet",
                         "age_hours": 30.2, "freshness_limit_hours": 6})
    w.exception("UNCONFIRMED_PO", "low", item_id="104234", location_id="1010", reference="4500000002/00020",
                planner="A/B", details={"ebeln": "4500000002", "ebelp": "00020", "supplier": "=HYPERLINK(1)",
                                        "order_date": "2026-11-16", "days_since_order": 8})
    # resolved since the previous report, and resolved before it
    w.exception("LATE_PO", "medium", item_id="104234", location_id="1010", reference="4500000003/00010",
                status="resolved", resolved_at=AS_OF, first_seen=old, age_days=9)
    w.exception("LATE_PO", "medium", item_id="104234", location_id="1010", reference="4500000004/00010",
                status="resolved", resolved_at=PREVIOUS - timedelta(days=1), first_seen=old, age_days=2)
    for item, loc, planner, status in (("104233", "1010", "P01", "shortage_in_lead_time"),
                                       ("104234", "1010", "P01", "aligned"), ("104236", "1010", "P01", "aligned"),
                                       ("104235", "1020", "P02", "excess")):
        w.insert("marts.forecast_order_alignment", item_id=item, location_id=loc, planner_code=planner,
                 demand_horizon=100.0, status=status, run_as_of=AS_OF)
    w.insert("marts.kpis", run_as_of=PREVIOUS, kpi="alignment_rate", value=0.4)
    w.insert("marts.kpis", run_as_of=AS_OF, kpi="alignment_rate", value=0.5)


@pytest.fixture
def report(world, tmp_path):
    add_report_data(world)
    out = write_reports(world.con, tmp_path / "reports", AS_OF, previous_as_of=PREVIOUS)
    return world, out, tmp_path / "reports"


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_per_planner_and_index(report):
    _, out, root = report
    day = root / "2026-11-24"
    assert out["index"] == str(day / "index.html")
    assert set(out["planners"]) == {"P01", "P02", "A/B", "UNASSIGNED"}
    stems = planner_file_names(out["planners"])
    for code, paths in out["planners"].items():
        assert paths["html"] == str(day / f"{stems[code]}.html") and Path(paths["csv"]).exists()
    index = Page(Path(out["index"]).read_text())
    assert {f"{stems[c]}.html" for c in out["planners"]} <= set(index.links)
    assert not [x for x in index.links if x.startswith(("http:", "https:", "//"))]  # nothing from a CDN
    assert "alignment rate" in index.all_text and "50.0%" in index.all_text


def test_script_in_an_extract_value_renders_as_text(report):
    _, out, _ = report
    for path in (out["planners"]["UNASSIGNED"]["html"], out["planners"]["P02"]["html"], out["index"]):
        assert "script" not in Page(Path(path).read_text()).tags, path  # no element was injected
    p02 = Path(out["planners"]["P02"]["html"]).read_text()
    assert "Bracket &lt;script&gt;alert(1)&lt;/script&gt;" in p02  # the item description, escaped
    assert f"Bracket {SCRIPT}" in Page(p02).all_text  # and shown as the text it is
    unassigned = Page(Path(out["planners"]["UNASSIGNED"]["html"]).read_text()).all_text
    assert f"PLANNING product code {SCRIPT} is not in the cross-reference" in unassigned
    assert f"planning/item/{SCRIPT}" in unassigned


def test_planner_csv_matches_open_exceptions(report):
    world, out, _ = report
    for planner, paths in out["planners"].items():
        rows = read_csv(paths["csv"])
        expected = world.con.execute(
            "SELECT exception_id FROM marts.exceptions WHERE status = 'open' AND planner_code = ?", [planner]
        ).fetchall()
        assert sorted(r["Exception id"] for r in rows) == sorted(e[0] for e in expected), planner
        assert paths["open"] == len(rows)
    p01 = read_csv(out["planners"]["P01"]["csv"])
    assert list(p01[0]) == ["Severity", "Problem", "Problem code", "Item", "Item description", "Plant",
                            "Reference", "What we found", "First seen (UTC)", "Age (days)", "Exception id"]
    # severity first, then the oldest
    assert [(r["Severity"], r["Problem code"]) for r in p01] == [
        ("high", "PROJECTED_SHORTAGE"), ("medium", "LATE_PO"), ("low", "INVENTORY_DRIFT")]
    assert p01[0]["What we found"].startswith("Stock falls below safety stock (50 EA) next week (week of 2026-11-30)")
    # a cell a spreadsheet would run as a formula is defused
    ab = read_csv(out["planners"]["A/B"]["csv"])
    assert "supplier =HYPERLINK(1)" in ab[0]["What we found"]
    assert all(not v.startswith(("=", "+", "@")) for r in ab for v in r.values())


def test_new_and_resolved_since_the_previous_report(report):
    _, out, _ = report
    assert out["previous_as_of"] == "2026-11-23T09:00:00Z"
    assert out["planners"]["P01"]["new"] == 2  # the late PO and the drift (first seen at AS_OF)
    assert out["planners"]["P01"]["resolved"] == 1  # resolved at AS_OF; the older one is not listed
    page = Page(Path(out["planners"]["P01"]["html"]).read_text()).all_text
    assert "4500000003/00010" in page and "4500000004/00010" not in page


def test_previous_report_is_remembered(world, tmp_path):
    add_report_data(world)
    first = write_reports(world.con, tmp_path, PREVIOUS)
    assert first["previous_as_of"] is None
    second = write_reports(world.con, tmp_path, AS_OF)
    assert second["previous_as_of"] == "2026-11-23T09:00:00Z"
    # writing the same report again compares with the one before, not with itself
    assert write_reports(world.con, tmp_path, AS_OF)["previous_as_of"] == "2026-11-23T09:00:00Z"
    state = json.loads((tmp_path / "last_report.json").read_text())
    assert state["reports"] == ["2026-11-23T09:00:00Z", "2026-11-24T09:00:00Z"]
    # without the file, the previous run in marts.kpis
    (tmp_path / "last_report.json").unlink()
    assert write_reports(world.con, tmp_path, AS_OF)["previous_as_of"] == "2026-11-23T09:00:00Z"


def test_drift_by_location_and_alignment_rate(report):
    _, out, _ = report
    p01 = Page(Path(out["planners"]["P01"]["html"]).read_text()).all_text
    assert "Alignment rate: 66.7% — 2 of the 3" in p01
    index = Page(Path(out["index"]).read_text()).all_text
    assert "1010 Hamburg 3 1 0 0 10.00" in index  # 3 compared, 1 WMS mismatch worth 10.00


def test_planner_codes_become_safe_unique_file_names():
    stems = planner_file_names(["P01", "A/B", "A_B", "../../etc", "index", "Ünïcode", "p01"])
    assert stems["P01"] == "P01"
    assert all(set(s) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") for s in stems.values())
    assert len({s.lower() for s in stems.values()}) == len(stems)
    assert stems["index"] != "index" and "/" not in stems["../../etc"]


def _report_files(day: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(day.iterdir())}


def test_descriptions_are_cached_between_reports_and_give_the_same_files(world, tmp_path, monkeypatch):
    from reconciliation import reports

    add_report_data(world)
    root = tmp_path / "reports"
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    first = _report_files(root / "2026-11-24")
    cache = root / ".cache" / "descriptions.parquet"
    assert cache.exists()
    calls: list[str] = []
    real = reports.describe
    monkeypatch.setattr(reports, "describe", lambda t, *a, **k: calls.append(t) or real(t, *a, **k))
    # the same report again: every description comes from the cache, the files are the same
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert calls == [] and _report_files(root / "2026-11-24") == first
    # one exception with new details: only it is described again
    world.con.execute("""UPDATE marts.exceptions SET details = '{"excess_qty": 121, "projected_end": 400}'
                         WHERE exception_type = 'EXCESS_SUPPLY'""")
    held = cache.read_bytes()
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert calls == ["EXCESS_SUPPLY"]
    assert "121 EA more than needed" in Path(root / "2026-11-24" / "P02.csv").read_text(encoding="utf-8-sig")
    # a few new sentences do not rewrite the cache: the next report describes them again
    assert cache.read_bytes() == held
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert calls == ["EXCESS_SUPPLY", "EXCESS_SUPPLY"]
    # many do: the cache then holds them
    monkeypatch.setattr(reports, "_CACHE_REWRITE_MIN_MISSES", 1)
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert cache.read_bytes() != held
    calls.clear()
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert calls == []
    # another week: week phrases change, so nothing cached is used
    calls.clear()
    write_reports(world.con, root, AS_OF + timedelta(days=7), previous_as_of=AS_OF)
    assert set(calls) == {r[0] for r in world.con.execute(
        "SELECT exception_type FROM marts.exceptions WHERE status = 'open'").fetchall()}
    # a cache that cannot be read is only a slower report
    cache.write_bytes(b"not parquet")
    calls.clear()
    write_reports(world.con, root, AS_OF, previous_as_of=PREVIOUS)
    assert calls and _report_files(root / "2026-11-24")["P01.csv"] == first["P01.csv"]


def test_a_cached_description_is_used_only_for_exactly_its_details(world, tmp_path, monkeypatch):
    """The cache is matched on a hash of (type, details, unit) and confirmed on the values:
    even when every key hashes alike, each exception gets its own sentence."""
    from reconciliation import reports

    add_report_data(world)
    first, again = tmp_path / "first", tmp_path / "again"
    write_reports(world.con, first, AS_OF, previous_as_of=PREVIOUS)
    write_reports(world.con, again, AS_OF, previous_as_of=PREVIOUS)  # fills again/.cache
    monkeypatch.setattr(reports, "_description_key", lambda frame: pl.Series([0] * frame.height, dtype=pl.UInt64))
    write_reports(world.con, again, AS_OF, previous_as_of=PREVIOUS)
    assert _report_files(again / "2026-11-24") == _report_files(first / "2026-11-24")


def test_a_planner_csv_whose_rows_did_not_change_is_left_alone(world, tmp_path):
    add_report_data(world)
    out = write_reports(world.con, tmp_path, AS_OF, previous_as_of=PREVIOUS)
    p01, p02 = Path(out["planners"]["P01"]["csv"]), Path(out["planners"]["P02"]["csv"])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (p01, p02)}
    # an hour later, same rows: the CSV files are not written again (the pages are)
    later = write_reports(world.con, tmp_path, AS_OF + timedelta(hours=1), previous_as_of=AS_OF)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (p01, p02)} == before
    assert "data as of 2026-11-24 10:00 UTC" in Path(later["planners"]["P01"]["html"]).read_text()
    # one planner's rows change: only that file is written, with the new rows
    world.con.execute("UPDATE marts.exceptions SET age_days = 10 WHERE exception_type = 'EXCESS_SUPPLY'")
    write_reports(world.con, tmp_path, AS_OF + timedelta(hours=2), previous_as_of=AS_OF)
    assert p01.stat().st_mtime_ns == before[p01][0]
    assert read_csv(str(p02))[0]["Age (days)"] == "10"
    # a file someone edited or emptied is written again
    p01.write_bytes(b"")
    write_reports(world.con, tmp_path, AS_OF + timedelta(hours=3), previous_as_of=AS_OF)
    assert p01.read_bytes() == before[p01][1]


def test_rows_with_the_same_sort_keys_are_listed_by_exception_id(world, tmp_path):
    """Ties (same severity, age, type, item, plant, reference) come in one order every time."""
    for n in range(5):
        world.exception("CONTRACT_VIOLATION", "medium", reference="erp/x.csv", planner="UNASSIGNED",
                        details={"rule": f"r{n}", "rows": 1})
    out = write_reports(world.con, tmp_path, AS_OF, previous_as_of=PREVIOUS)
    ids = [r["Exception id"] for r in read_csv(out["planners"]["UNASSIGNED"]["csv"])]
    assert ids == sorted(ids) and len(ids) == 5


def test_describe_falls_back_to_the_details():
    assert describe("SOMETHING_NEW", '{"a_b": 1}') == "a b: 1"
    assert describe("LATE_PO", "not json") == "not json"


def _png_size_and_variety(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the first rows) of a PNG, stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompressobj().decompress(idat, 4 * width * 200)
    return width, height, len(set(raw))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out, _ = report
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--screenshot={shot}", "--window-size=1280,1600",
             Path(out["planners"]["P01"]["html"]).as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    width, height, variety = _png_size_and_variety(shot)
    assert (width, height) == (1280, 1600)
    assert variety > 10  # text and colours, not a blank page


def test_missing_details_never_read_none():
    text = describe("LATE_PO", {"ebeln": "4500000001", "ebelp": "00010", "delivery_date": "2026-11-16"}, "EA")
    assert text == "PO line 4500000001/00010 was due 2026-11-16."
    assert describe("LATE_PO", {}) == "No further details recorded."
    assert "None" not in describe("STALE_FEED", {"system": "wms", "feed": "transaction", "age_hours": None})


def test_breakable_escapes_and_adds_only_line_breaks():
    from reconciliation.reports import breakable

    assert str(breakable("erp/<b>_x")) == "erp/<wbr>&lt;b&gt;_<wbr>x"
    assert str(breakable("due 2026-11-18.")) == 'due <span class="nowrap">2026-11-18</span>.'



def test_long_lists_are_cut_on_the_page_not_in_the_csv(world, tmp_path):
    add_report_data(world)
    out = write_reports(world.con, tmp_path, AS_OF, previous_as_of=PREVIOUS, max_rows=1)
    page = Page(Path(out["planners"]["P01"]["html"]).read_text()).all_text
    assert "Showing the first 1 of 3; the CSV file has all of them." in page
    assert len(read_csv(out["planners"]["P01"]["csv"])) == 3
