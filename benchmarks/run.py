#!/usr/bin/env python3
"""distsync benchmark: one command, every figure of issue 5 (see benchmarks/README.md).

    python benchmarks/run.py [--scale large] [--data-dir benchmarks/out/large] [--skip-datacompy]
                             [--profile] [--partitioned] [--code worktree|HEAD|<rev>]

1. generates ``--scale`` with the project's generator (``distsync demo --no-run``) unless
   the data dir's landing folder already holds that scale (``.distsync-demo.json``);
2. full run: ``distsync run`` in a child process (wall, CPU, peak RSS from the kernel),
   then the same CLI again under ``instrumented.py`` for the per-asset figures;
3. appends one WMS transaction file (``<TS>`` one hour after the newest) and runs the
   incremental, both ways again;
4. floors: hand-written DuckDB scripts (``floors.py``) and datacompy 1.1 with its pandas
   and polars backends (in ``benchmarks/.venv-datacompy``, created when missing);
5. prints the per-asset tables and the ratios against the targets, and writes
   ``benchmarks/out/report-<scale>.json`` and ``.md``.

Every measured child starts with the files it reads in the page cache (read once,
untimed: the data directory for the pipeline's runs, the current landing files for the
floors and datacompy, the lake for the lake floor) and when the others on the machine
use less than ``--quiet-cores`` cores (waiting at most ``--max-wait`` s); the load
before, the others' CPU and the disk wait during each run are in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
DC_VENV = HERE / ".venv-datacompy"
DC_REQUIREMENTS = ["datacompy==1.1.0", "polars<1.45", "pandas", "pyarrow"]
BENCH_MARKER = ".distsync-bench.json"
GIB = 1024.0

TARGETS = {
    "drift_vs_floor": 1.3,       # drift step <= 1.3 x drift floor
    "full_vs_floor": 2.0,        # full run <= 2 x run floor
    "peak_gib": 6.0,             # full run peak RSS <= 6 GiB
    "dc_pandas": 5.0,            # datacompy-pandas / drift step >= 5
    "dc_polars": 1.5,            # datacompy-polars / drift step >= 1.5
    "incr_share": 0.05,          # incremental <= 5 % of full
}


def _reexec_in_project_venv() -> None:
    try:
        import duckdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        venv = REPO / ".venv" / "bin" / "python"
        if venv.exists() and Path(sys.executable).resolve() != venv.resolve():
            os.execv(str(venv), [str(venv), *sys.argv])
        raise


_reexec_in_project_venv()
sys.path.insert(0, str(HERE))
import common  # noqa: E402

import duckdb  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


# --- code under test ------------------------------------------------------------------------
def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def code_dir(rev: str) -> tuple[Path, dict]:
    """The packages to measure: the work tree, or ``git archive <rev>`` (read-only on git)."""
    packages = ["pipelines", "assets", "contracts", "reconciliation"]
    if rev == "worktree":
        try:
            sha = git("rev-parse", "HEAD")
            dirty = git("status", "--porcelain", "--", *packages)
        except (subprocess.CalledProcessError, FileNotFoundError):
            sha, dirty = "unknown", ""
        return REPO, {"code": "worktree", "commit": sha, "uncommitted_changes": dirty.splitlines()}
    sha = git("rev-parse", rev)
    target = OUT / "code" / sha[:12]
    if not (target / "pipelines").exists():
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha, *packages], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target, {"code": rev, "commit": sha, "uncommitted_changes": []}


def child_env(code: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTSYNC_") and k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = str(code)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- landing ---------------------------------------------------------------------------------
def demo_marker(data_dir: Path) -> dict | None:
    marker = data_dir / "landing" / ".distsync-demo.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def ensure_landing(data_dir: Path, scale: str, py: str, env: dict, logs: Path) -> dict:
    info = demo_marker(data_dir)
    if info is not None:
        if info.get("scale") != scale:
            raise SystemExit(f"{data_dir}/landing holds a {info.get('scale')} demo, not {scale}: "
                             "choose another --data-dir")
        log(f"landing: re-using the {scale} demo in {data_dir / 'landing'} (as_of {info['as_of']})")
        return {**info, "generated": False}
    if (data_dir / "landing").exists() and any((data_dir / "landing").iterdir()):
        raise SystemExit(f"{data_dir}/landing has files that are not a distsync demo")
    log(f"landing: generating --scale {scale} into {data_dir / 'landing'} ...")
    r = common.run_measured([py, "-m", "pipelines.cli", "demo", "--scale", scale, "--no-run",
                             "--data-dir", str(data_dir)], log_prefix=logs / "generate", env=env)
    if r["returncode"] != 0:
        raise SystemExit(f"generation failed: {common.tail(r['stderr'])}")
    info = demo_marker(data_dir)
    log(f"  generated in {r['wall_s']:.1f} s")
    return {**info, "generated": True, "generate": r}


def remove_added_files(landing: Path) -> None:
    marker = landing / BENCH_MARKER
    if not marker.exists():
        return
    for rel in json.loads(marker.read_text()).get("added", []):
        (landing / rel).unlink(missing_ok=True)
    marker.unlink()


def _ts(name: str) -> datetime:
    stamp = name.rsplit("_", 1)[1].split(".")[0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def add_transaction_file(landing: Path, rows: int, seed: int = 5) -> dict:
    """One new WMS transaction file in the exact schema of the newest one, ``<TS>`` one hour
    after it, ``rows`` movements with new ``txn_id``s on codes the newest file uses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = landing / "wms" / "transaction"
    files = sorted(f for f in folder.glob("transaction_*.parquet"))
    newest = files[-1]
    prev_ts = _ts(newest.name)
    new_ts = prev_ts + timedelta(hours=1)
    schema = pq.read_schema(newest)
    codes = pq.read_table(newest, columns=["warehouse_code", "sku"]).to_pylist()
    rnd = random.Random(seed)
    kinds = [("RECEIPT", 1), ("SHIPMENT", -1), ("ADJUSTMENT", 0), ("TRANSFER_IN", 1), ("TRANSFER_OUT", -1)]
    data: dict[str, list] = {c: [] for c in schema.names}
    for i in range(rows):
        code = codes[rnd.randrange(len(codes))]
        kind, sign = kinds[rnd.randrange(len(kinds))]
        qty = rnd.randint(1, 40) * (sign or rnd.choice((1, -1)))
        data["txn_id"].append(f"TB{new_ts:%Y%m%d%H}{i:06d}")
        data["warehouse_code"].append(code["warehouse_code"])
        data["sku"].append(code["sku"])
        data["qty_each"].append(qty)
        data["txn_type"].append(kind)
        data["txn_at"].append(prev_ts + timedelta(seconds=rnd.randint(1, 3600)))
        data["reference"].append(None)
    table = pa.Table.from_pydict(data, schema=schema.remove_metadata())
    name = f"transaction_{new_ts:%Y%m%dT%H%M%SZ}.parquet"
    tmp = folder / f".{name}.part"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, folder / name)
    rel = f"wms/transaction/{name}"
    marker = landing / BENCH_MARKER
    added = json.loads(marker.read_text()).get("added", []) if marker.exists() else []
    marker.write_text(json.dumps({"added": [*added, rel]}))
    return {"file": rel, "rows": rows, "ts": new_ts.isoformat(), "previous_newest": newest.name}


def run_as_of_with(as_of: str, added: dict) -> str:
    """The ``as_of`` of a run that uses an appended file: the later of the previous run's
    ``as_of`` and the file's ``<TS>`` (a file dated after a run's ``as_of`` is never current)."""
    later = max(datetime.fromisoformat(as_of.replace("Z", "+00:00")), datetime.fromisoformat(added["ts"]))
    return later.isoformat().replace("+00:00", "Z")


def clean_outputs(data_dir: Path) -> None:
    """Remove every pipeline output of a benchmark data dir (everything but ``landing/``)."""
    if demo_marker(data_dir) is None or (data_dir / ".git").exists() or data_dir.resolve() == REPO:
        raise SystemExit(f"refusing to clean {data_dir}: not a benchmark data dir")
    for entry in data_dir.iterdir():
        if entry.name == "landing":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# --- measured runs ---------------------------------------------------------------------------
class Runner:
    def __init__(self, args, py: str, env: dict, logs: Path, data_dir: Path) -> None:
        self.args, self.py, self.env, self.logs, self.data_dir = args, py, env, logs, data_dir
        # the code under test's own process entry, not the venv's console script: the
        # script names the entry of the code installed (``entry`` since 4795751), which an
        # older revision on PYTHONPATH (--code <rev>) may not have
        self.cli = [py, "-m", "pipelines.cli"]

    def ready(self, reads: list[Path] | None = None) -> dict:
        """Before a measured run: the files it reads in the page cache (by default the
        whole data directory: landing, lake, warehouse, outbox, as a pipeline run reads
        them), and a quiet machine."""
        return common.ready_to_measure(log, [self.data_dir] if reads is None else reads,
                                       max_wait=self.args.max_wait, limit_cores=self.args.quiet_cores)

    def plain(self, name: str, cli_args: list[str]) -> dict:
        state = self.ready()
        log(f"[{name}] distsync {' '.join(cli_args)}  (load {state['load1']}, others {state['others_cores_before']})")
        r = common.run_measured([*self.cli, *cli_args], log_prefix=self.logs / name, env=self.env)
        r["machine"] = state
        self._check(name, r)
        log(f"  {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak {r['peak_rss_mib']:.0f} MiB, "
            f"others used {r['others_cores_during']} cores meanwhile")
        return r

    def instrumented(self, name: str, cli_args: list[str], profile: str | None = None) -> dict:
        state = self.ready()
        out = self.logs / f"{name}.steps.json"
        cmd = [self.py, str(HERE / "instrumented.py"), "--out", str(out)]
        if profile:
            cmd += ["--profile", profile]
        log(f"[{name}] instrumented distsync {' '.join(cli_args)}  (load {state['load1']}, "
            f"others {state['others_cores_before']})")
        r = common.run_measured([*cmd, "--", *cli_args], log_prefix=self.logs / name, env=self.env)
        r["machine"] = state
        self._check(name, r)
        steps = common.read_json(out)
        r["steps"] = steps
        if Path(steps["code_path"]) != Path(self.env["PYTHONPATH"]).resolve():
            raise SystemExit(f"{name} ran the code in {steps['code_path']}, not {self.env['PYTHONPATH']}")
        # a peak-RSS reset lowers the child's ru_maxrss: the true peak is the child's own max
        r["peak_rss_mib"] = max(r["peak_rss_mib"], steps["process"]["peak_rss_mib"])
        log(f"  {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak {r['peak_rss_mib']:.0f} MiB "
            f"({len(steps['assets'])} assets), others used {r['others_cores_during']} cores meanwhile")
        return r

    def script(self, name: str, cmd: list[str], env: dict | None = None, reads: list[Path] | None = None) -> dict:
        state = self.ready(reads)
        log(f"[{name}] (load {state['load1']}, others {state['others_cores_before']})")
        r = common.run_measured(cmd, log_prefix=self.logs / name, env=env or self.env)
        r["machine"] = state
        self._check(name, r)
        try:
            r["result"] = json.loads(Path(r["stdout"]).read_text().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            r["result"] = None
        log(f"  {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak {r['peak_rss_mib']:.0f} MiB")
        return r

    @staticmethod
    def _check(name: str, r: dict) -> None:
        if r["returncode"] != 0:
            log(f"  FAILED (exit {r['returncode']}): {common.tail(r['stderr'], 3)}")


def current_files_spec(data_dir: Path, as_of: str, settings: dict, path: Path) -> dict:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT feed, file_path FROM ingest.current_files ORDER BY feed, extract_ts, file_path"
                           ).fetchall()
    finally:
        con.close()
    files: dict[str, list[str]] = {}
    for feed, rel in rows:
        files.setdefault(feed, []).append(str((data_dir / "landing" / rel).resolve()))
    spec = {"as_of": as_of, "lake": str((data_dir / "lake").resolve()), "files": files, "settings": settings}
    path.write_text(json.dumps(spec, indent=1))
    return spec


def load_settings(py: str, env: dict) -> dict:
    code = ("import json; from contracts.settings import Settings; s = Settings.load(None); "
            "print(json.dumps({k: getattr(s, k) for k in ('abs_tol', 'rel_tol', 'match_epsilon', 'horizon_weeks', "
            "'excess_weeks', 'severity_high_value', 'severity_medium_value')}))")
    out = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ensure_datacompy_venv() -> Path:
    py = DC_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run(
        [str(py), "-c", "import datacompy, polars, pandas, pyarrow; assert datacompy.__version__ == '1.1.0'"],
        capture_output=True).returncode == 0
    if not ok:
        log(f"datacompy: creating {DC_VENV} ({' '.join(DC_REQUIREMENTS)}) ...")
        subprocess.run(["python3", "-m", "venv", str(DC_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *DC_REQUIREMENTS], check=True)
    return py


# --- report ----------------------------------------------------------------------------------
def _f(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def asset_table(run: dict) -> str:
    steps = run["steps"]
    lines = ["| asset | wall s | CPU s | peak RSS MiB | rows in | rows out | rows/s (in) | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    seen_steps: set[str] = set()
    for a in steps["assets"]:
        first = a["step_key"] not in seen_steps
        seen_steps.add(a["step_key"])
        wall = a.get("wall_s")
        rin = a.get("rows_in")
        rate = rin / wall if (first and rin and wall) else None
        note = a.get("rows_note") or ""
        if a.get("checks_failed"):
            note = (note + "; " if note else "") + "check not passed: " + ", ".join(a["checks_failed"])
        if a.get("outcome") not in (None, "success"):
            note = f"**{a.get('outcome')}** " + note
        lines.append(f"| {a['asset']} | {_f(wall, 2) if first else '(same step)'} | "
                     f"{_f(a.get('cpu_s'), 2) if first else ''} | {_f(a.get('peak_rss_mib'), 0) if first else ''} | "
                     f"{_f(rin)} | {_f(a.get('rows_out'))} | {_f(rate, 0)} | {note} |")
    p = steps["process"]
    outside = p["wall_s"] - p["steps_wall_s"]
    lines.append(f"| *outside steps* (interpreter, imports {p['import_s']:.1f} s, Dagster run setup, summary) | "
                 f"{_f(outside, 2)} | | | | | | |")
    lines.append(f"| **process total** | **{_f(p['wall_s'], 2)}** | **{_f(p['cpu_s'], 2)}** | "
                 f"**{_f(p['peak_rss_mib'], 0)}** | | | | others on the machine: "
                 f"{run.get('others_cores_during')} cores |")
    return "\n".join(lines)


MART_STEPS = ("marts/inventory_drift", "marts/forecast_order_alignment")
CLOCKED_STEPS = ("marts/exceptions", "delivery/exception_reports")  # they run on every run


def ratio_rows(rep: dict) -> list[dict]:
    full, incr = rep["runs"].get("full"), rep["runs"].get("incremental")
    full_i = rep["runs"].get("full_instrumented")
    incr_i = rep["runs"].get("incremental_instrumented")
    floors, dc = rep.get("floors", {}), rep.get("datacompy", {})

    def asset_wall(run, name):
        if not run:
            return None
        for a in run["steps"]["assets"]:
            if a["asset"] == name:
                return a.get("wall_s")
        return None

    drift = asset_wall(full_i, "marts/inventory_drift")
    dfloor = (floors.get("drift") or {}).get("wall_s")
    lfloor = (floors.get("drift_lake") or {}).get("wall_s")
    rfloor = (floors.get("run") or {}).get("wall_s")
    wfloor = (floors.get("run_window") or {}).get("wall_s")
    fw = full["wall_s"] if full else None
    rows = []

    def add(name, value, target=None, op=None, how="", key=None):
        ok = None
        if value is not None and target is not None:
            ok = value <= target if op == "<=" else value >= target
        rows.append({"figure": name, "value": value, "target": f"{op} {target}" if target is not None else "",
                     "ok": ok, "how": how, "key": key})

    def div(a, b):
        return round(a / b, 3) if a is not None and b else None

    add("drift step, s (marts/inventory_drift, instrumented full run)", drift)
    add("drift floor, s (DuckDB: ERP CSV + WMS Parquet -> item-location, full outer join, flags)", dfloor)
    add("drift step / drift floor", div(drift, dfloor), TARGETS["drift_vs_floor"], "<=", key="drift_ratio")
    add("drift floor from the lake, s (3-way, time-aligned, canonical Parquet)", lfloor)
    add("drift step / lake drift floor (info)", div(drift, lfloor))
    add("full run, s (distsync run, wall)", fw, key="full_s")
    add("full run CPU, s", full["cpu_s"] if full else None)
    add("run floor, s (DuckDB script, every current file -> both marts, wide projection)", rfloor,
        key="floor_s")
    add("run floor with a window-sum projection, s (info)", wfloor)
    add("full run / run floor", div(fw, rfloor), TARGETS["full_vs_floor"], "<=", key="full_ratio")
    if full_i:  # the part of the run that does what the run floor does: input files -> the two marts
        to_marts = round(sum(a["wall_s"] or 0 for a in full_i["steps"]["assets"]
                             if a["asset"].split("/")[0] in ("ingest", "canonical") or a["asset"] in MART_STEPS), 2)
        add("ingest to marts, s (ingest, canonical and the two marts' steps, instrumented full run)", to_marts)
        add("ingest to marts / run floor (info)", div(to_marts, rfloor))
    peak = full["peak_rss_mib"] / GIB if full else None
    add("full run peak RSS, GiB", round(peak, 2) if peak is not None else None, TARGETS["peak_gib"], "<=",
        key="peak_gib")
    add("full run peak RSS (instrumented), GiB",
        round(full_i["peak_rss_mib"] / GIB, 2) if full_i else None)
    for backend, key in (("pandas", "dc_pandas"), ("polars", "dc_polars")):
        r = dc.get(backend) or {}
        res = r.get("result") or {}
        cmp_s, load_s = res.get("compare_s"), res.get("load_s")
        add(f"datacompy-{backend} compare, s (load {_f(load_s, 2)} s apart)", cmp_s)
        add(f"datacompy-{backend} / drift step (compare only)", div(cmp_s, drift), TARGETS[key], ">=")
        add(f"datacompy-{backend} load+compare / drift step (info)",
            div((cmp_s or 0) + (load_s or 0) if cmp_s is not None else None, drift))
    iw = incr["wall_s"] if incr else None
    add("incremental run, s (distsync run, wall)", iw, key="incr_s")
    add("incremental / full", div(iw, fw), TARGETS["incr_share"], "<=", key="incr_share")
    if full_i and incr_i:
        add("incremental / full, steps only (info)",
            div(incr_i["steps"]["process"]["steps_wall_s"], full_i["steps"]["process"]["steps_wall_s"]))
        # what the incremental would cost if the two steps that follow the run clock (the
        # exceptions' ages, the per-run reports) were free: the floor of any incremental
        # distsync run, which runs the whole graph
        clocked = sum(asset_wall(incr_i, name) or 0 for name in CLOCKED_STEPS)
        add("incremental without the exceptions and reports steps / full, instrumented (info)",
            div(incr_i["steps"]["process"]["wall_s"] - clocked, full_i["steps"]["process"]["wall_s"]))
    hourly = rep["runs"].get("hourly_job")
    if hourly:
        hw = hourly["wall_s"] if hourly["returncode"] == 0 else None
        add("hourly inventory_sync job on a second new WMS file, s (info)", hw)
        add("hourly job / full (info)", div(hw, fw))
    return rows


def ratio_table(rows: list[dict]) -> str:
    out = ["| figure | value | target | met |", "|---|---:|---|---|"]
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        v = r["value"]
        out.append(f"| {r['figure']} | {_f(v, 3 if isinstance(v, float) and v < 10 else 1)} | {r['target']} | {ok} |")
    return "\n".join(out)


def measured_run_row(rep: dict) -> str:
    """This run as a row of benchmarks/README.md's "Every measured run", from the ratio
    rows; the recorder adds the machine to the results cell and writes "what changed"."""
    v = {r["key"]: r["value"] for r in rep["ratios"] if r.get("key")}

    def cell(key, unit, nd=None, scale=1):  # seconds: 2 decimals under 10 s, else 1, as the table has them
        x = v.get(key)
        return "n/a" if x is None else f"{_f(float(x) * scale, nd or (2 if x < 10 else 1))}{unit}"

    commit = f"`{rep['code']['commit'][:7]}`"
    return (f"| {commit} | {commit} | {cell('full_s', ' s')} | {cell('floor_s', ' s')} | "
            f"{cell('full_ratio', '×', 2)} | {cell('drift_ratio', '×', 2)} | {cell('incr_s', ' s', 1)} | "
            f"{cell('incr_share', ' %', 1, 100)} | {cell('peak_gib', ' GiB', 2)} | … ({rep['started'][11:16]}"
            f"{', `--profile`' if rep.get('profile') else ''}) |")


def runs_table(rep: dict) -> str:
    out = ["| run | wall s | CPU s | peak RSS MiB | load1 before | others' cores during | disk wait during, s "
           "| files read into the page cache before |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    runs = [*rep["runs"].items(), *rep.get("floors", {}).items(),
            *((f"datacompy-{k}", v) for k, v in rep.get("datacompy", {}).items())]
    for name, r in runs:
        if r:
            warm = r["machine"]["warmed"]
            out.append(f"| {name} | {_f(r['wall_s'], 2)} | {_f(r['cpu_s'], 2)} | {_f(r['peak_rss_mib'], 0)} | "
                       f"{r['machine']['load1']} | {r['others_cores_during']} | {r['iowait_s']} | "
                       f"{round(warm['bytes'] / 2**20):,} MiB in {warm['seconds']} s |")
    return "\n".join(out)


def profile_table(top: dict | None) -> str:
    if not top:
        return ""
    out = ["| # | project function (time of everything it runs below itself, other project functions "
           "excepted) | file | s |", "|---:|---|---|---:|"]
    for i, r in enumerate(top.get("top_project_self", [])[:11], 1):
        out.append(f"| {i} | `{r['function']}` | {r['file']} | {r['seconds']:.2f} |")
    out += ["", "| # | function (native calls booked on their Python caller) | file | self s |", "|---:|---|---|---:|"]
    for i, r in enumerate(top.get("top_self", [])[:10], 1):
        out.append(f"| {i} | `{r['function']}` | {r['file']} | {r['seconds']:.2f} |")
    out += ["", "| # | project function (cumulative) | file | s |", "|---:|---|---|---:|"]
    for i, r in enumerate(top.get("top_project_cumulative", [])[:10], 1):
        out.append(f"| {i} | `{r['function']}` | {r['file']} | {r['seconds']:.2f} |")
    return "\n".join(out)


def markdown(rep: dict) -> str:
    m = rep["machine"]
    parts = [
        f"# distsync benchmark — scale {rep['scale']}",
        "",
        f"- command: `{rep['command']}`",
        f"- code: {rep['code']['code']} at `{rep['code']['commit'][:12]}`"
        + (f" with uncommitted changes in {len(rep['code']['uncommitted_changes'])} file(s)"
           if rep["code"]["uncommitted_changes"] else ""),
        f"- machine: {m['cpus']} CPUs, {m['mem_gib']} GiB RAM, {m['python']}, duckdb {m['duckdb']}; "
        f"load average at start {m['load_at_start']}",
        f"- data: {rep['landing']['scale']} landing, as_of {rep['as_of']}; incremental: {rep['added']['file']} "
        f"({rep['added']['rows']} movements), as_of {rep['incremental_as_of']}",
        f"- started {rep['started']}, took {rep['seconds']:.0f} s",
        "",
        "## Targets",
        "",
        ratio_table(rep["ratios"]),
        "",
        "This run's row for benchmarks/README.md's \"Every measured run\":",
        "",
        measured_run_row(rep),
        "",
        "## Runs (each in its own process; wall, CPU = user+sys, peak RSS from the kernel)",
        "",
        "Disk wait: the machine's iowait over the run, summed over its cores (near 0 when the run's files "
        "came from the page cache). Before each run the files it reads were read once, untimed: the data "
        "directory for the pipeline's runs, the current landing files for the floors and datacompy, the lake "
        "for the lake floor.",
        "",
        runs_table(rep),
    ]
    for key, title in (("full_instrumented", "Per asset — full run"),
                       ("incremental_instrumented", "Per asset — incremental run")):
        if rep["runs"].get(key):
            parts += ["", f"## {title}", "", asset_table(rep["runs"][key])]
    if rep.get("profile_top"):
        parts += ["", "## Profile of the full run (pyinstrument)", "", profile_table(rep["profile_top"])]
    if rep.get("partitioned"):
        parts += ["", "## Partitioned by location group", "", rep["partitioned"].get("markdown", "")]
    if rep.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    return "\n".join(parts) + "\n"


# --- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=("small", "medium", "large"), default="large")
    p.add_argument("--data-dir", help="default benchmarks/out/<scale>")
    p.add_argument("--skip-datacompy", action="store_true")
    p.add_argument("--profile", action="store_true", help="one more full run under pyinstrument")
    p.add_argument("--partitioned", action="store_true", help="also run benchmarks/partitioned.py")
    p.add_argument("--code", default="worktree",
                   help="'worktree' (default) or a git revision to measure (exported with git archive)")
    p.add_argument("--txn-rows", type=int, default=400, help="movements in the appended transaction file")
    common.add_quiet_options(p)
    p.add_argument("--skip-plain", action="store_true",
                   help="skip the plain distsync runs (ratios then use the instrumented ones)")
    p.add_argument("--skip-window-floor", action="store_true")
    p.add_argument("--skip-hourly", action="store_true",
                   help="skip the hourly inventory_sync job on a second new WMS file (information only)")
    p.add_argument("--out-dir", default=str(OUT), help="where report-<scale>.json/.md go")
    args = p.parse_args(argv)

    if args.profile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            raise SystemExit("--profile needs pyinstrument in the project venv (a benchmark-only tool, not a "
                             "project dependency): .venv/bin/pip install pyinstrument") from None
    started = time.perf_counter()
    data_dir = Path(args.data_dir or OUT / args.scale).resolve()
    out_dir = Path(args.out_dir).resolve()
    logs = out_dir / f"logs-{args.scale}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    code, code_info = code_dir(args.code)
    py = common.project_python()
    env = child_env(code)
    runner = Runner(args, py, env, logs, data_dir)
    log(f"code: {code_info['code']} {code_info['commit'][:12]} ({code}); python {py}")

    landing = ensure_landing(data_dir, args.scale, py, env, logs)
    remove_added_files(data_dir / "landing")
    as_of = landing["as_of"]
    settings = load_settings(py, env)
    lroot = str(data_dir / "landing")
    run_args = ["run", "--landing", lroot, "--data-dir", str(data_dir), "--as-of", as_of]
    rep: dict = {
        "scale": args.scale, "command": "python benchmarks/run.py " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code_info,
        "machine": {"cpus": common.NCPU, "python": platform.python_version(), "duckdb": duckdb.__version__,
                    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "load_at_start": common.loadavg()},
        "landing": landing, "as_of": as_of, "settings": settings, "runs": {}, "floors": {}, "datacompy": {},
        "notes": [],
    }

    def incremental_args(added: dict) -> list[str]:
        rep["incremental_as_of"] = run_as_of_with(as_of, added)
        return ["run", "--landing", lroot, "--data-dir", str(data_dir), "--as-of", rep["incremental_as_of"]]

    # 1. plain distsync run: full, then incremental
    if not args.skip_plain:
        clean_outputs(data_dir)
        rep["runs"]["full"] = runner.plain("full", run_args)
        added = add_transaction_file(data_dir / "landing", args.txn_rows)
        rep["runs"]["incremental"] = runner.plain("incremental", incremental_args(added))
        remove_added_files(data_dir / "landing")

    # 2. instrumented: full, floors on its state, then incremental
    clean_outputs(data_dir)
    rep["runs"]["full_instrumented"] = runner.instrumented("full_instrumented", run_args)
    if args.skip_plain:
        rep["runs"]["full"] = rep["runs"]["full_instrumented"]
    spec_path = logs / "current_files.json"
    spec = current_files_spec(data_dir, as_of, settings, spec_path)
    # what the floors and datacompy read: the current landing files, or the lake
    current = [Path(f) for files in spec["files"].values() for f in files]
    fl = logs / "floors"
    modes = ["drift", "drift-lake", "run"] + ([] if args.skip_window_floor else ["run-window"])
    for mode in modes:
        rep["floors"][mode.replace("-", "_")] = runner.script(
            f"floor_{mode}", [py, str(HERE / "floors.py"), mode, "--files", str(spec_path), "--out", str(fl)],
            reads=[Path(spec["lake"])] if mode == "drift-lake" else current)
    if not args.skip_datacompy:
        dpy = ensure_datacompy_venv()
        denv = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for backend in ("pandas", "polars"):
            rep["datacompy"][backend] = runner.script(
                f"datacompy_{backend}", [str(dpy), str(HERE / "datacompy_bench.py"), "--backend", backend,
                                         "--files", str(spec_path), "--out", str(logs / f"datacompy_{backend}.json")],
                env=denv, reads=current)
    added = add_transaction_file(data_dir / "landing", args.txn_rows)
    rep["added"] = added
    rep["runs"]["incremental_instrumented"] = runner.instrumented("incremental_instrumented", incremental_args(added))
    if args.skip_plain:
        rep["runs"]["incremental"] = rep["runs"]["incremental_instrumented"]

    # 3. optional: partitioned (on the lake of the runs above), profile (one more full run)
    if args.partitioned:
        r = runner.script("partitioned", [py, str(HERE / "partitioned.py"), "--data-dir", str(data_dir),
                                          "--as-of", rep["incremental_as_of"], "--json",
                                          "--max-wait", str(args.max_wait), "--quiet-cores", str(args.quiet_cores)],
                          reads=[])  # partitioned.py reads the lake into the cache before each variant
        rep["partitioned"] = r.get("result") or {"error": common.tail(r["stderr"])}
    # the hourly job the schedule runs (information): a second new WMS file, one hour later
    if not args.skip_hourly:
        added2 = add_transaction_file(data_dir / "landing", args.txn_rows, seed=6)
        rep["hourly_added"] = added2
        rep["hourly_as_of"] = run_as_of_with(rep["incremental_as_of"], added2)
        rep["runs"]["hourly_job"] = runner.script(
            "hourly_job", [py, str(HERE / "hourly.py"), "--landing", lroot, "--data-dir", str(data_dir),
                           "--as-of", rep["hourly_as_of"]])
    remove_added_files(data_dir / "landing")
    if args.profile:
        clean_outputs(data_dir)
        prefix = str(out_dir / f"profile-{args.scale}")
        r = runner.instrumented("full_profiled", run_args, profile=prefix)
        rep["profile"] = {"html": prefix + ".html", "text": prefix + ".txt", "wall_s": r["wall_s"]}
        top = Path(prefix + ".top.json")
        rep["profile_top"] = json.loads(top.read_text()) if top.exists() else None

    # 4. checks of the floors against the pipeline, notes, report
    checks = cross_checks(rep, data_dir)
    rep["notes"] += checks
    rep["ratios"] = ratio_rows(rep)
    rep["seconds"] = time.perf_counter() - started
    md = markdown(rep)
    (out_dir / f"report-{args.scale}.json").write_text(json.dumps(rep, indent=1, default=str))
    (out_dir / f"report-{args.scale}.md").write_text(md)
    log("")
    log(ratio_table(rep["ratios"]))
    log("")
    log(runs_table(rep))
    for key in ("full_instrumented", "incremental_instrumented"):
        log(f"\n{key}:\n" + asset_table(rep["runs"][key]))
    if rep.get("profile_top"):
        log("\nprofile:\n" + profile_table(rep["profile_top"]))
    log(f"\nreport: {out_dir / f'report-{args.scale}.md'} (+ .json); logs in {logs}")
    failed = [n for n, r in rep["runs"].items() if r and r["returncode"] != 0]
    return 1 if failed else 0


def cross_checks(rep: dict, data_dir: Path) -> list[str]:
    """Do the contenders compute the same thing? (counts, not timings)"""
    notes = []
    dc = {k: (v.get("result") or {}).get("counts") for k, v in rep.get("datacompy", {}).items()}
    floor = ((rep["floors"].get("drift") or {}).get("result") or {}).get("counts")
    if floor:
        same = all(c == floor for c in dc.values() if c)
        notes.append(f"2-way comparison counts (DuckDB floor): {floor}"
                     + (f"; datacompy identical: {same}" if dc else ""))
    full_i = rep["runs"].get("full_instrumented")
    for mode in ("drift_lake", "run"):
        res = (rep["floors"].get(mode) or {}).get("result") or {}
        if res.get("drift_status"):
            notes.append(f"floor `{mode}` drift status counts: {res['drift_status']}"
                         + (f"; alignment: {res['alignment_status']}" if res.get("alignment_status") else ""))
    if full_i:
        for a in full_i["steps"]["assets"]:
            if a["asset"] == "marts/inventory_drift":
                md = a["metadata"]
                notes.append("pipeline drift status counts: " + str({k: md.get(k) for k in
                                                                     ("match", "within_tolerance", "drift",
                                                                      "unverifiable")}))
    return notes


if __name__ == "__main__":
    sys.exit(main())
