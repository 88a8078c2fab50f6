"""Hand-written DuckDB floors: what the same work costs without the pipeline around it.

    python benchmarks/floors.py drift      --files files.json --out DIR   # ERP CSV vs WMS Parquet
    python benchmarks/floors.py drift-lake --files files.json --out DIR   # 3-way drift from the lake
    python benchmarks/floors.py run        --files files.json --out DIR   # every current file -> both marts
    python benchmarks/floors.py run-window --files files.json --out DIR   # same, projection as rows + window

``files.json`` (written by ``run.py`` from ``ingest.current_files`` of the full run) maps
each feed to the absolute paths of its current files (oldest first) and carries
``as_of``, ``lake`` and the settings used (tolerances, epsilon, horizon, excess weeks,
severity thresholds). Each mode prints one JSON line with its result counts and phase
times; ``run.py`` runs each in its own process and takes wall / CPU / peak RSS from the
kernel. No validation, no quarantine, no manifest, no history: that is what makes them
floors.

Shared rules (also those of ``datacompy_bench.py``, so every contender compares the same
two tables): ``item_id`` = ``MATNR`` without leading zeros, ``location_id`` = ``WERKS``;
ERP qty = ``LABST + INSME + SPEME`` times the unit factor (1 for ``EA``, the base unit
of every demo item, else ``UMREZ / UMREN`` of ``uom_conversion``; rows whose unit has no
factor are dropped); WMS ``sku`` / ``warehouse_code`` mapped through ``item_xref`` /
``location_xref`` with ``SYSTEM = 'WMS'`` (unmapped rows dropped), qty = Σ ``qty_each``.
A pair matches when ``|wms − erp| ≤ abs_tol + rel_tol·|erp|`` (defaults 0 and 0: exact).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb


def _lit(path: str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(_lit(p) for p in paths) + "]"


def _csv(paths: str | list[str], extra: str = "") -> str:
    src = _list(paths) if isinstance(paths, list) else _lit(paths)
    return f"read_csv({src}, delim = '|', header = true, quote = '\"', escape = '\"', all_varchar = true{extra})"


class Phases:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.t, 3)
        self.t = now


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()  # in memory; spills to a temp folder if it must
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    return con


def erp_wms_masters(con, files: dict) -> None:
    con.execute(f"""CREATE TEMP TABLE uom AS
        SELECT ltrim(MATNR, '0') AS item_id, MEINH AS uom, TRY_CAST(UMREZ AS DOUBLE) / TRY_CAST(UMREN AS DOUBLE) AS factor
        FROM {_csv(files['uom_conversion'])}""")
    con.execute(f"""CREATE TEMP TABLE ixref AS
        SELECT SYSTEM AS sys, EXTERNAL_CODE AS code, ltrim(MATNR, '0') AS item_id FROM {_csv(files['item_xref'])}""")
    con.execute(f"""CREATE TEMP TABLE lxref AS
        SELECT SYSTEM AS sys, EXTERNAL_CODE AS code, WERKS AS location_id FROM {_csv(files['location_xref'])}""")


ERP_AGG = """
    SELECT ltrim(b.MATNR, '0') AS item_id, b.WERKS AS location_id,
           sum((TRY_CAST(b.LABST AS DOUBLE) + TRY_CAST(b.INSME AS DOUBLE) + TRY_CAST(b.SPEME AS DOUBLE))
               * CASE WHEN b.MEINS = 'EA' THEN 1 ELSE u.factor END) AS qty,
           max(try_strptime(b.EXTRACTED_AT, '%Y%m%d%H%M%S')::TIMESTAMPTZ) AS t
    FROM {src} b
    LEFT JOIN uom u ON u.item_id = ltrim(b.MATNR, '0') AND u.uom = b.MEINS
    WHERE b.MEINS = 'EA' OR u.factor IS NOT NULL
    GROUP BY ALL
"""

WMS_AGG = """
    SELECT x.item_id, l.location_id, sum(s.qty_each)::DOUBLE AS qty, max(s.snapshot_at) AS t
    FROM read_parquet({src}) s
    JOIN ixref x ON x.sys = 'WMS' AND x.code = s.sku
    JOIN lxref l ON l.sys = 'WMS' AND l.code = s.warehouse_code
    GROUP BY ALL
"""


def drift_floor(files: dict, out: Path, settings: dict) -> dict:
    """ERP inventory_balance CSV vs WMS stock_snapshot Parquet: aggregate, join, flag."""
    ph = Phases()
    con = connect()
    erp_wms_masters(con, files)
    ph("masters")
    con.execute(f"""COPY (
        WITH erp AS ({ERP_AGG.format(src=_csv(files['inventory_balance'][-1]))}),
             wms AS ({WMS_AGG.format(src=_lit(files['stock_snapshot'][-1]))})
        SELECT coalesce(e.item_id, w.item_id) AS item_id, coalesce(e.location_id, w.location_id) AS location_id,
               e.qty AS erp_qty, w.qty AS wms_qty, coalesce(w.qty, 0) - coalesce(e.qty, 0) AS diff,
               CASE WHEN e.qty IS NULL THEN 'only_wms' WHEN w.qty IS NULL THEN 'only_erp'
                    WHEN abs(w.qty - e.qty) <= {settings['abs_tol']} + {settings['rel_tol']} * abs(e.qty) THEN 'match'
                    ELSE 'mismatch' END AS flag
        FROM erp e FULL OUTER JOIN wms w USING (item_id, location_id)
    ) TO {_lit(out / 'drift_floor.parquet')} (FORMAT parquet)""")
    ph("aggregate_join_flag_write")
    counts = dict(con.execute(
        f"SELECT flag, count(*) FROM read_parquet({_lit(out / 'drift_floor.parquet')}) GROUP BY 1").fetchall())
    return {"phases": ph.times, "counts": counts}


# --- the whole run ------------------------------------------------------------------------
def load_all(con, files: dict, as_of: datetime, settings: dict, ph: Phases) -> None:
    """Read every current landing file once into mapped, base-unit temp tables."""
    erp_wms_masters(con, files)
    con.execute(f"""CREATE TEMP TABLE item AS
        SELECT ltrim(MATNR, '0') AS item_id, MEINS AS base_uom, MATKL AS material_group,
               TRY_CAST(STPRS AS DOUBLE) AS standard_cost, WAERS AS currency
        FROM {_csv(files['item_master'][-1])}""")
    con.execute(f"CREATE TEMP TABLE location AS SELECT WERKS AS location_id FROM {_csv(files['location_master'][-1])}")
    con.execute(f"""CREATE TEMP TABLE il AS
        SELECT ltrim(MATNR, '0') AS item_id, WERKS AS location_id,
               coalesce(nullif(trim(DISPO), ''), 'UNASSIGNED') AS planner_code,
               TRY_CAST(PLIFZ AS INTEGER) AS lead_time_days,
               CAST(ceil(coalesce(TRY_CAST(PLIFZ AS INTEGER), 0) / 7.0) AS INTEGER) AS lt_weeks,
               coalesce(TRY_CAST(EISBE AS DOUBLE), 0) AS ss, coalesce(TRY_CAST(BSTRF AS DOUBLE), 0) AS mult
        FROM {_csv(files['item_location'][-1])}""")
    ph("masters")
    con.execute(f"CREATE TEMP TABLE erp AS {ERP_AGG.format(src=_csv(files['inventory_balance'][-1]))}")
    ph("erp_inventory")
    con.execute(f"CREATE TEMP TABLE wms AS {WMS_AGG.format(src=_lit(files['stock_snapshot'][-1]))}")
    ph("wms_snapshot")
    con.execute(f"""CREATE TEMP TABLE plan AS
        SELECT x.item_id, l.location_id,
               sum(p.on_hand * CASE WHEN p.uom = 'EA' THEN 1 ELSE u.factor END) AS qty, max(p.as_of) AS t
        FROM read_json({_lit(files['inventory_position'][-1])}, format = 'newline_delimited',
                       columns = {{'product_code': 'VARCHAR', 'site_code': 'VARCHAR', 'on_hand': 'DOUBLE',
                                   'uom': 'VARCHAR', 'as_of': 'TIMESTAMPTZ'}}) p
        JOIN ixref x ON x.sys = 'PLANNING' AND x.code = p.product_code
        JOIN lxref l ON l.sys = 'PLANNING' AND l.code = p.site_code
        LEFT JOIN uom u ON u.item_id = x.item_id AND u.uom = p.uom
        WHERE p.uom = 'EA' OR u.factor IS NOT NULL
        GROUP BY ALL""")
    ph("planning_position")
    con.execute(f"""CREATE TEMP TABLE txn AS
        SELECT x.item_id, l.location_id, t.qty_each::DOUBLE AS qty, t.txn_at
        FROM (SELECT * FROM read_parquet({_list(files['transaction'])}, filename = true)
              QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY filename) = 1) t
        JOIN ixref x ON x.sys = 'WMS' AND x.code = t.sku
        JOIN lxref l ON l.sys = 'WMS' AND l.code = t.warehouse_code""")
    ph("wms_transactions")
    h = int(settings["horizon_weeks"])
    w0 = settings["week0"]
    con.execute(f"""CREATE TEMP TABLE fc_w AS
        SELECT x.item_id, l.location_id, CAST(datediff('day', DATE '{w0}', f.week_start) // 7 AS INTEGER) AS wk,
               sum(f.qty * CASE WHEN f.uom = 'EA' THEN 1 ELSE u.factor END) AS d
        FROM read_json({_lit(files['forecast'][-1])}, format = 'newline_delimited',
                       columns = {{'product_code': 'VARCHAR', 'site_code': 'VARCHAR', 'week_start': 'DATE',
                                   'qty': 'DOUBLE', 'uom': 'VARCHAR', 'forecast_version': 'VARCHAR',
                                   'published_at': 'TIMESTAMPTZ'}}) f
        JOIN ixref x ON x.sys = 'PLANNING' AND x.code = f.product_code
        JOIN lxref l ON l.sys = 'PLANNING' AND l.code = f.site_code
        LEFT JOIN uom u ON u.item_id = x.item_id AND u.uom = f.uom
        WHERE f.week_start >= DATE '{w0}' AND f.week_start < DATE '{w0}' + {7 * h}
          AND (f.uom = 'EA' OR u.factor IS NOT NULL)
        GROUP BY ALL""")
    ph("forecast")
    eps = settings["match_epsilon"]
    con.execute(f"""CREATE TEMP TABLE po_w AS
        SELECT item_id, location_id, greatest(CAST(datediff('day', DATE '{w0}', eindt) // 7 AS INTEGER), 0) AS wk,
               sum(open_qty) AS s
        FROM (
            SELECT ltrim(p.MATNR, '0') AS item_id, p.WERKS AS location_id,
                   try_strptime(p.EINDT, '%Y%m%d')::DATE AS eindt,
                   greatest(coalesce(TRY_CAST(p.MENGE AS DOUBLE), 0) - coalesce(TRY_CAST(p.WEMNG AS DOUBLE), 0), 0)
                     * CASE WHEN p.BSTME = 'EA' THEN 1 ELSE u.factor END AS open_qty
            FROM (SELECT * FROM {_csv(files['purchase_order'], ", filename = true")}
                  QUALIFY row_number() OVER (PARTITION BY EBELN, EBELP ORDER BY filename DESC) = 1) p
            LEFT JOIN uom u ON u.item_id = ltrim(p.MATNR, '0') AND u.uom = p.BSTME
            WHERE coalesce(p.LOEKZ, '') <> 'L' AND coalesce(p.ELIKZ, '') <> 'X'
        )
        WHERE open_qty > {eps} AND eindt IS NOT NULL AND eindt < DATE '{w0}' + {7 * h}
        GROUP BY ALL""")
    ph("purchase_orders")
    # planned orders feed the exceptions only; read (and mapped) so every current file is read once
    con.execute(f"""CREATE TEMP TABLE planned AS
        SELECT p.recommendation_id, x.item_id, l.location_id, p.qty, p.uom, p.need_date, p.status
        FROM (SELECT * FROM read_json({_list(files['planned_order'])}, format = 'newline_delimited',
                                      filename = true, columns = {{'recommendation_id': 'VARCHAR',
                                      'product_code': 'VARCHAR', 'site_code': 'VARCHAR', 'qty': 'DOUBLE',
                                      'uom': 'VARCHAR', 'need_date': 'DATE', 'released_at': 'TIMESTAMPTZ',
                                      'status': 'VARCHAR'}})
              QUALIFY row_number() OVER (PARTITION BY recommendation_id ORDER BY filename DESC) = 1) p
        JOIN ixref x ON x.sys = 'PLANNING' AND x.code = p.product_code
        JOIN lxref l ON l.sys = 'PLANNING' AND l.code = p.site_code""")
    ph("planned_orders")


def load_lake(con, lake: Path) -> None:
    """The drift inputs from the lake's canonical Parquet (what the drift step reads)."""
    def src(t: str) -> str:
        return f"read_parquet({_lit(lake / 'canonical' / t / '*.parquet')}, union_by_name = true)"

    snap = src("inventory_snapshot")
    for name, system in (("erp", "erp"), ("wms", "wms"), ("plan", "planning")):
        con.execute(f"""CREATE TEMP TABLE {name} AS SELECT item_id, location_id, sum(qty) AS qty,
                            max(snapshot_at) AS t FROM {snap} WHERE system = '{system}' GROUP BY ALL""")
    con.execute(f"CREATE TEMP TABLE txn AS SELECT item_id, location_id, qty, txn_at FROM {src('inventory_txn')}")
    con.execute(f"""CREATE TEMP TABLE item AS SELECT item_id, material_group, standard_cost, currency
                    FROM {src('item')}""")
    con.execute(f"""CREATE TEMP TABLE il AS SELECT item_id, location_id,
                        coalesce(nullif(trim(planner_code), ''), 'UNASSIGNED') AS planner_code
                    FROM {src('item_location')}""")


def drift_sql(settings: dict) -> str:
    """Three-way drift with time alignment (semantics.md §3), global tolerances."""
    s = settings
    status = """CASE WHEN abs({d}) <= {eps} THEN 'match'
                     WHEN abs({d}) <= {abs_tol} + {rel_tol} * abs(erp_qty) THEN 'within_tolerance'
                     ELSE 'drift' END"""
    sev = """CASE WHEN {st} = 'drift' THEN CASE WHEN abs({d}) * cost >= {hi} THEN 'high'
                                               WHEN abs({d}) * cost >= {med} THEN 'medium' ELSE 'low' END END"""
    fmt = dict(eps=s["match_epsilon"], abs_tol=s["abs_tol"], rel_tol=s["rel_tol"],
               hi=s["severity_high_value"], med=s["severity_medium_value"])
    return f"""
    WITH times AS (SELECT (SELECT max(t) FROM erp) AS te, (SELECT max(t) FROM wms) AS tw,
                          (SELECT max(t) FROM plan) AS tp),
    keys AS (SELECT item_id, location_id FROM erp UNION SELECT item_id, location_id FROM wms
             UNION SELECT item_id, location_id FROM plan),
    mv AS (
        SELECT item_id, location_id,
               coalesce(sum(qty) FILTER (WHERE txn_at > te AND txn_at <= tw), 0)
             - coalesce(sum(qty) FILTER (WHERE txn_at > tw AND txn_at <= te), 0) AS wms_shift,
               coalesce(sum(qty) FILTER (WHERE txn_at > te AND txn_at <= tp), 0)
             - coalesce(sum(qty) FILTER (WHERE txn_at > tp AND txn_at <= te), 0) AS planning_shift
        FROM txn, times
        WHERE txn_at > least(te, tw, tp) AND txn_at <= greatest(te, tw, tp)
        GROUP BY ALL),
    d AS (
        SELECT k.item_id, k.location_id, coalesce(il.planner_code, 'UNASSIGNED') AS planner_code,
               coalesce(e.qty, 0) AS erp_qty, coalesce(w.qty, 0) AS wms_qty, coalesce(p.qty, 0) AS planning_qty,
               coalesce(w.qty, 0) - coalesce(m.wms_shift, 0) AS wms_aligned_qty,
               coalesce(p.qty, 0) - coalesce(m.planning_shift, 0) AS planning_aligned_qty,
               e.qty IS NOT NULL AS erp_present, w.qty IS NOT NULL AS wms_present, p.qty IS NOT NULL AS planning_present,
               coalesce(i.standard_cost, 0) AS cost, i.material_group, i.currency
        FROM keys k
        LEFT JOIN erp e USING (item_id, location_id)
        LEFT JOIN wms w USING (item_id, location_id)
        LEFT JOIN plan p USING (item_id, location_id)
        LEFT JOIN mv m USING (item_id, location_id)
        LEFT JOIN item i USING (item_id)
        LEFT JOIN il USING (item_id, location_id)),
    f AS (SELECT *, wms_aligned_qty - erp_qty AS diff_wms, planning_aligned_qty - erp_qty AS diff_planning FROM d),
    st AS (SELECT *, {status.format(d='diff_wms', **fmt)} AS status_wms,
                     {status.format(d='diff_planning', **fmt)} AS status_planning FROM f)
    SELECT *, abs(diff_wms) * cost AS drift_value_wms, abs(diff_planning) * cost AS drift_value_planning,
           CASE WHEN 'drift' IN (status_wms, status_planning) THEN 'drift'
                WHEN 'within_tolerance' IN (status_wms, status_planning) THEN 'within_tolerance'
                ELSE 'match' END AS status,
           {sev.format(st='status_wms', d='diff_wms', **fmt)} AS severity_wms,
           {sev.format(st='status_planning', d='diff_planning', **fmt)} AS severity_planning
    FROM st"""


ALIGN_KEYS = """
    CREATE OR REPLACE TEMP TABLE ilr AS SELECT CAST(row_number() OVER () AS INTEGER) AS rid, * FROM il;
    CREATE OR REPLACE TEMP TABLE fcr AS SELECT i.rid, f.wk, f.d FROM fc_w f JOIN ilr i USING (item_id, location_id);
    CREATE OR REPLACE TEMP TABLE por AS SELECT i.rid, f.wk, f.s FROM po_w f JOIN ilr i USING (item_id, location_id);
"""


def _alignment_tail(settings: dict, src: str) -> str:
    """Status, excess and coverage from one row per item-location (``src``)."""
    h, eps, xw = int(settings["horizon_weeks"]), settings["match_epsilon"], settings["excess_weeks"]
    return f"""
    x AS (
        SELECT *, CASE WHEN first_shortage_week < lead_time_weeks THEN shortfall_first ELSE 0 END AS shortage_qty,
               safety_stock + {xw} * demand_horizon / {h} AS excess_threshold
        FROM {src})
    SELECT i.item_id, i.location_id, i.planner_code, x.* EXCLUDE (rid, shortfall_first),
           CASE WHEN projected_end - excess_threshold > {eps} AND coalesce(last_supply_week >= lead_time_weeks, false)
                THEN projected_end - excess_threshold ELSE 0 END AS excess_qty,
           CASE WHEN demand_horizon > 0 THEN (on_hand + supply_horizon) / demand_horizon END AS coverage_ratio,
           CASE WHEN first_shortage_week < lead_time_weeks THEN 'shortage_in_lead_time'
                WHEN proposal_qty > {eps} THEN 'needs_order'
                WHEN projected_end - excess_threshold > {eps}
                     AND coalesce(last_supply_week >= lead_time_weeks, false) THEN 'excess'
                ELSE 'aligned' END AS status
    FROM x JOIN ilr i USING (rid)"""


def _round_up(m: str, eps: float) -> str:
    return f"CASE WHEN {m} <= {eps} THEN 0 WHEN mult > 0 THEN mult * ceil(({m} - {eps}) / mult) ELSE {m} END"


def alignment_sql_window(settings: dict) -> str:
    """Weekly projection as rows (item-location x week) with a window sum; netting with a
    window max of the shortfall over the weeks from the lead time on."""
    h, eps = int(settings["horizon_weeks"]), settings["match_epsilon"]
    return f"""
    WITH g AS (
        SELECT il.rid, il.ss, il.lt_weeks, il.mult, coalesce(e.qty, 0) AS on_hand, w.wk
        FROM ilr il LEFT JOIN erp e USING (item_id, location_id) CROSS JOIN range(0, {h}) w(wk)),
    f AS (
        SELECT g.*, coalesce(fc.d, 0) AS d, coalesce(po.s, 0) AS s, fc.d IS NOT NULL AS has_fc
        FROM g LEFT JOIN fcr fc USING (rid, wk) LEFT JOIN por po USING (rid, wk)),
    p AS (
        SELECT *, on_hand + sum(s - d) OVER w AS p FROM f
        WINDOW w AS (PARTITION BY rid ORDER BY wk ROWS UNBOUNDED PRECEDING)),
    q AS (
        SELECT *, greatest(0, coalesce(max(CASE WHEN wk >= lt_weeks THEN ss - p END) OVER w, 0)) AS m FROM p
        WINDOW w AS (PARTITION BY rid ORDER BY wk ROWS UNBOUNDED PRECEDING)),
    a AS (
        SELECT rid, any_value(on_hand) AS on_hand, any_value(ss) AS safety_stock,
               any_value(lt_weeks) AS lead_time_weeks, any_value(mult) AS order_multiple,
               sum(d) AS demand_horizon, sum(s) AS supply_horizon, bool_or(has_fc) AS has_forecast,
               min(wk) FILTER (WHERE p < ss - {eps}) AS first_shortage_week,
               arg_min(ss - p, wk) FILTER (WHERE p < ss - {eps}) AS shortfall_first,
               max({_round_up('m', eps)}) AS proposal_qty,
               arg_max(p, wk) AS projected_end, max(wk) FILTER (WHERE s > 0) AS last_supply_week
        FROM q GROUP BY rid),
    {_alignment_tail(settings, 'a')}"""


def alignment_sql_wide(settings: dict) -> str:
    """The same projection laid out wide (one column per week, as the pipeline does):
    P_w = on_hand + sum_{k<=w}(s_k - d_k) and the running max of the shortfall are column
    expressions, so there is no sort and no window."""
    h, eps = int(settings["horizon_weeks"]), settings["match_epsilon"]
    weeks = range(h)
    d_cols = ", ".join(f"sum(d) FILTER (WHERE wk = {w}) AS d{w}" for w in weeks)
    s_cols = ", ".join(f"sum(s) FILTER (WHERE wk = {w}) AS s{w}" for w in weeks)
    b_cols = ", ".join([f"coalesce(fc.d{w}, 0) AS d{w}" for w in weeks] + [f"coalesce(po.s{w}, 0) AS s{w}" for w in weeks])
    p_cols = ", ".join("on_hand + " + " + ".join(f"(s{k} - d{k})" for k in range(w + 1)) + f" AS p{w}" for w in weeks)
    m_last = "greatest(0, " + ", ".join(f"CASE WHEN lt_weeks <= {k} THEN ss - p{k} ELSE 0 END" for k in weeks) + ")"
    first = "coalesce(" + ", ".join(f"CASE WHEN p{w} < ss - {eps} THEN {w} END" for w in weeks) + ")"
    short = "coalesce(" + ", ".join(f"CASE WHEN p{w} < ss - {eps} THEN ss - p{w} END" for w in weeks) + ")"
    return f"""
    WITH fc AS (SELECT rid, {d_cols} FROM fcr GROUP BY rid),
    po AS (SELECT rid, {s_cols}, max(wk) AS last_supply_week FROM por GROUP BY rid),
    b AS (SELECT il.rid, il.ss, il.lt_weeks, il.mult, coalesce(e.qty, 0) AS on_hand, fc.rid IS NOT NULL AS has_fc,
                 po.last_supply_week, {b_cols}
          FROM ilr il LEFT JOIN erp e USING (item_id, location_id) LEFT JOIN fc USING (rid) LEFT JOIN po USING (rid)),
    p AS (SELECT *, {p_cols} FROM b),
    a AS (SELECT rid, on_hand, ss AS safety_stock, lt_weeks AS lead_time_weeks, mult AS order_multiple,
                 {' + '.join(f'd{w}' for w in weeks)} AS demand_horizon, {' + '.join(f's{w}' for w in weeks)} AS supply_horizon,
                 has_fc AS has_forecast, {first} AS first_shortage_week, {short} AS shortfall_first,
                 {_round_up(m_last, eps)} AS proposal_qty, p{h - 1} AS projected_end, last_supply_week
          FROM p),
    {_alignment_tail(settings, 'a')}"""


def run_floor(files: dict, out: Path, settings: dict, as_of: datetime, layout: str = "wide") -> dict:
    ph = Phases()
    con = connect()
    load_all(con, files, as_of, settings, ph)
    con.execute(f"COPY ({drift_sql(settings)}) TO {_lit(out / 'floor_inventory_drift.parquet')} (FORMAT parquet)")
    ph("drift_mart")
    con.execute(ALIGN_KEYS)
    sql = alignment_sql_wide(settings) if layout == "wide" else alignment_sql_window(settings)
    con.execute(f"COPY ({sql}) TO {_lit(out / 'floor_forecast_order_alignment.parquet')} (FORMAT parquet)")
    ph("alignment_mart")
    drift = dict(con.execute(
        f"SELECT status, count(*) FROM read_parquet({_lit(out / 'floor_inventory_drift.parquet')}) GROUP BY 1"
    ).fetchall())
    align = dict(con.execute(
        f"SELECT status, count(*) FROM read_parquet({_lit(out / 'floor_forecast_order_alignment.parquet')}) GROUP BY 1"
    ).fetchall())
    return {"phases": ph.times, "drift_status": drift, "alignment_status": align,
            "planned_orders": con.execute("SELECT count(*) FROM planned").fetchone()[0]}


def drift_lake_floor(lake: Path, out: Path, settings: dict) -> dict:
    ph = Phases()
    con = connect()
    load_lake(con, lake)
    ph("read_lake")
    con.execute(f"COPY ({drift_sql(settings)}) TO {_lit(out / 'floor_drift_lake.parquet')} (FORMAT parquet)")
    ph("drift_mart")
    drift = dict(con.execute(
        f"SELECT status, count(*) FROM read_parquet({_lit(out / 'floor_drift_lake.parquet')}) GROUP BY 1").fetchall())
    return {"phases": ph.times, "drift_status": drift}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("drift", "drift-lake", "run", "run-window"))
    p.add_argument("--files", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    spec = json.loads(Path(args.files).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    as_of = datetime.fromisoformat(spec["as_of"]).astimezone(timezone.utc)
    settings = dict(spec["settings"])
    run_date = as_of.date()
    settings.setdefault("week0", (run_date - timedelta(days=run_date.weekday())).isoformat())
    t0 = time.perf_counter()
    if args.mode == "drift":
        res = drift_floor(spec["files"], out, settings)
    elif args.mode == "drift-lake":
        res = drift_lake_floor(Path(spec["lake"]), out, settings)
    else:
        res = run_floor(spec["files"], out, settings, as_of, "wide" if args.mode == "run" else "window")
    res["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
