"""Forecast-to-order alignment and netting (semantics.md §4).

The horizon is laid out *wide*: one row per item-location with one column per week
(``d0…``, ``s0…``, ``p0…``). DuckDB does the two aggregations (forecast, PO lines; plain
``sum(CASE …)`` per week, cheaper than ``FILTER``) and the joins; polars does the weekly
arithmetic as a loop over the ``H`` weeks, each step one vectorised column over every
item-location (every intermediate column is materialised once, where nested SQL
expressions would be re-evaluated per reference), then the classification (excess,
status, coverage), and writes the marts as Parquet files in the lake (``mart_store.py``;
polars writes a million-row frame several times faster than DuckDB reads it back). No
sort, no window, no Python loop per item-location. The weekly projection is stored as one
row per item-location with one array element per week (``marts.weekly_projection``);
``marts.projection`` is a view that unnests it to one row per item-location and week
(``write_projection=False`` leaves it empty).

Rules, with the decisions taken where the spec is silent:

* Week 0 is the ISO week (Monday start) containing ``run_date`` (UTC date of ``as_of``);
  week ``w`` covers ``[Monday_0 + 7w, Monday_0 + 7w + 7)``. A forecast row belongs to the
  week of its ``week_start`` (weeks before 0 and from ``H`` on are ignored).
* An *outstanding* PO line is open (not ``LOEKZ = L``, not ``ELIKZ = X``) and still has an
  open quantity ``max(MENGE − WEMNG, 0) > 0`` in base units. It supplies the week of its
  ``EINDT``; lines due before week 0 supply week 0 (and are ``LATE_PO``, see
  ``exceptions.py``); lines due from week ``H`` on, or with no ``EINDT``, are ignored.
* ``on_hand`` is the ERP quantity (sum over storage locations), 0 when absent.
* ``P_w = on_hand + Σ_{k≤w}(s_k − d_k)``; a week is short when ``P_w < SS − ε``
  (ε = ``settings.match_epsilon``, so float noise is no shortage).
* ``L = ceil(PLIFZ / 7)`` (0 when PLIFZ is null). ``shortage_qty = SS − P_w`` at the first
  short week when that week is ``< L``, else 0.
* Netting over ``w = L … H−1`` uses the closed form of the sequential rule: with
  ``sf_w = SS − P_w`` and ``R(x)`` = ``x`` rounded up to a multiple of ``BSTRF`` (``x``
  itself when ``BSTRF = 0``; 0 when ``x ≤ ε``), the cumulative proposal is
  ``Q_w = R(max(0, max_{L≤k≤w} sf_k))`` and the proposal of week ``w`` is
  ``Q_w − Q_{w−1}``. Proof sketch: every proposal is a multiple of ``BSTRF``, so
  ``Q_{w−1} = m·j`` and ``Q_{w−1} + R(sf_w − Q_{w−1}) = m·ceil(sf_w / m) = R(sf_w)``;
  when ``sf_w ≤ Q_{w−1}`` then ``R(sf_w) ≤ Q_{w−1}``. Hence ``Q_w = max(Q_{w−1}, R(sf_w))``.
  ``tests/reconciliation/test_alignment.py`` checks it against the sequential loop on
  random data, fractional multiples included.
* Excess: ``avg_d = Σ d_w / H``; ``P_{H−1} > SS + excess_weeks · avg_d`` (without
  proposals) and at least one outstanding line supplies a week in ``L … H−1`` (a past-due
  line supplies week 0, which counts only when ``L = 0``).
* Status: ``shortage_in_lead_time`` > ``needs_order`` > ``excess`` > ``aligned``.
* ``coverage_ratio = (on_hand + Σ s_w) / Σ d_w``, null when ``Σ d_w = 0``.
* ``has_forecast``: the item-location has at least one row of the current forecast in
  weeks ``0 … H−1`` (even with quantity 0). The alignment rate is the share of those rows
  that are ``aligned`` (null when there are none).
* ``forecast_version`` of a proposal is the item-location's forecast version, or the
  current version of the whole forecast when the item-location has none.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import duckdb
import polars as pl

from contracts.outgoing import check_mart
from contracts.settings import Settings
from contracts.warehouse import default_lake_dir

from .incremental import carry_over, input_fingerprint, record_build
from .mart_store import write_run_frame
from .marts_ddl import ensure_marts, markdown_table, plain, run_clock

__all__ = ["build_forecast_order_alignment", "alignment_metadata", "netting", "classify", "OUTSTANDING_PO_LINE"]

# An outstanding PO line (open and with something left to deliver); shared with exceptions.
OUTSTANDING_PO_LINE = """
    NOT coalesce(deleted, false) AND NOT coalesce(delivery_completed, false)
    AND greatest(coalesce(ordered_qty, 0) - coalesce(received_qty, 0), 0) > {eps}
"""


def _base_sql(h: int) -> str:
    """One row per item-location: attributes, on hand, demand d0.. and supply s0.. ."""
    d_cols = ", ".join(f"sum(CASE WHEN wk = {w} THEN qty ELSE 0 END) AS d{w}" for w in range(h))
    s_cols = ", ".join(f"sum(CASE WHEN wk = {w} THEN open_qty ELSE 0 END) AS s{w}" for w in range(h))
    d_sel = ", ".join(f"coalesce(fc.d{w}, 0) AS d{w}" for w in range(h))
    s_sel = ", ".join(f"coalesce(po.s{w}, 0) AS s{w}" for w in range(h))
    outstanding = OUTSTANDING_PO_LINE.format(eps="$eps")
    return f"""
    WITH
    il AS (
        SELECT item_id, location_id,
               coalesce(nullif(trim(planner_code), ''), 'UNASSIGNED') AS planner_code,
               lead_time_days,
               CAST(ceil(coalesce(lead_time_days, 0) / 7.0) AS INTEGER) AS lead_time_weeks,
               coalesce(safety_stock, 0) AS safety_stock,
               coalesce(order_multiple, 0) AS order_multiple
        FROM canonical.item_location
        WHERE item_id IS NOT NULL AND location_id IS NOT NULL
    ),
    erp AS (
        SELECT item_id, location_id, sum(qty) AS qty
        FROM canonical.inventory_snapshot
        WHERE system = 'erp'
        GROUP BY item_id, location_id
    ),
    fc AS (
        SELECT item_id, location_id, {d_cols},
               max(forecast_version) AS forecast_version
        FROM (
            SELECT item_id, location_id, coalesce(qty, 0) AS qty, forecast_version,
                   CAST(datediff('day', $w0, week_start) // 7 AS INTEGER) AS wk
            FROM canonical.forecast
            WHERE week_start >= $w0 AND week_start < $wend
        )
        GROUP BY item_id, location_id
    ),
    po AS (
        SELECT item_id, location_id, {s_cols},
               max(wk) AS last_supply_week,
               sum(CASE WHEN late THEN open_qty ELSE 0 END) AS late_supply_qty
        FROM (
            SELECT item_id, location_id,
                   greatest(coalesce(ordered_qty, 0) - coalesce(received_qty, 0), 0) AS open_qty,
                   greatest(CAST(datediff('day', $w0, delivery_date) // 7 AS INTEGER), 0) AS wk,
                   delivery_date < $w0 AS late
            FROM canonical.purchase_order_line
            WHERE {outstanding}
              AND delivery_date IS NOT NULL AND delivery_date < $wend
        )
        GROUP BY item_id, location_id
    ),
    current_version AS (
        SELECT max(forecast_version) AS v
        FROM canonical.forecast
        WHERE published_at = (SELECT max(published_at) FROM canonical.forecast)
    )
    SELECT il.*,
           coalesce(erp.qty, 0) AS on_hand,
           fc.item_id IS NOT NULL AS has_forecast,
           coalesce(fc.forecast_version, (SELECT v FROM current_version)) AS forecast_version,
           po.last_supply_week,
           coalesce(po.late_supply_qty, 0) AS late_supply_qty,
           i.base_uom,
           coalesce(i.matnr, lpad(il.item_id, 18, '0')) AS matnr,
           {d_sel}, {s_sel}
    FROM il
    LEFT JOIN erp USING (item_id, location_id)
    LEFT JOIN fc USING (item_id, location_id)
    LEFT JOIN po USING (item_id, location_id)
    LEFT JOIN canonical.item i ON i.item_id = il.item_id
    """


def netting(frame: pl.DataFrame, h: int, eps: float) -> pl.DataFrame:
    """Weekly projection and netting, vectorised over item-locations.

    ``frame`` has ``on_hand``, ``safety_stock``, ``lead_time_weeks``, ``order_multiple``,
    ``d0…d{h-1}`` and ``s0…s{h-1}``. Adds per week ``p{w}`` (projection without proposals),
    ``q{w}`` (cumulative proposals) and ``pr{w}`` (proposal of week w), and per row
    ``first_shortage_week``, ``shortage_qty``, ``proposal_qty``, ``proposal_count``,
    ``first_proposal_week``, ``demand_horizon``, ``supply_horizon``, ``projected_end``.
    """
    ss = pl.col("safety_stock")
    lead = pl.col("lead_time_weeks")
    mult = pl.col("order_multiple")
    df = frame
    for w in range(h):  # P_w = P_{w-1} + s_w - d_w
        prev = pl.col("on_hand") if w == 0 else pl.col(f"p{w - 1}")
        df = df.with_columns((prev + pl.col(f"s{w}") - pl.col(f"d{w}")).alias(f"p{w}"))
    for w in range(h):  # running max of the shortfall over the netting weeks L..w
        prev = pl.lit(0.0) if w == 0 else pl.col(f"_m{w - 1}")
        df = df.with_columns(
            pl.when(lead <= w).then(pl.max_horizontal(prev, ss - pl.col(f"p{w}"))).otherwise(prev).alias(f"_m{w}")
        )
    df = df.with_columns(  # Q_w = R(M_w): rounded up to the order multiple
        pl.when(pl.col(f"_m{w}") <= eps).then(0.0)
        .when(mult > 0).then(mult * ((pl.col(f"_m{w}") - eps) / mult).ceil())
        .otherwise(pl.col(f"_m{w}")).alias(f"q{w}")
        for w in range(h)
    ).drop([f"_m{w}" for w in range(h)])
    df = df.with_columns(
        (pl.col(f"q{w}") - (pl.col(f"q{w - 1}") if w else 0.0)).alias(f"pr{w}") for w in range(h)
    )
    short = [pl.col(f"p{w}") < ss - eps for w in range(h)]
    proposed = [pl.col(f"pr{w}") > eps for w in range(h)]
    return df.with_columns(
        pl.coalesce([pl.when(short[w]).then(pl.lit(w, pl.Int32)) for w in range(h)]).alias("first_shortage_week"),
        pl.coalesce([pl.when(short[w]).then(pl.when(lead > w).then(ss - pl.col(f"p{w}")).otherwise(0.0))
                     for w in range(h)] + [pl.lit(0.0)]).alias("shortage_qty"),
        pl.sum_horizontal(pl.when(proposed[w]).then(pl.col(f"pr{w}")).otherwise(0.0) for w in range(h))
        .alias("proposal_qty"),
        pl.sum_horizontal(proposed[w].cast(pl.Int32) for w in range(h)).alias("proposal_count"),
        pl.coalesce([pl.when(proposed[w]).then(pl.lit(w, pl.Int32)) for w in range(h)]).alias("first_proposal_week"),
        pl.sum_horizontal(pl.col(f"d{w}") for w in range(h)).alias("demand_horizon"),
        pl.sum_horizontal(pl.col(f"s{w}") for w in range(h)).alias("supply_horizon"),
        pl.col(f"p{h - 1}").alias("projected_end"),
    )


def classify(calc: pl.DataFrame, h: int, eps: float, excess_weeks: float) -> pl.DataFrame:
    """Excess, coverage and status per item-location from the netting frame."""
    dh = pl.col("demand_horizon")
    frame = calc.with_columns(
        open_line_after_lead_time=(pl.col("last_supply_week") >= pl.col("lead_time_weeks")).fill_null(False),
        avg_weekly_demand=dh / h,
        excess_threshold=pl.col("safety_stock") + excess_weeks * dh / h,
    )
    over = pl.col("projected_end") - pl.col("excess_threshold")
    frame = frame.with_columns(
        excess_qty=pl.when((over > eps) & pl.col("open_line_after_lead_time")).then(over).otherwise(0.0),
        coverage_ratio=pl.when(dh > 0).then((pl.col("on_hand") + pl.col("supply_horizon")) / dh),
    )
    return frame.with_columns(
        status=pl.when(pl.col("first_shortage_week") < pl.col("lead_time_weeks")).then(pl.lit("shortage_in_lead_time"))
        .when(pl.col("proposal_qty") > eps).then(pl.lit("needs_order"))
        .when(pl.col("excess_qty") > 0).then(pl.lit("excess"))
        .otherwise(pl.lit("aligned")),
    )


ALIGNMENT_INPUTS = ["canonical.forecast", "canonical.purchase_order_line", "canonical.item_location",
                    "canonical.inventory_snapshot", "canonical.item"]
ALIGNMENT_MARTS = ["marts.forecast_order_alignment", "marts.replenishment_proposal", "marts.weekly_projection"]


def build_forecast_order_alignment(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime | str,
    *,
    write_projection: bool = True,
    lake_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Publish ``marts.forecast_order_alignment``, ``marts.replenishment_proposal`` and
    (unless ``write_projection`` is false) the weekly projection (``marts.projection``).

    The rules depend on the run *date* (week 0), not the time of day: when the inputs,
    the settings and the run date are those of the last build, the last files are carried
    over to this run unchanged. Returns metadata with ``recomputed`` and ``contract`` (the
    mart contract's result, ``contracts/outgoing.py``)."""
    clock = run_clock(as_of)
    h = int(settings.horizon_weeks)
    if h < 1:
        raise ValueError(f"horizon_weeks must be at least 1, got {h}")
    eps = float(settings.match_epsilon)
    w0 = clock.week0_start
    lake_dir = lake_dir or default_lake_dir(con)
    ensure_marts(con)
    fp = input_fingerprint(con, ALIGNMENT_INPUTS, settings,
                           f"{clock.run_date.isoformat()}|projection={write_projection}")
    contract = carry_over(con, "forecast_order_alignment", fp, ALIGNMENT_MARTS, lake_dir, clock.as_of)
    if contract is not None:
        return {**alignment_metadata(con), "recomputed": False, "contract": contract}

    # the base row per item-location goes straight from DuckDB to polars, the weekly
    # arithmetic runs there, and polars writes the marts' Parquet files
    base = con.execute(_base_sql(h), {"w0": w0, "wend": w0 + timedelta(days=7 * h), "eps": eps}).pl()
    calc = netting(base, h, eps)
    del base
    run_cols = {"week0_start": pl.lit(w0, pl.Date), "horizon_weeks": pl.lit(h, pl.Int32)}
    alignment_file = write_run_frame(con, "marts.forecast_order_alignment", lake_dir, clock.as_of,
                                     classify(calc, h, eps, float(settings.excess_weeks)).with_columns(**run_cols))
    attrs = ["item_id", "location_id", "planner_code", "base_uom", "matnr", "forecast_version",
             "safety_stock", "order_multiple"]
    # lazily, so that each week's filter reads only the columns it keeps
    proposals = pl.concat(
        [
            calc.lazy().filter(pl.col(f"pr{w}") > eps).select(
                *attrs,
                pl.lit(w, pl.Int32).alias("week"),
                pl.col(f"pr{w}").alias("quantity"),
                (pl.col(f"p{w}") + pl.col(f"q{w}") - pl.col(f"pr{w}")).alias("projected_before"),
            )
            for w in range(h)
        ]
    ).with_columns(need_date=pl.lit(w0, pl.Date) + pl.duration(weeks=pl.col("week"))).collect()
    write_run_frame(con, "marts.replenishment_proposal", lake_dir, clock.as_of, proposals)
    del proposals
    # one row per item-location, one array element per week (marts.projection unnests it)
    weekly = calc.select(
        "item_id", "location_id", week0_start=pl.lit(w0, pl.Date),
        demand=pl.concat_arr([f"d{w}" for w in range(h)]),
        supply=pl.concat_arr([f"s{w}" for w in range(h)]),
        projected=pl.concat_arr([f"p{w}" for w in range(h)]),
        projected_with_proposals=pl.concat_arr([pl.col(f"p{w}") + pl.col(f"q{w}") for w in range(h)]),
        proposal=pl.concat_arr([pl.when(pl.col(f"pr{w}") > eps).then(pl.col(f"pr{w}")).otherwise(0.0)
                                for w in range(h)]),
    )
    write_run_frame(con, "marts.weekly_projection", lake_dir, clock.as_of,
                    weekly if write_projection else weekly.clear())
    del calc, weekly
    contract = check_mart(con, "marts.forecast_order_alignment", alignment_file)
    record_build(con, "forecast_order_alignment", fp, contract)
    return {**alignment_metadata(con), "recomputed": True, "contract": contract}


def alignment_metadata(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    by_status = dict(con.execute("SELECT status, count(*) FROM marts.forecast_order_alignment GROUP BY 1").fetchall())
    total, with_fc, aligned_fc, prop_total = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE has_forecast),
               count(*) FILTER (WHERE has_forecast AND status = 'aligned'),
               coalesce(sum(proposal_qty), 0)
        FROM marts.forecast_order_alignment
        """
    ).fetchone()
    n_props = con.execute("SELECT count(*) FROM marts.replenishment_proposal").fetchone()[0]
    top = con.execute(
        """
        SELECT item_id, location_id, planner_code, status, on_hand, safety_stock,
               first_shortage_week, shortage_qty, proposal_qty, excess_qty
        FROM marts.forecast_order_alignment
        WHERE status <> 'aligned'
        ORDER BY CASE status WHEN 'shortage_in_lead_time' THEN 0 WHEN 'needs_order' THEN 1 ELSE 2 END,
                 shortage_qty DESC, proposal_qty DESC, excess_qty DESC, item_id, location_id
        LIMIT 10
        """
    ).fetchall()
    return {
        "item_locations": int(total),
        "with_forecast": int(with_fc),
        "aligned": int(by_status.get("aligned", 0)),
        "shortage_in_lead_time": int(by_status.get("shortage_in_lead_time", 0)),
        "needs_order": int(by_status.get("needs_order", 0)),
        "excess": int(by_status.get("excess", 0)),
        "alignment_rate": plain(aligned_fc / with_fc) if with_fc else None,
        "proposals": int(n_props),
        "proposal_qty_total": plain(prop_total),
        "top_misaligned": markdown_table(
            ["item", "location", "planner", "status", "on hand", "SS", "first short wk", "shortage", "proposal", "excess"],
            top,
        ),
    }
