"""What splitting reconciliation by location group gains or costs on this machine.

    python benchmarks/partitioned.py --data-dir benchmarks/out/large [--as-of ISO] [--json]
                                     [--max-wait S] [--quiet-cores C]

Needs a data dir on which a full ``distsync run`` has built the lake
(``<data-dir>/lake/canonical/<table>/*.parquet``) and the warehouse (for
``canonical.conflict_key``, exported once to Parquet before any timing). It does not
change the project's assets: every variant calls the same pure functions
``reconciliation.build_inventory_drift`` and ``build_forecast_order_alignment`` on a fresh
DuckDB file whose ``canonical.*`` views read the lake Parquet — restricted to the
group's plants where a table has a ``location_id`` (masters without one are read whole) —
and exports both marts to Parquet as the assets do.

Location groups: the plants of ``canonical.location`` in code order, alternately
``even`` (1st, 3rd, …) and ``odd``. Drift, time alignment and netting never cross an
item-location, so the union of the groups' marts is the unpartitioned mart (checked:
row counts and drift/alignment status counts must add up).

Variants, each in fresh child processes, wall / CPU / peak RSS from the kernel:

* ``one process, all plants``        — the unpartitioned baseline;
* ``one process, groups in turn``    — the split without parallelism (its overhead);
* ``two processes, concurrently``    — one group per process (``multiprocessing``):
  the executor-level split of the reconciliation step;
* ``dagster, partitioned assets``    — a ``StaticPartitionsDefinition(["even", "odd"])``
  on two assets calling the same functions, one ``dg.materialize(partition_key=…)`` run
  per partition, the two runs in two processes at once (what a run launcher / backfill
  does with one run per partition);
* ``dagster, multiprocess executor`` — one run of per-group assets with
  ``dg.multiprocess_executor`` (``max_concurrent=2``): every step in its own process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
import common  # noqa: E402  (benchmarks/common.py, beside this script)

common.put_code_on_path()

CONFIG_ENV = "DISTSYNC_BENCH_PARTITION_CONFIG"


def _lit(p) -> str:
    return "'" + str(p).replace("'", "''") + "'"


def group_connection(db: Path, lake: Path, plants: list[str] | None, conflict: Path):
    """A fresh DuckDB file whose canonical.* views read the lake, restricted to ``plants``."""
    import duckdb
    from contracts.warehouse import CANONICAL_DDL, columns_of, empty_select

    for suffix in ("", ".wal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)  # one folder per group: the marts go to <folder>/lake
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA IF NOT EXISTS canonical")
    in_list = None if plants is None else "(" + ", ".join(_lit(p) for p in plants) + ")"
    for table, ddl in CANONICAL_DDL.items():
        cols = columns_of(ddl)
        name = table.split(".")[1]
        folder = lake / "canonical" / name
        if table == "canonical.conflict_key":
            src = f"read_parquet({_lit(conflict)})" if conflict.exists() else None
        elif any(folder.glob("*.parquet")):
            src = f"read_parquet({_lit(folder / '*.parquet')}, union_by_name = true)"
        else:
            src = None
        if src is None:
            con.execute(f"CREATE VIEW {table} AS {empty_select(ddl)}")
            continue
        select = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in cols)
        where = f" WHERE location_id IN {in_list}" if in_list and any(c == "location_id" for c, _ in cols) else ""
        con.execute(f"CREATE VIEW {table} AS SELECT {select} FROM {src}{where}")
    return con


def reconcile_group(name: str, plants: list[str] | None, cfg: dict) -> dict:
    """Drift + alignment for one group; both marts exported to Parquet. Returns timings."""
    from contracts.settings import Settings
    from reconciliation import build_forecast_order_alignment, build_inventory_drift

    work = Path(cfg["workdir"])
    settings = Settings.load(None)
    t0 = time.perf_counter()
    con = group_connection(work / name / "warehouse.duckdb", Path(cfg["lake"]), plants, Path(cfg["conflict"]))
    try:
        t1 = time.perf_counter()
        drift = build_inventory_drift(con, settings, cfg["as_of"])
        t2 = time.perf_counter()
        align = build_forecast_order_alignment(con, settings, cfg["as_of"])
        t3 = time.perf_counter()
        for t in ("inventory_drift", "forecast_order_alignment"):
            con.execute(f"COPY marts.{t} TO {_lit(work / f'{name}_{t}.parquet')} (FORMAT parquet, COMPRESSION zstd)")
        t4 = time.perf_counter()
    finally:
        con.close()
    return {"group": name, "plants": len(plants) if plants is not None else "all",
            "views_s": round(t1 - t0, 3), "drift_s": round(t2 - t1, 3), "alignment_s": round(t3 - t2, 3),
            "export_s": round(t4 - t3, 3),
            "drift_rows": drift.get("item_locations"),
            "drift_status": {k: drift.get(k) for k in ("match", "within_tolerance", "drift", "unverifiable")},
            "alignment_rows": align.get("item_locations"),
            "alignment_status": {k: v for k, v in align.items()
                                 if k in ("aligned", "needs_order", "excess", "shortage_in_lead_time")}}


def _self_usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def worker_plain(groups: list[tuple[str, list[str] | None]], cfg: dict, q) -> None:
    t0 = time.perf_counter()
    out = [reconcile_group(name, plants, cfg) for name, plants in groups]
    q.put({"pid": os.getpid(), "groups": out, "wall_in_process_s": round(time.perf_counter() - t0, 3),
           **_self_usage()})


# --- Dagster: partitioned assets, one run per partition ------------------------------------
def partitioned_assets(group_names: list[str]):
    import dagster as dg

    parts = dg.StaticPartitionsDefinition(group_names)

    def body(kind: str, context):
        cfg = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
        from contracts.settings import Settings
        from reconciliation import build_forecast_order_alignment, build_inventory_drift

        group = context.partition_key
        db = Path(cfg["workdir"]) / f"dg_{group}" / "warehouse.duckdb"
        con = (group_connection(db, Path(cfg["lake"]), cfg["groups"][group], Path(cfg["conflict"]))
               if kind == "drift" else __import__("duckdb").connect(str(db)))
        try:
            con.execute("SET TimeZone = 'UTC'")
            fn = build_inventory_drift if kind == "drift" else build_forecast_order_alignment
            out = fn(con, Settings.load(None), cfg["as_of"])
            table = "inventory_drift" if kind == "drift" else "forecast_order_alignment"
            con.execute(f"COPY marts.{table} TO {_lit(Path(cfg['workdir']) / f'dg_{group}_{table}.parquet')} "
                        "(FORMAT parquet, COMPRESSION zstd)")
        finally:
            con.close()
        return dg.MaterializeResult(metadata={"dagster/row_count": out.get("item_locations", 0),
                                              "process": dg.MetadataValue.json(_self_usage())})

    @dg.asset(key=["bench", "inventory_drift"], partitions_def=parts)
    def inventory_drift(context):
        return body("drift", context)

    # one DuckDB file per group: alignment after drift in the same run (no second writer)
    @dg.asset(key=["bench", "forecast_order_alignment"], partitions_def=parts, deps=[inventory_drift])
    def forecast_order_alignment(context):
        return body("alignment", context)

    return [inventory_drift, forecast_order_alignment]


def worker_dagster_partition(group: str, cfg_path: str, q) -> None:
    os.environ[CONFIG_ENV] = cfg_path
    t0 = time.perf_counter()
    import dagster as dg

    cfg = json.loads(Path(cfg_path).read_text())
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(partitioned_assets(sorted(cfg["groups"])), partition_key=group,
                                instance=instance, raise_on_error=False)
        steps = _steps_of(instance, result)
    q.put({"pid": os.getpid(), "groups": [{**s, "asset": f"{s['asset']} [{group}]"} for s in steps],
           "success": result.success, "wall_in_process_s": round(time.perf_counter() - t0, 3), **_self_usage()})


def _steps_of(instance, result) -> list[dict]:
    """Per step: wall (run step stats) and the step process's usage reported in metadata."""
    stats = {s.step_key: round((s.end_time or 0) - (s.start_time or 0), 3)
             for s in instance.get_run_step_stats(result.run_id)}
    steps = []
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_MATERIALIZATION":
            mat = ev.step_materialization_data.materialization
            proc = mat.metadata.get("process")
            steps.append({"asset": "/".join(mat.asset_key.path), "step_wall_s": stats.get(ev.step_key),
                          **({"step_process": proc.value} if proc is not None else {})})
    return steps


# --- Dagster: one run, multiprocess executor, per-group assets -------------------------------
def multiprocess_job():
    """A job of per-group assets (``<group>/inventory_drift`` -> ``<group>/forecast_order_alignment``)
    on the multiprocess executor. Loaded again by every step process (``dg.reconstructable``)."""
    import dagster as dg

    cfg = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
    assets = []
    for group in sorted(cfg["groups"]):
        def make(group: str):
            @dg.asset(key=[f"group_{group}", "inventory_drift"])
            def drift():
                from contracts.settings import Settings
                from reconciliation import build_inventory_drift

                con = group_connection(Path(cfg["workdir"]) / f"mp_{group}" / "warehouse.duckdb", Path(cfg["lake"]),
                                       cfg["groups"][group], Path(cfg["conflict"]))
                try:
                    out = build_inventory_drift(con, Settings.load(None), cfg["as_of"])
                    con.execute(f"COPY marts.inventory_drift TO "
                                f"{_lit(Path(cfg['workdir']) / f'mp_{group}_inventory_drift.parquet')} (FORMAT parquet)")
                finally:
                    con.close()
                return dg.MaterializeResult(metadata={"dagster/row_count": out.get("item_locations", 0),
                                                      "process": dg.MetadataValue.json(_self_usage())})

            @dg.asset(key=[f"group_{group}", "forecast_order_alignment"], deps=[drift])
            def alignment():
                import duckdb
                from contracts.settings import Settings
                from reconciliation import build_forecast_order_alignment

                con = duckdb.connect(str(Path(cfg["workdir"]) / f"mp_{group}" / "warehouse.duckdb"))
                try:
                    con.execute("SET TimeZone = 'UTC'")
                    out = build_forecast_order_alignment(con, Settings.load(None), cfg["as_of"])
                    con.execute(f"COPY marts.forecast_order_alignment TO "
                                f"{_lit(Path(cfg['workdir']) / f'mp_{group}_alignment.parquet')} (FORMAT parquet)")
                finally:
                    con.close()
                return dg.MaterializeResult(metadata={"dagster/row_count": out.get("item_locations", 0),
                                                      "process": dg.MetadataValue.json(_self_usage())})

            return [drift, alignment]

        assets += make(group)
    job = dg.define_asset_job("bench_location_groups", selection=dg.AssetSelection.all(),
                              executor_def=dg.multiprocess_executor)
    return dg.Definitions(assets=assets, jobs=[job]).get_job_def("bench_location_groups")


def worker_dagster_multiprocess(cfg_path: str, q) -> None:
    os.environ[CONFIG_ENV] = cfg_path
    t0 = time.perf_counter()
    import dagster as dg

    with tempfile.TemporaryDirectory(prefix="distsync-bench-dagster-") as home:
        with dg.DagsterInstance.local_temp(tempdir=home) as instance:
            result = dg.execute_job(dg.reconstructable(multiprocess_job), instance=instance,
                                    run_config={"execution": {"config": {"max_concurrent": 2}},
                                                "loggers": {"console": {"config": {"log_level": "WARNING"}}}})
            steps = _steps_of(instance, result)
            success = result.success
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    q.put({"pid": os.getpid(), "groups": steps, "success": success,
           "wall_in_process_s": round(time.perf_counter() - t0, 3), **_self_usage(),
           "children_cpu_s": round(ch.ru_utime + ch.ru_stime, 3),
           "children_peak_rss_mib": round(ch.ru_maxrss / 1024, 1)})


# --- driver ------------------------------------------------------------------------------------
def run_variant(label: str, targets: list[tuple]) -> dict:
    """Start one child per (function, args) at once; wall for all, each child's own usage."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=fn, args=(*a, q)) for fn, a in targets]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):
        try:
            results.append(q.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and q.empty():
                break  # a child died without reporting
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    failed = [p.exitcode for p in procs if p.exitcode] + [r for r in results if r.get("success") is False]
    cpu = sum(r["cpu_s"] + r.get("children_cpu_s", 0) for r in results)
    peak_sum = sum(r["peak_rss_mib"] for r in results)
    return {"variant": label, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "peak_rss_mib_per_process": [r["peak_rss_mib"] for r in results] +
                                        [r["children_peak_rss_mib"] for r in results if "children_peak_rss_mib" in r],
            "peak_rss_mib_sum": round(peak_sum, 1), "processes": results, "failed": failed}


def plant_groups(lake: Path) -> dict[str, list[str]]:
    import duckdb

    plants = [r[0] for r in duckdb.sql(
        f"SELECT DISTINCT location_id FROM read_parquet({_lit(lake / 'canonical' / 'location' / '*.parquet')}) "
        "WHERE location_id IS NOT NULL ORDER BY 1").fetchall()]
    return {"even": plants[0::2], "odd": plants[1::2]}


def markdown(res: dict) -> str:
    lines = ["| variant | wall s | CPU s (all processes) | peak RSS MiB per process | drift s | alignment s |",
             "|---|---:|---:|---|---|---|"]
    for v in res["variants"]:
        d = "; ".join(f"{g['group']} {g['drift_s']}" for p in v["processes"] for g in p["groups"] if "drift_s" in g)
        a = "; ".join(f"{g['group']} {g['alignment_s']}" for p in v["processes"] for g in p["groups"]
                      if "alignment_s" in g)
        if not d:
            d = "; ".join(f"{g['asset']} {g.get('step_wall_s')}" for p in v["processes"] for g in p["groups"]
                          if "asset" in g and "drift" in g["asset"])
            a = "; ".join(f"{g['asset']} {g.get('step_wall_s')}" for p in v["processes"] for g in p["groups"]
                          if "asset" in g and "alignment" in g["asset"])
        step_peaks = [g["step_process"]["peak_rss_mib"] for p in v["processes"] for g in p["groups"]
                      if "step_process" in g and "children_cpu_s" in p]
        peaks = ", ".join(f"{x:.0f}" for x in (v["peak_rss_mib_per_process"][:1] + step_peaks if step_peaks
                                               else v["peak_rss_mib_per_process"]))
        if step_peaks:
            peaks += " (run process, then each step process)"
        lines.append(f"| {v['variant']}{' (FAILED)' if v['failed'] else ''} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | "
                     f"{peaks} | {d} | {a} |")
    lines += ["", f"Groups: {res['groups']}; parts add up to the whole: {res['consistent']}. Load before: "
                  f"{res['load_before']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--as-of", help="run clock (default: the last run_as_of of marts.inventory_drift)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    p.add_argument("--variants", default="all,sequential,concurrent,dagster-partitions,dagster-multiprocess")
    common.add_quiet_options(p)
    args = p.parse_args(argv)
    import duckdb

    data_dir = Path(args.data_dir).resolve()
    lake = data_dir / "lake"
    work = data_dir / "partitioned"
    work.mkdir(exist_ok=True)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        as_of = args.as_of or str(con.execute("SELECT max(run_as_of) FROM marts.inventory_drift").fetchone()[0])
        conflict = work / "conflict_key.parquet"
        con.execute(f"COPY (SELECT * FROM canonical.conflict_key) TO {_lit(conflict)} (FORMAT parquet)")
    finally:
        con.close()
    groups = plant_groups(lake)
    cfg = {"workdir": str(work), "lake": str(lake), "conflict": str(conflict), "as_of": as_of, "groups": groups}
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    os.environ[CONFIG_ENV] = str(cfg_path)
    wanted = args.variants.split(",")
    plan = {
        "all": ("one process, all plants", [(worker_plain, ([("all", None)], cfg))]),
        "sequential": ("one process, groups in turn", [(worker_plain, (list(groups.items()), cfg))]),
        "concurrent": ("two processes, concurrently (multiprocessing)",
                       [(worker_plain, ([(g, pl)], cfg)) for g, pl in groups.items()]),
        "dagster-partitions": ("dagster: StaticPartitionsDefinition, one run per partition, 2 runs at once",
                               [(worker_dagster_partition, (g, str(cfg_path))) for g in groups]),
        "dagster-multiprocess": ("dagster: one run, multiprocess executor (max_concurrent 2), per-group assets",
                                 [(worker_dagster_multiprocess, (str(cfg_path),))]),
    }
    load = common.loadavg()
    variants = []
    for key in wanted:
        label, targets = plan[key]
        common.ready_to_measure(lambda m: print(m, file=sys.stderr), [lake], max_wait=args.max_wait,
                                limit_cores=args.quiet_cores)
        print(f"[partitioned] {label} ...", file=sys.stderr, flush=True)
        v = run_variant(label, targets)
        print(f"  {v['wall_s']:.2f} s wall, {v['cpu_s']:.2f} s CPU, peak per process "
              f"{v['peak_rss_mib_per_process']} MiB", file=sys.stderr, flush=True)
        variants.append(v)
    # the groups' marts add up to the unpartitioned ones
    consistent = None
    by = {v["variant"]: v for v in variants}
    whole = by.get(plan["all"][0]) if "all" in wanted else None
    split = by.get(plan["concurrent"][0]) if "concurrent" in wanted else None
    if whole and split:
        w = whole["processes"][0]["groups"][0]
        parts = [g for pr in split["processes"] for g in pr["groups"]]
        consistent = (sum(g["drift_rows"] or 0 for g in parts) == w["drift_rows"]
                      and sum(g["alignment_rows"] or 0 for g in parts) == w["alignment_rows"]
                      and all(sum((g["drift_status"].get(k) or 0) for g in parts) == (w["drift_status"].get(k) or 0)
                              for k in w["drift_status"]))
    res = {"as_of": as_of, "groups": {k: v for k, v in groups.items()}, "variants": variants,
           "consistent": consistent, "load_before": load}
    res["markdown"] = markdown(res)
    (work / "result.json").write_text(json.dumps(res, indent=1, default=str))
    print(res["markdown"], file=sys.stderr)
    if args.json:
        print(json.dumps(res, default=str))
    return 0 if all(not v["failed"] for v in variants) else 1


if __name__ == "__main__":
    sys.exit(main())
