"""Smoke test of the benchmark harness (benchmarks/run.py) at scale small.

Runs the whole harness end to end — generation, plain and instrumented full and
incremental runs, the DuckDB floors, the partitioned variants, the report — without
datacompy and without waiting for a quiet machine, and checks that the report has every
run, every asset of the graph with every figure, every ratio row and every partitioned
variant. It does not check the targets: timings at scale
small say nothing about them (the real figures are in benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.readme_tables import README, num, rows, section

ROOT = Path(__file__).resolve().parents[2]

RATIOS = [
    "drift step / drift floor",
    "full run / run floor",
    "full run peak RSS, GiB",
    "datacompy-pandas / drift step (compare only)",
    "datacompy-polars / drift step (compare only)",
    "incremental / full",
]


def test_benchmark_harness_small(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scale", "small", "--skip-datacompy",
         "--data-dir", str(tmp_path / "small"), "--out-dir", str(tmp_path), "--max-wait", "0",
         "--skip-window-floor", "--txn-rows", "50", "--partitioned"],
        capture_output=True, text=True, timeout=230,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report-small.json").read_text())
    md = (tmp_path / "report-small.md").read_text()

    for run in ("full", "incremental", "full_instrumented", "incremental_instrumented"):
        r = report["runs"][run]
        assert r["returncode"] == 0
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mib"] > 0
        assert r["machine"]["load1"] is not None and r["others_cores_during"] is not None
        # each run started with the data directory read into the page cache (the full
        # runs' data directory holds at least the landing), and its disk wait was measured
        assert r["machine"]["warmed"]["bytes"] > 0 and r["iowait_s"] >= 0
    for floor in ("drift", "drift_lake", "run"):
        assert report["floors"][floor]["returncode"] == 0 and report["floors"][floor]["result"]
    # a floor reads the current landing files it is given, not the whole data directory
    spec = json.loads((tmp_path / "logs-small" / "current_files.json").read_text())
    current = sum(Path(f).stat().st_size for files in spec["files"].values() for f in files)
    assert report["floors"]["run"]["machine"]["warmed"]["bytes"] == current

    sys.path.insert(0, str(ROOT))
    from pipelines.graph import ALL_ASSETS

    keys = {"/".join(k.path) for ad in ALL_ASSETS for k in ad.keys}
    for run in ("full_instrumented", "incremental_instrumented"):
        steps = report["runs"][run]["steps"]
        assert steps["rows_error"] is None
        assets = {a["asset"]: a for a in steps["assets"]}
        assert keys <= set(assets), keys - set(assets)
        for name in keys:
            a = assets[name]
            for field in ("wall_s", "cpu_s", "peak_rss_mib", "rows_in"):
                assert a.get(field) is not None, (run, name, field)
            # an asset that only writes files may have no row count: then the note says so
            assert a.get("rows_out") is not None or a.get("rows_note"), (run, name)
            assert f"| {name} |" in md
    # the incremental ingested exactly the appended transaction file
    inc = {a["asset"]: a for a in report["runs"]["incremental_instrumented"]["steps"]["assets"]}
    assert inc["ingest/wms_transaction"]["rows_in"] == 50

    figures = {r["figure"]: r for r in report["ratios"]}
    for name in RATIOS:
        assert name in figures, name
        assert f"| {name} |" in md
        if "datacompy" not in name:
            assert figures[name]["value"] is not None, name
            assert figures[name]["target"], name
    # this run's row for benchmarks/README.md's "Every measured run": the table's columns,
    # the figures of the ratio rows, in the form the summary test reads
    header = rows(section(README.read_text(encoding="utf-8"), "Every measured run"))[0]
    row = next(r for r in rows(md) if r[0] == f"`{report['code']['commit'][:7]}`")
    assert len(row) == len(header), (row, header)
    for cell, name, scale in ((2, "full run, s (distsync run, wall)", 1),
                              (3, "run floor, s (DuckDB script, every current file -> both marts, wide projection)", 1),
                              (4, "full run / run floor", 1), (5, "drift step / drift floor", 1),
                              (6, "incremental run, s (distsync run, wall)", 1),
                              (7, "incremental / full", 100), (8, "full run peak RSS, GiB", 1)):
        assert abs(num(row[cell]) - figures[name]["value"] * scale) < 0.051, (row, name)
    # the run floor's own share of the pipeline, for information
    assert figures["ingest to marts / run floor (info)"]["value"] > 0
    # the incremental without the two steps that follow the run clock (both took time), for information
    process = {run: report["runs"][run]["steps"]["process"]["wall_s"]
               for run in ("full_instrumented", "incremental_instrumented")}
    without = figures["incremental without the exceptions and reports steps / full, instrumented (info)"]["value"]
    assert 0 < without < process["incremental_instrumented"] / process["full_instrumented"]
    # the hourly job the schedule runs, on a second appended file, for information
    hourly = report["runs"]["hourly_job"]
    assert hourly["returncode"] == 0 and hourly["result"]["success"], hourly.get("stderr")
    assert report["hourly_as_of"] > report["incremental_as_of"]
    assert figures["hourly job / full (info)"]["value"] > 0
    # splitting by location group: every variant ran, the Dagster ones' step processes
    # included (they import partitioned.py as a module), and the groups add up to the whole
    partitioned = report["partitioned"]
    assert [v["failed"] for v in partitioned["variants"]] == [[]] * 5, partitioned
    assert partitioned["consistent"] is True
    assert "## Partitioned by location group" in md
    # the landing folder is the generator's again: both appended files are gone
    landing = tmp_path / "small" / "landing"
    for added in (report["added"], report["hourly_added"]):
        assert not (landing / added["file"]).exists(), added
    assert not (landing / ".distsync-bench.json").exists()
    assert elapsed < 230
