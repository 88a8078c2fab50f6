"""Three-way inventory drift (semantics.md §3) — ERP vs WMS and ERP vs planning.

One DuckDB statement over ``canonical.inventory_snapshot``, ``canonical.inventory_txn``,
``canonical.conflict_key``, ``canonical.item`` and ``canonical.item_location`` writes
``marts.inventory_drift`` (this run, one Parquet file in the lake: ``mart_store.py``) and
adds it to ``marts.inventory_drift_history``. A run whose snapshots, masters, settings
and movements inside the snapshot window are those of the last build (typically an hourly
run whose only news are movements after the snapshots) reuses the last file instead of
recomputing it.

Rules, with the decisions taken where the spec is silent:

* Quantities per item-location are summed over every row of a system's current snapshot
  (storage locations, lots, bins, statuses); a key with no row in a snapshot counts 0 there
  and is flagged ``<system>_present = false``.
* Each snapshot's time is its ``snapshot_at`` for that key; a key absent from a snapshot
  takes that system's snapshot time (the max ``snapshot_at`` of the system), so stock that
  moved out completely before the snapshot still rolls back correctly.
* Time alignment: ``aligned = qty − shift`` with
  ``shift = Σ m(T_e < txn_at ≤ T_x) − Σ m(T_x < txn_at ≤ T_e)``, i.e. exactly the two
  cases of the spec in one expression.
* Tolerance: the location override (both ``abs_tol`` and ``rel_tol`` of that override)
  wins over the material-group override, which wins over the global settings.
* Unverifiable: a ``canonical.conflict_key`` row of system ``erp`` makes both pairs
  unverifiable, ``wms`` / ``planning`` the pair of that system. A system with no current
  snapshot at all (no row in ``canonical.inventory_snapshot``) makes its pairs (every pair
  for ERP) unverifiable too, reason ``no_<system>_snapshot``: comparing against a missing
  feed would report every key as drift. Conflict keys join the universe even when all
  their rows were quarantined.
* ``drift_value_p = |diff_p| × standard_cost`` for verifiable pairs (null when
  unverifiable; a missing cost counts 0). Severity is set only on drifting pairs.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import duckdb

from contracts.outgoing import check_mart
from contracts.settings import Settings
from contracts.warehouse import default_lake_dir

from .incremental import carry_over, input_fingerprint, record_build
from .mart_store import add_history_run, run_file, write_run_mart
from .marts_ddl import ensure_marts, markdown_table, plain, run_clock

PAIRS = ("wms", "planning")


def _load_tolerances(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    groups, locs = settings.tolerance_rows()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _drift_tol_group (material_group VARCHAR, abs_tol DOUBLE, rel_tol DOUBLE)"
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _drift_tol_loc (location_id VARCHAR, abs_tol DOUBLE, rel_tol DOUBLE)")
    if groups:
        con.executemany(
            "INSERT INTO _drift_tol_group VALUES (?, ?, ?)",
            [[g["material_group"], g["abs_tol"], g["rel_tol"]] for g in groups],
        )
    if locs:
        con.executemany(
            "INSERT INTO _drift_tol_loc VALUES (?, ?, ?)",
            [[loc["location_id"], loc["abs_tol"], loc["rel_tol"]] for loc in locs],
        )


# each system's newest snapshot time and the snapshot window (oldest to newest snapshot
# time): the drift aligns with the movements in that window, and the build fingerprint
# digests exactly those movements (_MOVEMENT_DIGEST_SQL), so both read them through
# this CTE and this condition (t: canonical.inventory_txn, s: sys_time)
_SYS_TIME_CTE = """
sys_time AS (
    SELECT max(snapshot_at) FILTER (WHERE system = 'erp')      AS t_erp,
           max(snapshot_at) FILTER (WHERE system = 'wms')      AS t_wms,
           max(snapshot_at) FILTER (WHERE system = 'planning') AS t_planning,
           min(snapshot_at) AS t_min, max(snapshot_at) AS t_max
    FROM canonical.inventory_snapshot
    WHERE system IN ('erp', 'wms', 'planning')
)"""
_IN_SNAPSHOT_WINDOW = "t.txn_at > s.t_min AND t.txn_at <= s.t_max"

_DRIFT_SQL = f"""
WITH {_SYS_TIME_CTE},
per_key AS (
    SELECT item_id, location_id,
           sum(CASE WHEN system = 'erp' THEN qty END) AS erp_qty,
           sum(CASE WHEN system = 'wms' THEN qty END) AS wms_qty,
           sum(CASE WHEN system = 'planning' THEN qty END) AS planning_qty,
           max(CASE WHEN system = 'erp' THEN snapshot_at END) AS erp_at,
           max(CASE WHEN system = 'wms' THEN snapshot_at END) AS wms_at,
           max(CASE WHEN system = 'planning' THEN snapshot_at END) AS planning_at
    FROM canonical.inventory_snapshot
    WHERE system IN ('erp', 'wms', 'planning') AND item_id IS NOT NULL AND location_id IS NOT NULL
    GROUP BY item_id, location_id
),
conflicts AS (
    SELECT item_id, location_id,
           bool_or(lower(system) = 'erp')      AS c_erp,
           bool_or(lower(system) = 'wms')      AS c_wms,
           bool_or(lower(system) = 'planning') AS c_planning
    FROM canonical.conflict_key
    WHERE item_id IS NOT NULL AND location_id IS NOT NULL
      AND lower(system) IN ('erp', 'wms', 'planning')
    GROUP BY item_id, location_id
),
keyed AS (
    SELECT coalesce(p.item_id, c.item_id)         AS item_id,
           coalesce(p.location_id, c.location_id) AS location_id,
           coalesce(p.erp_qty, 0)      AS erp_qty,
           coalesce(p.wms_qty, 0)      AS wms_qty,
           coalesce(p.planning_qty, 0) AS planning_qty,
           -- a system has rows for the key exactly when it has a snapshot time for it
           -- (snapshot_at is never null in the canonical contract)
           p.erp_at IS NOT NULL      AS erp_present,
           p.wms_at IS NOT NULL      AS wms_present,
           p.planning_at IS NOT NULL AS planning_present,
           coalesce(p.erp_at, s.t_erp)           AS erp_as_of,
           coalesce(p.wms_at, s.t_wms)           AS wms_as_of,
           coalesce(p.planning_at, s.t_planning) AS planning_as_of,
           coalesce(c.c_erp, false)      AS c_erp,
           coalesce(c.c_wms, false)      AS c_wms,
           coalesce(c.c_planning, false) AS c_planning,
           s.t_erp IS NULL      AS no_erp,
           s.t_wms IS NULL      AS no_wms,
           s.t_planning IS NULL AS no_planning
    FROM per_key p
    FULL OUTER JOIN conflicts c USING (item_id, location_id)
    CROSS JOIN sys_time s
),
moves AS (
    SELECT k.item_id, k.location_id,
           sum(CASE WHEN t.txn_at > k.erp_as_of AND t.txn_at <= k.wms_as_of THEN t.qty
                    WHEN t.txn_at > k.wms_as_of AND t.txn_at <= k.erp_as_of THEN -t.qty
                    ELSE 0 END) AS wms_shift,
           sum(CASE WHEN t.txn_at > k.erp_as_of AND t.txn_at <= k.planning_as_of THEN t.qty
                    WHEN t.txn_at > k.planning_as_of AND t.txn_at <= k.erp_as_of THEN -t.qty
                    ELSE 0 END) AS planning_shift
    -- the movements inside the snapshot window against the keys' three snapshot times only:
    -- DuckDB then builds its hash table on the movements, not on a million 20-column keys
    FROM (SELECT t.item_id, t.location_id, t.qty, t.txn_at
          FROM canonical.inventory_txn t, sys_time s
          WHERE {_IN_SNAPSHOT_WINDOW}) t
    JOIN (SELECT item_id, location_id, erp_as_of, wms_as_of, planning_as_of FROM keyed) k
      USING (item_id, location_id)
    GROUP BY k.item_id, k.location_id
),
tol AS (
    SELECT k.*,
           coalesce(m.wms_shift, 0)      AS wms_movement_qty,
           coalesce(m.planning_shift, 0) AS planning_movement_qty,
           i.material_group, i.currency,
           coalesce(i.standard_cost, 0) AS standard_cost,
           coalesce(nullif(trim(il.planner_code), ''), 'UNASSIGNED') AS planner_code,
           CASE WHEN tl.location_id IS NOT NULL THEN tl.abs_tol
                WHEN tg.material_group IS NOT NULL THEN tg.abs_tol
                ELSE $abs_tol END AS abs_tol,
           CASE WHEN tl.location_id IS NOT NULL THEN tl.rel_tol
                WHEN tg.material_group IS NOT NULL THEN tg.rel_tol
                ELSE $rel_tol END AS rel_tol,
           CASE WHEN tl.location_id IS NOT NULL THEN 'location'
                WHEN tg.material_group IS NOT NULL THEN 'material_group'
                ELSE 'global' END AS tolerance_source
    FROM keyed k
    LEFT JOIN moves m USING (item_id, location_id)
    LEFT JOIN canonical.item i ON i.item_id = k.item_id
    -- a blank planner code is UNASSIGNED whether or not it joins; leaving those rows out
    -- also makes DuckDB build the join on item_location's three columns (half the cost)
    LEFT JOIN (SELECT item_id, location_id, planner_code FROM canonical.item_location
               WHERE nullif(trim(planner_code), '') IS NOT NULL) il
           ON il.item_id = k.item_id AND il.location_id = k.location_id
    LEFT JOIN _drift_tol_loc tl ON tl.location_id = k.location_id
    LEFT JOIN _drift_tol_group tg ON tg.material_group = i.material_group
),
diffs AS (
    SELECT *,
           wms_qty - wms_movement_qty           AS wms_aligned_qty,
           planning_qty - planning_movement_qty AS planning_aligned_qty,
           (wms_qty - wms_movement_qty) - erp_qty           AS diff_wms,
           (planning_qty - planning_movement_qty) - erp_qty AS diff_planning,
           abs_tol + rel_tol * abs(erp_qty) AS allowed_diff,
           (c_erp OR no_erp)           AS unverifiable_erp,
           (c_wms OR no_wms)           AS unverifiable_wms,
           (c_planning OR no_planning) AS unverifiable_planning
    FROM tol
),
status AS (
    SELECT *,
           CASE WHEN unverifiable_erp OR unverifiable_wms THEN 'unverifiable'
                WHEN abs(diff_wms) <= $eps THEN 'match'
                WHEN abs(diff_wms) <= allowed_diff THEN 'within_tolerance'
                ELSE 'drift' END AS status_wms,
           CASE WHEN unverifiable_erp OR unverifiable_planning THEN 'unverifiable'
                WHEN abs(diff_planning) <= $eps THEN 'match'
                WHEN abs(diff_planning) <= allowed_diff THEN 'within_tolerance'
                ELSE 'drift' END AS status_planning
    FROM diffs
)
SELECT item_id, location_id, planner_code,
       erp_qty, wms_qty, wms_aligned_qty, planning_qty, planning_aligned_qty,
       erp_present, wms_present, planning_present,
       diff_wms, diff_planning, status_wms, status_planning,
       CASE WHEN status_wms <> 'unverifiable' THEN abs(diff_wms) * standard_cost END AS drift_value_wms,
       CASE WHEN status_planning <> 'unverifiable' THEN abs(diff_planning) * standard_cost END AS drift_value_planning,
       CASE WHEN 'unverifiable' IN (status_wms, status_planning) THEN 'unverifiable'
            WHEN 'drift' IN (status_wms, status_planning) THEN 'drift'
            WHEN 'within_tolerance' IN (status_wms, status_planning) THEN 'within_tolerance'
            ELSE 'match' END AS status,
       erp_as_of, wms_as_of, planning_as_of,
       $as_of::TIMESTAMPTZ AS run_as_of,
       material_group, standard_cost, currency,
       wms_movement_qty, planning_movement_qty,
       abs_tol, rel_tol, tolerance_source, allowed_diff,
       CASE WHEN status_wms = 'drift' THEN
            CASE WHEN abs(diff_wms) * standard_cost >= $sev_high THEN 'high'
                 WHEN abs(diff_wms) * standard_cost >= $sev_medium THEN 'medium'
                 ELSE 'low' END END AS severity_wms,
       CASE WHEN status_planning = 'drift' THEN
            CASE WHEN abs(diff_planning) * standard_cost >= $sev_high THEN 'high'
                 WHEN abs(diff_planning) * standard_cost >= $sev_medium THEN 'medium'
                 ELSE 'low' END END AS severity_planning,
       unverifiable_erp, unverifiable_wms, unverifiable_planning,
       nullif(concat_ws(', ',
            CASE WHEN c_erp THEN 'conflicting_duplicate_erp' END,
            CASE WHEN c_wms THEN 'conflicting_duplicate_wms' END,
            CASE WHEN c_planning THEN 'conflicting_duplicate_planning' END,
            CASE WHEN no_erp THEN 'no_erp_snapshot' END,
            CASE WHEN no_wms THEN 'no_wms_snapshot' END,
            CASE WHEN no_planning THEN 'no_planning_snapshot' END), '') AS unverifiable_reason
FROM status
"""


DRIFT_INPUTS = ["canonical.inventory_snapshot", "canonical.item", "canonical.item_location"]

# the WMS movements that can move a drift figure: those between the oldest and the newest
# snapshot time (the conflict keys are rebuilt with canonical.inventory_snapshot)
_MOVEMENT_DIGEST_SQL = f"""
WITH {_SYS_TIME_CTE}
SELECT count(*), coalesce(bit_xor(hash(t.txn_id, t.item_id, t.location_id, t.qty, t.txn_at)), 0)
FROM canonical.inventory_txn t, sys_time s
WHERE {_IN_SNAPSHOT_WINDOW}
"""


def build_inventory_drift(
    con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime | str,
    lake_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Publish ``marts.inventory_drift`` for this run and add it to the history.

    When the snapshots, masters, settings and the movements inside the snapshot window
    are those of the last build, the last file is carried over to this run unchanged.
    Returns metadata: item-locations by status, pairs by status, the drift value total
    (drifting pairs only), a markdown table of the 10 largest drifts, ``recomputed`` and
    ``contract`` (the mart contract's result, ``contracts/outgoing.py``).
    """
    clock = run_clock(as_of)
    lake_dir = lake_dir or default_lake_dir(con)
    ensure_marts(con)
    movements = con.execute(_MOVEMENT_DIGEST_SQL).fetchone()
    fp = input_fingerprint(con, DRIFT_INPUTS, settings, "", extra=f"movements={movements}")
    contract = carry_over(con, "inventory_drift", fp, ["marts.inventory_drift"], lake_dir, clock.as_of)
    recomputed = contract is None
    if recomputed:
        params = {
            "as_of": clock.as_of,
            "abs_tol": float(settings.abs_tol),
            "rel_tol": float(settings.rel_tol),
            "eps": float(settings.match_epsilon),
            "sev_high": float(settings.severity_high_value),
            "sev_medium": float(settings.severity_medium_value),
        }
        _load_tolerances(con, settings)
        try:
            file = write_run_mart(con, "marts.inventory_drift", lake_dir, clock.as_of, _DRIFT_SQL, params)
        finally:
            for temp in ("_drift_tol_group", "_drift_tol_loc"):
                con.execute(f"DROP TABLE IF EXISTS {temp}")
        contract = check_mart(con, "marts.inventory_drift", file)
        record_build(con, "inventory_drift", fp, contract)
    add_history_run(con, lake_dir, clock.as_of, run_file(lake_dir, "marts.inventory_drift", clock.as_of))
    return {**drift_metadata(con), "recomputed": recomputed, "contract": contract}


def drift_metadata(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    by_status = dict(con.execute("SELECT status, count(*) FROM marts.inventory_drift GROUP BY 1").fetchall())
    row = con.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE status_wms = 'drift'),
               count(*) FILTER (WHERE status_planning = 'drift'),
               coalesce(sum(drift_value_wms) FILTER (WHERE status_wms = 'drift'), 0)
             + coalesce(sum(drift_value_planning) FILTER (WHERE status_planning = 'drift'), 0)
        FROM marts.inventory_drift
        """
    ).fetchone()
    top = con.execute(
        """
        SELECT item_id, location_id, planner_code, erp_qty, wms_aligned_qty, planning_aligned_qty,
               status_wms, status_planning,
               greatest(CASE WHEN status_wms = 'drift' THEN drift_value_wms ELSE 0 END,
                        CASE WHEN status_planning = 'drift' THEN drift_value_planning ELSE 0 END) AS value
        FROM marts.inventory_drift
        WHERE status = 'drift'
        ORDER BY value DESC, item_id, location_id
        LIMIT 10
        """
    ).fetchall()
    total, drift_wms, drift_planning, value = row
    return {
        "item_locations": int(total),
        "match": int(by_status.get("match", 0)),
        "within_tolerance": int(by_status.get("within_tolerance", 0)),
        "drift": int(by_status.get("drift", 0)),
        "unverifiable": int(by_status.get("unverifiable", 0)),
        "drift_pairs_wms": int(drift_wms),
        "drift_pairs_planning": int(drift_planning),
        "drift_rate": plain(by_status.get("drift", 0) / total) if total else None,
        "drift_value_total": plain(value),
        "top_drift": markdown_table(
            ["item", "location", "planner", "erp", "wms (aligned)", "planning (aligned)", "wms", "planning", "value"],
            top,
        ),
    }
