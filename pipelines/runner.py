"""Run the whole asset graph in-process (``distsync run``) and summarise it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import duckdb

from pipelines.resources import DistsyncResource


@dataclass
class RunOutcome:
    success: bool
    error: str | None = None
    started_at: datetime | None = None


def _instance() -> dg.DagsterInstance:
    # with DAGSTER_HOME set, CLI runs are recorded where `dagster dev` shows them
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_pipeline(resource: DistsyncResource, verbose: bool = False, selection=None) -> RunOutcome:
    from pipelines.graph import ALL_ASSETS

    started = datetime.now().astimezone()
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "ERROR"}}}}
    with _instance() as instance:
        result = dg.materialize(
            ALL_ASSETS,
            resources={"distsync": resource},
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
            selection=selection,
            tags={"distsync/as_of": resource.as_of or ""},
        )
        if result.success:
            return RunOutcome(True, started_at=started)
        return RunOutcome(False, _first_failure(result), started)


def _first_failure(result: dg.ExecuteInProcessResult) -> str:
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            err = ev.step_failure_data.error if ev.step_failure_data else None
            while err is not None and err.cause is not None and "dagster" in (err.cls_name or "").lower():
                err = err.cause
            text = (err.message.strip().splitlines() or [""])[-1] if err else "step failed"
            return f"step {ev.step_key} failed: {text}"
    skipped = [ev.step_key for ev in result.all_events if ev.event_type_value == "STEP_SKIPPED"]
    if skipped:
        return f"a blocking check failed; skipped {len(skipped)} steps downstream of it ({skipped[0]}, ...)"
    return "the run did not succeed"


def _q(con: duckdb.DuckDBPyConnection, sql: str, params=None):
    try:
        return con.execute(sql, params or []).fetchall()
    except duckdb.CatalogException:
        return None


def summary_text(resource: DistsyncResource, as_of: datetime, outcome: RunOutcome, seconds: float) -> str:
    path = resource.warehouse_path()
    lines = [f"distsync run as_of {as_of.isoformat()} — {'ok' if outcome.success else 'FAILED'} in {seconds:.1f} s"]
    if not path.exists():
        return "\n".join(lines)
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        files = _q(con, """SELECT outcome, count(*) FROM ingest.manifest WHERE ingested_at >= ? GROUP BY 1""",
                   [outcome.started_at]) or []
        counts = dict(files)
        lines.append(f"  files this run: {counts.get('accepted', 0)} accepted, {counts.get('rejected', 0)} rejected, "
                     f"{counts.get('duplicate', 0)} duplicate")
        stale = _q(con, "SELECT system || '/' || feed FROM ingest.feed_status WHERE run_as_of = ? AND stale", [as_of])
        if stale:
            lines.append("  stale feeds: " + ", ".join(r[0] for r in stale))
        drift = _q(con, "SELECT status, count(*) FROM marts.inventory_drift GROUP BY 1 ORDER BY 1")
        if drift is not None:
            lines.append("  inventory drift: " + ", ".join(f"{n} {s}" for s, n in drift))
        kpis = _q(con, "SELECT kpi, value FROM marts.kpis WHERE run_as_of = ?", [as_of])
        if kpis:
            k = dict(kpis)
            if k.get("alignment_rate") is not None:
                lines.append(f"  forecast-to-order alignment rate: {k['alignment_rate']:.1%}")
        exc = _q(con, """SELECT severity, count(*) FROM marts.exceptions WHERE status = 'open'
                         GROUP BY 1 ORDER BY CASE severity WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END""")
        if exc is not None:
            lines.append("  open exceptions: " + (", ".join(f"{n} {s}" for s, n in exc) or "none"))
        batches = _q(con, "SELECT payload_type, count(*), sum(record_count) FROM sync.batch WHERE run_as_of = ? "
                          "GROUP BY 1 ORDER BY 1", [as_of])
        if batches is not None:
            lines.append("  sync batches: " + (", ".join(f"{t} {n} ({int(r or 0)} records)" for t, n, r in batches)
                                               or "none"))
        blocked = _q(con, "SELECT payload_type, reason FROM sync.blocked WHERE run_as_of = ? ORDER BY 1", [as_of])
        for payload_type, reason in blocked or []:
            lines.append(f"  NOT SENT {payload_type}: {reason}")
    finally:
        con.close()
    report = resource.reports_path() / as_of.date().isoformat() / "index.html"
    if report.exists():
        lines.append(f"  report: {report}")
    return "\n".join(lines)
