"""``distsync run`` with per-asset measurements (a child process of ``benchmarks/run.py``).

    python benchmarks/instrumented.py --out steps.json [--profile PREFIX] -- run --landing L --data-dir D --as-of T

It runs exactly the CLI (``pipelines.cli.main``: the same ``run_pipeline`` ->
``dg.materialize(ALL_ASSETS)`` -> summary as ``distsync run``, so whatever the owners add
to the graph is measured too), with one wrapper around
``DagsterInstance.handle_new_event``. Dagster's in-process executor calls it
synchronously, in the step's own thread, for every event; on

* ``STEP_START`` (after the event is stored) it reads ``perf_counter``, the process CPU
  time (``os.times`` user+sys: every thread, DuckDB's included) and ``VmRSS``, and resets
  the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``);
* ``STEP_SUCCESS`` / ``STEP_FAILURE`` (before it is stored) it reads the same figures and
  ``VmHWM``: the step's own peak RSS;
* ``ASSET_MATERIALIZATION`` / ``ASSET_CHECK_EVALUATION`` it keeps the metadata numbers.

The process-wide peak is the maximum of every ``VmHWM`` read before a reset and at the
end (a reset also lowers ``ru_maxrss``, so the parent's rusage of this child is not the
peak; the parent uses this file's ``process.peak_rss_mib``).

After the run, rows in/out per asset are read from the warehouse (read-only), see
``rows_for_assets`` for the rule per layer. With ``--profile`` the run happens under
pyinstrument and ``PREFIX.html`` / ``PREFIX.txt`` / ``PREFIX.top.json`` are written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

T0 = time.perf_counter()
WALL0 = datetime.now(timezone.utc)
import common  # noqa: E402  (benchmarks/common.py, beside this script)

common.put_code_on_path()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Meter:
    def __init__(self) -> None:
        self.peak_kb = 0
        self.can_reset = True
        self.steps: dict[str, dict] = {}
        self.order: list[str] = []
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def reset_peak(self) -> None:
        self.peak_kb = max(self.peak_kb, _status("VmHWM"))
        if self.can_reset:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                self.can_reset = False

    def start(self, key: str) -> None:
        self.reset_peak()
        self.order.append(key)
        self.steps[key] = {"step_key": key, "t_start": time.perf_counter() - T0, "_cpu0": _cpu(),
                           "rss_start_mib": round(_status("VmRSS") / 1024, 1), "materializations": [], "checks": []}

    def end(self, key: str, outcome: str) -> None:
        s = self.steps.setdefault(key, {"step_key": key, "materializations": [], "checks": []})
        hwm = _status("VmHWM")
        self.peak_kb = max(self.peak_kb, hwm)
        t = time.perf_counter() - T0
        s["t_end"] = t
        s["outcome"] = outcome
        if "t_start" in s:
            s["wall_s"] = round(t - s["t_start"], 3)
            s["cpu_s"] = round(_cpu() - s.pop("_cpu0"), 3)
        s["peak_rss_mib"] = round(hwm / 1024, 1) if self.can_reset else None
        s["rss_end_mib"] = round(_status("VmRSS") / 1024, 1)

    def sampler(self) -> None:  # a coarse RSS timeline (the per-step peak comes from VmHWM)
        while not self._stop.wait(0.25):
            self.samples.append((round(time.perf_counter() - T0, 2), _status("VmRSS") // 1024))


def _plain(v):
    value = getattr(v, "value", v)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value if not isinstance(value, str) or len(value) < 200 else value[:200] + "…"
    return None


def install_hook(meter: Meter) -> None:
    import dagster as dg

    orig = dg.DagsterInstance.handle_new_event

    def handle_new_event(self, event, *args, **kwargs):
        de = event.dagster_event
        et = de.event_type_value if de is not None else None
        key = getattr(de, "step_key", None)
        if et in ("STEP_SUCCESS", "STEP_FAILURE") and key:
            meter.end(key, "success" if et == "STEP_SUCCESS" else "failure")
        result = orig(self, event, *args, **kwargs)
        if et == "STEP_START" and key:
            meter.start(key)
        elif et == "ASSET_MATERIALIZATION" and key:
            mat = de.step_materialization_data.materialization
            meta = {k: _plain(v) for k, v in (mat.metadata or {}).items()}
            meter.steps.setdefault(key, {"step_key": key, "materializations": [], "checks": []})[
                "materializations"].append({"asset": "/".join(mat.asset_key.path),
                                            "metadata": {k: v for k, v in meta.items() if v is not None}})
        elif et == "ASSET_CHECK_EVALUATION" and key:
            ev = de.event_specific_data
            meter.steps.setdefault(key, {"step_key": key, "materializations": [], "checks": []})["checks"].append(
                {"check": ev.check_name, "passed": bool(ev.passed)})
        return result

    dg.DagsterInstance.handle_new_event = handle_new_event


# --- rows in / rows out ------------------------------------------------------------------
def _count(con, table: str, as_of: datetime | None) -> int | None:
    schema, name = table.split(".")
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
        [schema, name]).fetchall()}
    if not cols:
        return None
    if "run_as_of" in cols and as_of is not None:
        return con.execute(f"SELECT count(*) FROM {table} WHERE run_as_of = ?", [as_of]).fetchone()[0]
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def rows_for_assets(data_dir: Path, as_of: datetime, assets: dict[str, dict]) -> None:
    """Fill ``rows_in`` / ``rows_out`` / ``rows_note`` of every asset (see the README).

    * ``ingest/<feed>``: in = rows read from the files this run ingested (manifest
      ``rows_read``), out = rows accepted into staging (quarantined rows are noted);
    * ``canonical/<table>``: when rebuilt, in = accepted rows of its current files,
      out = rows of the table (``dagster/row_count``); when not rebuilt both are 0;
    * ``ingest/feed_status``: in = manifest rows it scans, out = feed rows for this as_of;
    * everything else (marts, delivery): in = rows of the tables of its upstream assets
      (this run's rows where the table has ``run_as_of``), out = ``dagster/row_count``
      when the asset reports one, else ``records_emitted`` (outbox payloads), else this
      run's rows of its own table, else none (noted); an asset reporting
      ``recomputed: false`` read and wrote nothing (0 / 0).
    """
    import duckdb
    from contracts.feeds import FEEDS

    qualified = {f.qualified: f for f in FEEDS.values()}
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        new = {r[0]: r[1:] for r in con.execute(
            """SELECT feed, count(*), coalesce(sum(rows_read), 0), coalesce(sum(rows_accepted), 0),
                      coalesce(sum(rows_quarantined), 0), coalesce(sum(size_bytes), 0)
               FROM ingest.manifest WHERE ingested_at >= ? GROUP BY feed""", [WALL0]).fetchall()}
        sizes: dict[str, int | None] = {}

        def size(asset: str) -> int | None:
            if asset not in sizes:
                parts = asset.split("/")
                sizes[asset] = _count(con, ".".join(parts), as_of) if len(parts) == 2 else None
            return sizes[asset]

        for asset, a in assets.items():
            meta = a.get("metadata", {})
            parts = asset.split("/")
            note = ""
            if parts[0] == "ingest" and parts[1] in qualified:
                feed = qualified[parts[1]]
                files, read, acc, quar, nbytes = new.get(feed.name, (0, 0, 0, 0, 0))
                a["rows_in"], a["rows_out"] = int(read), int(acc)
                note = f"{files} new file(s), {nbytes / 1e6:.0f} MB"
                if quar:
                    note += f", {quar} rows quarantined"
                if meta.get("files_skipped_unchanged"):
                    note += f", {meta['files_skipped_unchanged']} unchanged skipped"
            elif parts[0] == "canonical":
                from contracts.canonical_build import feeds_of

                names = [f.name for f in feeds_of(".".join(parts))]
                rebuilt = bool(meta.get("rebuilt", True))
                if rebuilt and names:
                    a["rows_in"] = int(con.execute(
                        f"""SELECT coalesce(sum(rows_accepted), 0) FROM (
                              SELECT DISTINCT m.file_path, m.sha256, m.rows_accepted
                              FROM ingest.current_files c JOIN ingest.manifest m
                                ON m.file_path = c.file_path AND m.sha256 = c.sha256 AND m.outcome = 'accepted'
                              WHERE c.feed IN ({', '.join("'" + n + "'" for n in names)}))""").fetchone()[0])
                    a["rows_out"] = int(meta.get("dagster/row_count") or size(asset) or 0)
                else:
                    a["rows_in"], a["rows_out"] = 0, 0
                    note = f"unchanged, not rebuilt ({meta.get('dagster/row_count', size(asset))} rows)"
            elif asset == "ingest/feed_status":
                a["rows_in"] = int(con.execute("SELECT count(*) FROM ingest.manifest").fetchone()[0])
                a["rows_out"] = size(asset)
            elif meta.get("recomputed") is False or meta.get("skipped") is True:
                a["rows_in"], a["rows_out"] = 0, 0
                note = f"not recomputed, inputs unchanged ({meta.get('dagster/row_count', size(asset))} rows)"
            else:
                ins = [size(d) for d in a.get("deps", [])]
                a["rows_in"] = sum(x for x in ins if x) if any(x is not None for x in ins) else None
                out = meta.get("dagster/row_count")
                if not isinstance(out, (int, float)) and isinstance(meta.get("records_emitted"), (int, float)):
                    out = meta["records_emitted"]  # delivery payloads: records written to the outbox
                    note = f"{meta.get('records_built')} records built, {out} emitted"
                    if meta.get("blocked_reason"):
                        note += f" (blocked: {meta['blocked_reason']})"
                a["rows_out"] = int(out) if isinstance(out, (int, float)) else size(asset)
                if a["rows_out"] is None:
                    note = (note + "; " if note else "") + "no row count in its metadata or warehouse"
                if asset == "marts/forecast_order_alignment":
                    extra = {t: size(f"marts/{t}") for t in ("replenishment_proposal", "projection")}
                    note = "also " + ", ".join(f"{t} {n}" for t, n in extra.items() if n is not None)
            a["rows_note"] = note
    finally:
        con.close()


def graph_deps() -> dict[str, list[str]]:
    from pipelines.graph import ALL_ASSETS

    deps: dict[str, list[str]] = {}
    for ad in ALL_ASSETS:
        for key, upstream in ad.asset_deps.items():
            deps["/".join(key.path)] = sorted("/".join(k.path) for k in upstream)
    return deps


# --- profile -------------------------------------------------------------------------------
PROJECT = ("assets/", "contracts/", "reconciliation/", "pipelines/")


def write_profile(profiler, prefix: str, top_n: int = 10, session=None) -> None:
    """HTML + text of the profile, the session itself (``.pyisession``, re-render with
    ``--from-session``), and ``.top.json`` with three rankings:

    * ``top_project_self``: every sampled second booked on the innermost *project*
      function on the stack (library and native code below it included): what the
      owners can change, by function;
    * ``top_self``: self time by function, native calls (DuckDB ``execute``, polars
      ``collect``) booked on their Python caller;
    * ``top_project_cumulative``: cumulative time of project functions.
    """
    from pyinstrument.renderers import HTMLRenderer, ConsoleRenderer

    session = session or profiler.last_session
    if profiler is not None:
        session.save(prefix + ".pyisession")
    Path(prefix + ".html").write_text(HTMLRenderer().render(session))
    Path(prefix + ".txt").write_text(ConsoleRenderer(unicode=True, color=False).render(session))
    root = session.root_frame()
    self_time: dict[tuple, float] = {}
    total_time: dict[tuple, float] = {}
    owner_time: dict[tuple, float] = {}

    def walk(frame, caller, owner, on_stack: frozenset) -> None:
        if frame.is_synthetic:
            return
        fpath = frame.file_path_short or frame.file_path or "?"
        if fpath.startswith(PROJECT):
            owner = (frame.function or "?", fpath, frame.line_no or 0)
        okey = owner or ("(outside project code: dagster, imports, ...)", "-", 0)
        owner_time[okey] = owner_time.get(okey, 0.0) + frame.total_self_time
        path = frame.file_path_short or frame.file_path or "?"
        if path.startswith("<") and caller is not None:
            # native code (DuckDB's execute, polars' collect, ...): its time is the cost of
            # the Python function that called it, so it is booked there, named
            name = (frame.function or "?").rsplit(".", 1)[-1]
            key = (f"{caller[0]} -> {name}()", caller[1], caller[2])
        else:
            key = (frame.function or "?", path, frame.line_no or 0)
            caller = key
        self_time[key] = self_time.get(key, 0.0) + frame.total_self_time
        if key not in on_stack:  # recursion counts once
            total_time[key] = total_time.get(key, 0.0) + frame.time
        for child in frame.children:
            walk(child, caller, owner, on_stack | {key})

    if root is not None:
        walk(root, None, None, frozenset())

    def top(d: dict) -> list[dict]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])
        return [{"function": k[0], "file": f"{k[1]}:{k[2]}", "seconds": round(v, 2)}
                for k, v in rows if not k[0].startswith("[")]

    project = ("assets/", "contracts/", "reconciliation/", "pipelines/")
    top_project = [r for r in top(total_time) if r["file"].startswith(project)
                   and r["function"] not in ("main", "run_command", "run_pipeline", "<module>")]
    Path(prefix + ".top.json").write_text(json.dumps({
        "duration_s": round(session.duration, 2),
        "top_project_self": top(owner_time)[:top_n + 1],
        "top_self": top(self_time)[:top_n],
        "top_project_cumulative": top_project[:top_n * 2],
    }, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--profile")
    p.add_argument("--from-session", help="only re-render PREFIX.* from a saved .pyisession")
    p.add_argument("cli", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.from_session:
        from pyinstrument.session import Session

        write_profile(None, args.profile, session=Session.load(args.from_session))
        return 0
    cli_args = [a for a in args.cli if a != "--"]
    meter = Meter()
    threading.Thread(target=meter.sampler, daemon=True).start()
    cpu0 = _cpu()
    import dagster  # noqa: F401  (timed apart: imports are part of every CLI run)
    from pipelines import cli

    import_s = time.perf_counter() - T0
    install_hook(meter)
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005, async_mode="disabled")
        profiler.start()
    run_t0 = time.perf_counter()
    rc = cli.main(cli_args)
    run_wall = time.perf_counter() - run_t0
    if profiler is not None:
        profiler.stop()
    meter._stop.set()
    wall = time.perf_counter() - T0
    cpu = _cpu() - cpu0
    meter.peak_kb = max(meter.peak_kb, _status("VmHWM"))

    parsed = cli._parser().parse_args(cli_args)
    from pipelines.resources import parse_as_of

    as_of = parse_as_of(parsed.as_of)
    deps = graph_deps()
    assets: dict[str, dict] = {}
    for key in meter.order:
        s = meter.steps[key]
        for m in s["materializations"] or [{"asset": key.replace("__", "/"), "metadata": {}}]:
            assets[m["asset"]] = {"asset": m["asset"], "step_key": key, "deps": deps.get(m["asset"], []),
                                  "metadata": m["metadata"],
                                  **{k: s.get(k) for k in ("wall_s", "cpu_s", "peak_rss_mib", "rss_start_mib",
                                                           "rss_end_mib", "t_start", "t_end", "outcome")},
                                  "checks_failed": [c["check"] for c in s["checks"] if not c["passed"]]}
    rows_error = None
    try:
        rows_for_assets(Path(parsed.data_dir), as_of, assets)
    except Exception as exc:  # noqa: BLE001 - the timings are still worth writing
        rows_error = f"{type(exc).__name__}: {exc}"
    steps_wall = sum(a.get("wall_s") or 0 for a in {a["step_key"]: a for a in assets.values()}.values())
    result = {
        "returncode": rc,
        "as_of": as_of.isoformat(),
        "code_path": str(Path(cli.__file__).resolve().parent.parent),
        "process": {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "import_s": round(import_s, 3),
                    "run_wall_s": round(run_wall, 3), "steps_wall_s": round(steps_wall, 3),
                    "peak_rss_mib": round(meter.peak_kb / 1024, 1), "per_step_peak": meter.can_reset},
        "assets": list(assets.values()),
        "rows_error": rows_error,
        "rss_timeline": meter.samples[::4],
    }
    if profiler is not None:
        write_profile(profiler, args.profile)
        result["profile"] = args.profile
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return rc


if __name__ == "__main__":
    status = main()
    # end as the command under test does: pipelines.cli.entry freezes the GC before exit
    if hasattr(sys.modules.get("pipelines.cli"), "entry"):
        import gc

        gc.freeze()
    sys.exit(status)
