"""Reconciliation: the business rules of distsync, as pure functions over a DuckDB
connection whose ``canonical.*`` and ``ingest.*`` tables are filled (no dagster import).

Where each rule lives (``shared/spec/semantics.md``):

* ``marts_ddl``  — the ``marts`` tables and their columns, the run clock (§1: ``as_of``,
  ``run_date``, week 0), all-or-nothing writes, metadata helpers.
* ``drift``      — §3 three-way inventory drift: time alignment with the WMS movement log,
  tolerances (global / material group / location), unverifiable keys, drift value and
  severity → ``marts.inventory_drift`` (+ ``_history``).
* ``alignment``  — §4 projection, shortages in the frozen window, netting with order
  multiples, excess, status, coverage → ``marts.forecast_order_alignment``,
  ``marts.replenishment_proposal``, ``marts.projection``.
* ``exceptions`` — §5 every exception type (incl. the PO and recommendation checks of §4
  and the file/feed problems of §2) and their lifecycle → ``marts.exceptions``,
  ``marts.exception_events``.
* ``kpis``       — run KPIs → ``marts.kpis``.

Call order for a run: ``build_inventory_drift`` → ``build_forecast_order_alignment`` →
``build_exceptions`` → ``build_kpis``; each takes ``(con, settings, as_of)`` and returns a
small metadata dict. Delivery (``payloads``, ``outbox``, ``reports``) reads the marts.
"""

from .alignment import build_forecast_order_alignment
from .drift import build_inventory_drift
from .exceptions import build_exceptions
from .kpis import build_kpis
from .marts_ddl import ensure_marts

__all__ = [
    "build_inventory_drift",
    "build_forecast_order_alignment",
    "build_exceptions",
    "build_kpis",
    "ensure_marts",
]
