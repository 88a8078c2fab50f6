"""Exceptions and their lifecycle (semantics.md §5, with the PO and recommendation rules
of §4 and the file/feed problems of §2).

``build_exceptions`` computes this run's *candidates* — one row per problem with a stable
``exception_id`` (md5 of type and natural key) — and merges them into the persistent
``marts.exception_state``; ``marts.exceptions`` is a view over it (``marts_ddl.py``) in
which an open exception's ``last_seen_at`` and ``age_days`` follow the newest merged run
(``marts.exception_clock``), so a run that sees the same 500,000 open problems again
writes the clock, not 500,000 rows:

* new id → ``open``, ``first_seen_at = last_seen_at = as_of`` (event ``opened``);
* open and seen again → ``last_seen_at = as_of``; severity, planner and details take
  this run's values;
* open and not seen → ``resolved``, ``resolved_at = as_of`` (event ``resolved``);
* resolved and seen again → ``open`` with a new ``first_seen_at = as_of`` and
  ``resolved_at`` cleared (event ``reopened``);
* ``age_days`` = whole days (floor) from ``first_seen_at`` to ``as_of`` for open rows, and
  to ``resolved_at`` for resolved rows (a resolved problem stops ageing).

Re-running the same ``as_of`` over the same data changes nothing (no row, no event). A run
whose ``as_of`` is older than the newest ``as_of`` already merged does not touch the
lifecycle (it would rewrite history); its metadata says so.

Candidate rules, with the decisions taken where the spec is silent:

* ``INVENTORY_DRIFT``: a pair with ``status_<pair> = 'drift'`` in ``marts.inventory_drift``
  (unverifiable pairs never raise one); severity by that pair's drift value.
* ``PROJECTED_SHORTAGE`` / ``EXCESS_SUPPLY``: ``first_shortage_week < lead_time_weeks`` /
  ``excess_qty > 0`` in ``marts.forecast_order_alignment``, whatever the row's status.
* ``LATE_PO``: an outstanding PO line (open *and* with open quantity left, see
  ``alignment.OUTSTANDING_PO_LINE``) due before week 0's Monday; ``high`` when
  ``run_date − EINDT > late_po_high_days``.
* ``UNCONFIRMED_PO``: an outstanding line with no ``CONF_DATE`` and
  ``run_date − BEDAT > po_confirmation_days``. (A fully received line that nobody flagged
  completed is neither late nor waiting for a confirmation.)
* Recommendations: ``RELEASED`` and ``released_at ≤ as_of − recommendation_conversion_days``
  (the grace period applies to both rules). ``UNCONVERTED_RECOMMENDATION`` when no
  non-deleted PO line has it in ``PLAN_REF``; ``RECOMMENDATION_QTY_MISMATCH`` when the
  base-unit ``MENGE`` of those lines sums to something else (beyond ``match_epsilon``).
* ``UNMAPPED_CODE``: ``ingest.quarantine`` rows with rule ``unmapped_code`` of a current
  file version (``(file_path, sha256)`` in ``ingest.current_files``); reference
  ``system/kind/code`` in lower-case system.
* ``CONTRACT_VIOLATION``: per (file, rule) over the other quarantine rows of current file
  versions; details carry the number of distinct rows.
* ``FEED_REJECTED``: the latest version of a path (ignoring ``duplicate`` re-deliveries) is
  ``rejected``, and for snapshot feeds it is newer than the newest current file of its
  feed (an older rejected file is superseded and resolves); for delta/event feeds
  (``purchase_order``, ``planned_order``, ``transaction``) it stays open until a corrected
  version of that path is accepted.
* ``STALE_FEED``: ``ingest.feed_status`` rows with ``stale`` for the run (the latest
  ``run_as_of`` not after ``as_of``); reference ``system/feed``.
* Planner: the item-location's ``planner_code`` (``UNASSIGNED`` when none, and for
  file/feed exceptions).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

from contracts.settings import Settings
from contracts.warehouse import table_exists

from .alignment import OUTSTANDING_PO_LINE
from .marts_ddl import age_days_sql, ensure_marts, markdown_table, run_clock, transaction

EXCEPTION_TYPES = (
    "INVENTORY_DRIFT",
    "PROJECTED_SHORTAGE",
    "EXCESS_SUPPLY",
    "LATE_PO",
    "UNCONFIRMED_PO",
    "UNCONVERTED_RECOMMENDATION",
    "RECOMMENDATION_QTY_MISMATCH",
    "UNMAPPED_CODE",
    "CONTRACT_VIOLATION",
    "FEED_REJECTED",
    "STALE_FEED",
)
DELTA_FEEDS = ("purchase_order", "planned_order", "transaction")


def _ts(expr: str) -> str:
    """ISO-8601 UTC text of a TIMESTAMPTZ, independent of the session time zone."""
    return f"strftime(({expr}) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ')"


_PLANNER = "coalesce(nullif(trim(il.planner_code), ''), 'UNASSIGNED')"
_IL_JOIN = "LEFT JOIN canonical.item_location il ON il.item_id = {a}.item_id AND il.location_id = {a}.location_id"

# Each candidate query yields: exception_type, exception_key, severity, item_id,
# location_id, reference, planner_code, details.
_DRIFT = f"""
SELECT 'INVENTORY_DRIFT' AS exception_type,
       item_id || '|' || location_id || '|' || pair AS exception_key,
       severity, item_id, location_id, pair AS reference, planner_code,
       json_object('pair', pair, 'erp_qty', erp_qty, 'other_qty', other_qty,
                   'other_aligned_qty', aligned_qty, 'diff', diff, 'drift_value', drift_value,
                   'standard_cost', standard_cost, 'currency', currency,
                   'erp_present', erp_present, 'other_present', other_present,
                   'erp_as_of', {_ts('erp_as_of')}, 'other_as_of', {_ts('other_as_of')})::VARCHAR AS details
FROM (
    SELECT item_id, location_id, planner_code, 'wms' AS pair, severity_wms AS severity,
           erp_qty, wms_qty AS other_qty, wms_aligned_qty AS aligned_qty, diff_wms AS diff,
           drift_value_wms AS drift_value, standard_cost, currency, erp_present,
           wms_present AS other_present, erp_as_of, wms_as_of AS other_as_of
    FROM marts.inventory_drift WHERE status_wms = 'drift'
    UNION ALL
    SELECT item_id, location_id, planner_code, 'planning', severity_planning,
           erp_qty, planning_qty, planning_aligned_qty, diff_planning,
           drift_value_planning, standard_cost, currency, erp_present,
           planning_present, erp_as_of, planning_as_of
    FROM marts.inventory_drift WHERE status_planning = 'drift'
)
"""

_SHORTAGE = """
SELECT 'PROJECTED_SHORTAGE', item_id || '|' || location_id, 'high', item_id, location_id,
       NULL, planner_code,
       json_object('first_shortage_week', first_shortage_week, 'shortage_qty', shortage_qty,
                   'on_hand', on_hand, 'safety_stock', safety_stock,
                   'lead_time_weeks', lead_time_weeks, 'status', status)::VARCHAR
FROM marts.forecast_order_alignment
WHERE first_shortage_week < lead_time_weeks
"""

_EXCESS = """
SELECT 'EXCESS_SUPPLY', item_id || '|' || location_id, 'low', item_id, location_id,
       NULL, planner_code,
       json_object('excess_qty', excess_qty, 'projected_end', projected_end,
                   'excess_threshold', excess_threshold, 'avg_weekly_demand', avg_weekly_demand,
                   'safety_stock', safety_stock, 'status', status)::VARCHAR
FROM marts.forecast_order_alignment
WHERE excess_qty > 0
"""

_PO = f"""
SELECT exception_type, ebeln || '/' || ebelp, severity, item_id, location_id,
       ebeln || '/' || ebelp, planner_code,
       json_object('ebeln', ebeln, 'ebelp', ebelp, 'supplier', supplier,
                   'order_date', order_date, 'delivery_date', delivery_date,
                   'days_late', days_late, 'days_since_order', days_since_order,
                   'open_qty', open_qty, 'ordered_qty', ordered_qty, 'received_qty', received_qty,
                   'order_uom', order_uom, 'plan_ref', plan_ref)::VARCHAR
FROM (
    SELECT po.*, {_PLANNER} AS planner_code,
           greatest(coalesce(ordered_qty, 0) - coalesce(received_qty, 0), 0) AS open_qty,
           datediff('day', delivery_date, $run_date) AS days_late,
           datediff('day', order_date, $run_date) AS days_since_order,
           t.exception_type,
           CASE WHEN t.exception_type = 'UNCONFIRMED_PO' THEN 'low'
                WHEN datediff('day', delivery_date, $run_date) > $late_high_days THEN 'high'
                ELSE 'medium' END AS severity
    FROM canonical.purchase_order_line po
    {_IL_JOIN.format(a='po')}
    JOIN (VALUES ('LATE_PO'), ('UNCONFIRMED_PO')) t(exception_type)
      ON (t.exception_type = 'LATE_PO' AND po.delivery_date < $w0)
      OR (t.exception_type = 'UNCONFIRMED_PO' AND po.confirmation_date IS NULL
          AND datediff('day', po.order_date, $run_date) > $conf_days)
    WHERE {OUTSTANDING_PO_LINE.format(eps='$eps')}
    QUALIFY row_number() OVER (PARTITION BY t.exception_type, po.ebeln, po.ebelp
                               ORDER BY po.changed_at DESC NULLS LAST, po.extract_ts DESC NULLS LAST) = 1
)
"""

_RECOMMENDATION = f"""
SELECT CASE WHEN r.plan_ref IS NULL THEN 'UNCONVERTED_RECOMMENDATION' ELSE 'RECOMMENDATION_QTY_MISMATCH' END,
       p.recommendation_id,
       CASE WHEN r.plan_ref IS NULL THEN 'medium' ELSE 'low' END,
       p.item_id, p.location_id, p.recommendation_id, {_PLANNER},
       json_object('recommendation_id', p.recommendation_id, 'recommended_qty', p.qty,
                   'source_qty', p.source_qty, 'source_uom', p.source_uom,
                   'need_date', p.need_date, 'released_at', {_ts('p.released_at')},
                   'ordered_qty', r.ordered_qty, 'po_lines', r.lines)::VARCHAR
FROM (
    SELECT * FROM canonical.planned_order
    QUALIFY row_number() OVER (PARTITION BY recommendation_id
                               ORDER BY extract_ts DESC NULLS LAST, released_at DESC NULLS LAST) = 1
) p
{_IL_JOIN.format(a='p')}
LEFT JOIN (
    SELECT plan_ref, sum(coalesce(ordered_qty, 0)) AS ordered_qty,
           list_sort(list(ebeln || '/' || ebelp)) AS lines
    FROM canonical.purchase_order_line
    WHERE NOT coalesce(deleted, false) AND nullif(trim(plan_ref), '') IS NOT NULL
    GROUP BY plan_ref
) r ON r.plan_ref = p.recommendation_id
WHERE upper(p.status) = 'RELEASED' AND p.released_at <= $release_cutoff
  AND (r.plan_ref IS NULL OR abs(r.ordered_qty - coalesce(p.qty, 0)) > $eps)
"""

_CURRENT_QUARANTINE = """
SELECT q.*, coalesce(lower(q.system), split_part(q.file_path, '/', 1)) AS sys
FROM ingest.quarantine q
JOIN (SELECT DISTINCT file_path, sha256 FROM ingest.current_files) f
  ON f.file_path = q.file_path AND f.sha256 IS NOT DISTINCT FROM q.sha256
"""

_UNMAPPED = f"""
SELECT 'UNMAPPED_CODE', sys || '/' || kind || '/' || code, 'medium', NULL, NULL,
       sys || '/' || kind || '/' || code, 'UNASSIGNED',
       json_object('system', sys, 'code_kind', kind, 'code', code, 'rows', n_rows,
                   'files', files)::VARCHAR
FROM (
    SELECT sys, coalesce(lower(code_kind), 'unknown') AS kind, code,
           count(DISTINCT (file_path, row_number)) AS n_rows,
           list(DISTINCT file_path ORDER BY file_path) AS files
    FROM ({_CURRENT_QUARANTINE})
    WHERE rule = 'unmapped_code' AND code IS NOT NULL
    GROUP BY ALL
)
"""

_CONTRACT = f"""
SELECT 'CONTRACT_VIOLATION', file_path || '|' || rule, 'medium', NULL, NULL, file_path, 'UNASSIGNED',
       json_object('file', file_path, 'rule', rule, 'rows', n_rows, 'system', sys, 'feed', feed,
                   'columns', columns, 'example', example)::VARCHAR
FROM (
    SELECT file_path, rule, any_value(sys) AS sys, any_value(feed) AS feed,
           count(DISTINCT row_number) AS n_rows,
           list(DISTINCT "column" ORDER BY "column") FILTER (WHERE "column" IS NOT NULL) AS columns,
           min(detail) AS example
    FROM ({_CURRENT_QUARANTINE})
    WHERE rule IS NOT NULL AND rule <> 'unmapped_code'
    GROUP BY file_path, rule
)
"""

_REJECTED = f"""
SELECT 'FEED_REJECTED', file_path, 'high', NULL, NULL, file_path, 'UNASSIGNED',
       json_object('file', file_path, 'system', system, 'feed', feed, 'reason', reason,
                   'extract_ts', {_ts('extract_ts')}, 'sha256', sha256,
                   'newest_current_extract_ts', {_ts('newest')})::VARCHAR
FROM (
    SELECT l.*, c.newest
    FROM (
        SELECT * FROM ingest.manifest
        WHERE outcome IS DISTINCT FROM 'duplicate' AND (run_as_of IS NULL OR run_as_of <= $as_of)
        QUALIFY row_number() OVER (PARTITION BY file_path ORDER BY ingested_at DESC NULLS LAST,
                                   run_as_of DESC NULLS LAST, extract_ts DESC NULLS LAST) = 1
    ) l
    LEFT JOIN (
        SELECT system, feed, max(extract_ts) AS newest FROM ingest.current_files GROUP BY ALL
    ) c ON c.system = l.system AND c.feed = l.feed
    WHERE l.outcome = 'rejected'
      AND (l.feed IN {DELTA_FEEDS} OR l.feed IS NULL OR c.newest IS NULL OR l.extract_ts > c.newest)
)
"""

_STALE = f"""
SELECT 'STALE_FEED', lower(system) || '/' || feed, 'high', NULL, NULL, lower(system) || '/' || feed,
       'UNASSIGNED',
       json_object('system', lower(system), 'feed', feed, 'newest_file', newest_file,
                   'newest_extract_ts', {_ts('newest_extract_ts')}, 'age_hours', age_hours,
                   'freshness_limit_hours', freshness_limit_hours)::VARCHAR
FROM ingest.feed_status
WHERE stale
  AND run_as_of = (SELECT max(run_as_of) FROM ingest.feed_status WHERE run_as_of <= $as_of)
"""


def _candidates_sql(con: duckdb.DuckDBPyConnection) -> str:
    parts = [_DRIFT, _SHORTAGE, _EXCESS]
    needs = {
        _PO: ("canonical.purchase_order_line", "canonical.item_location"),
        _RECOMMENDATION: ("canonical.planned_order", "canonical.purchase_order_line", "canonical.item_location"),
        _UNMAPPED: ("ingest.quarantine", "ingest.current_files"),
        _CONTRACT: ("ingest.quarantine", "ingest.current_files"),
        _REJECTED: ("ingest.manifest", "ingest.current_files"),
        _STALE: ("ingest.feed_status",),
    }
    for sql, tables in needs.items():
        if all(table_exists(con, t) for t in tables):
            parts.append(sql)
    union = "\nUNION ALL\n".join(f"({p})" for p in parts)
    return f"""
    SELECT md5(exception_type || '|' || exception_key) AS exception_id, *
    FROM (
        SELECT * FROM (
            SELECT NULL::VARCHAR AS exception_type, NULL::VARCHAR AS exception_key,
                   NULL::VARCHAR AS severity, NULL::VARCHAR AS item_id, NULL::VARCHAR AS location_id,
                   NULL::VARCHAR AS reference, NULL::VARCHAR AS planner_code, NULL::VARCHAR AS details
            WHERE false
            UNION ALL
            {union}
        )
        WHERE exception_key IS NOT NULL
    )
    """


def _check_marts_run(con: duckdb.DuckDBPyConnection, as_of: datetime) -> None:
    for table in ("marts.inventory_drift", "marts.forecast_order_alignment"):
        runs = [r[0] for r in con.execute(f"SELECT DISTINCT run_as_of FROM {table}").fetchall()]
        if runs and runs != [as_of]:
            raise ValueError(
                f"{table} holds run {runs[0].isoformat()}, not {as_of.isoformat()}: build it for this as_of first"
            )


def build_exceptions(
    con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime | str
) -> dict[str, Any]:
    """Merge this run's exception candidates into ``marts.exceptions`` (see module doc)."""
    clock = run_clock(as_of)
    params = {
        "as_of": clock.as_of,
        "run_date": clock.run_date,
        "w0": clock.week0_start,
        "eps": float(settings.match_epsilon),
        "late_high_days": float(settings.late_po_high_days),
        "conf_days": float(settings.po_confirmation_days),
        "release_cutoff": clock.as_of - timedelta(days=float(settings.recommendation_conversion_days)),
    }
    ensure_marts(con)
    _check_marts_run(con, clock.as_of)
    sql = _candidates_sql(con)
    used = {k: v for k, v in params.items() if f"${k}" in sql}
    latest = con.execute(
        "SELECT max(greatest(last_seen_at, coalesce(resolved_at, last_seen_at))) FROM marts.exceptions"
    ).fetchone()[0]
    skipped = latest is not None and clock.as_of < latest
    try:
        # temp tables first, writes in one transaction (see drift.py for why)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _exc_candidates AS {sql}", used)
        if not skipped:
            _actions(con)
            with transaction(con):
                _merge(con, clock.as_of)
    finally:
        con.execute("DROP TABLE IF EXISTS _exc_candidates")
        con.execute("DROP TABLE IF EXISTS _exc_actions")
    meta = exceptions_metadata(con, clock.as_of)
    if skipped:
        meta["lifecycle_skipped"] = (
            f"as_of {clock.as_of.isoformat()} is older than the newest merged run {latest.isoformat()}; "
            "exceptions left unchanged"
        )
    return meta


def _actions(con: duckdb.DuckDBPyConnection) -> None:
    """What happens to each id: opened | resolved | reopened | changed (seen again with other
    values) | seen (null: nothing)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _exc_actions AS
        SELECT * FROM (
        SELECT coalesce(c.exception_id, e.exception_id) AS exception_id,
               coalesce(c.exception_type, e.exception_type) AS exception_type,
               CASE WHEN e.exception_id IS NULL THEN 'opened'
                    WHEN c.exception_id IS NULL AND e.status = 'open' THEN 'resolved'
                    WHEN c.exception_id IS NOT NULL AND e.status = 'resolved' THEN 'reopened'
                    WHEN c.exception_id IS NOT NULL
                         AND (e.severity IS DISTINCT FROM c.severity OR e.item_id IS DISTINCT FROM c.item_id
                              OR e.location_id IS DISTINCT FROM c.location_id
                              OR e.reference IS DISTINCT FROM c.reference
                              OR e.planner_code IS DISTINCT FROM c.planner_code
                              OR e.details IS DISTINCT FROM c.details) THEN 'changed'
                    WHEN c.exception_id IS NOT NULL THEN 'seen' END AS action
        FROM _exc_candidates c
        FULL OUTER JOIN marts.exception_state e USING (exception_id)
        ) WHERE action IS NOT NULL AND action <> 'seen'
        """
    )


def _merge(con: duckdb.DuckDBPyConnection, as_of: datetime) -> None:
    p = {"as_of": as_of}
    # resolved: last seen by the previous merged run (the clock), stops ageing now
    con.execute(
        f"""
        UPDATE marts.exception_state e
        SET status = 'resolved', resolved_at = $as_of,
            last_seen_at = coalesce((SELECT max(as_of) FROM marts.exception_clock), e.last_seen_at),
            age_days = {age_days_sql("$as_of::TIMESTAMPTZ", "e.first_seen_at")}
        FROM _exc_actions a
        WHERE a.exception_id = e.exception_id AND a.action = 'resolved'
        """,
        p,
    )
    # seen again: its clock moves with marts.exception_clock (no write per open row); it
    # takes this run's values where they changed
    con.execute(
        """
        UPDATE marts.exception_state e
        SET severity = c.severity, item_id = c.item_id, location_id = c.location_id, reference = c.reference,
            planner_code = c.planner_code, details = c.details
        FROM _exc_candidates c, _exc_actions a
        WHERE c.exception_id = e.exception_id AND a.exception_id = e.exception_id AND a.action = 'changed'
        """
    )
    con.execute(
        """
        UPDATE marts.exception_state e
        SET status = 'open', severity = c.severity, item_id = c.item_id, location_id = c.location_id,
            reference = c.reference, planner_code = c.planner_code, details = c.details,
            first_seen_at = $as_of, last_seen_at = $as_of, resolved_at = NULL, age_days = 0
        FROM _exc_candidates c, _exc_actions a
        WHERE c.exception_id = e.exception_id AND a.exception_id = e.exception_id AND a.action = 'reopened'
        """,
        p,
    )
    con.execute(
        """
        INSERT INTO marts.exception_state BY NAME
        SELECT c.exception_id, c.exception_type, c.severity, 'open' AS status, c.item_id, c.location_id,
               c.reference, c.planner_code, c.details,
               $as_of::TIMESTAMPTZ AS first_seen_at, $as_of::TIMESTAMPTZ AS last_seen_at,
               NULL::TIMESTAMPTZ AS resolved_at, 0 AS age_days
        FROM _exc_candidates c JOIN _exc_actions a USING (exception_id)
        WHERE a.action = 'opened'
        """,
        p,
    )
    con.execute(
        """
        INSERT INTO marts.exception_events BY NAME
        SELECT exception_id, exception_type, action AS event, $as_of::TIMESTAMPTZ AS "at"
        FROM _exc_actions WHERE action IN ('opened', 'resolved', 'reopened')
        """,
        p,
    )
    con.execute("DELETE FROM marts.exception_clock")
    con.execute("INSERT INTO marts.exception_clock VALUES ($as_of)", p)


def exceptions_metadata(con: duckdb.DuckDBPyConnection, as_of: datetime) -> dict[str, Any]:
    by_sev = dict(
        con.execute("SELECT severity, count(*) FROM marts.exceptions WHERE status = 'open' GROUP BY 1").fetchall()
    )
    events = dict(
        con.execute('SELECT event, count(*) FROM marts.exception_events WHERE "at" = $as_of GROUP BY 1', {"as_of": as_of})
        .fetchall()
    )
    by_type = con.execute(
        """
        SELECT exception_type,
               count(*) FILTER (WHERE severity = 'high'),
               count(*) FILTER (WHERE severity = 'medium'),
               count(*) FILTER (WHERE severity = 'low'),
               count(*)
        FROM marts.exceptions WHERE status = 'open'
        GROUP BY 1 ORDER BY 5 DESC, 1
        """
    ).fetchall()
    return {
        "open_exceptions": int(sum(by_sev.values())),
        "open_high": int(by_sev.get("high", 0)),
        "open_medium": int(by_sev.get("medium", 0)),
        "open_low": int(by_sev.get("low", 0)),
        "opened": int(events.get("opened", 0)),
        "reopened": int(events.get("reopened", 0)),
        "resolved": int(events.get("resolved", 0)),
        "open_by_type": markdown_table(["type", "high", "medium", "low", "total"], by_type),
    }
