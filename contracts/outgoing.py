"""Contracts of what distsync publishes: the sync payload records and the marts.

The same pandera layer that guards the inputs guards the outputs (in place of a second
validation framework: see the README, "Great Expectations"). A payload batch whose
records break their contract is not emitted; a mart that breaks its contract fails the
mart's check in Dagster.
"""

from __future__ import annotations

import os

import duckdb
import pandera.polars as pa
import polars as pl

from contracts.canonical import schema, schema_failures


def _isin(*values: str) -> pa.Check:
    return pa.Check(lambda d: d.lazyframe.select(pl.col(d.key).is_in(list(values))), name="allowed_value")


def _matches(pattern: str, name: str) -> pa.Check:
    return pa.Check(lambda d: d.lazyframe.select(pl.col(d.key).str.contains(pattern)), name=name)


NON_NEGATIVE = pa.Check(lambda d: d.lazyframe.select(pl.col(d.key) >= 0), name="non_negative")
POSITIVE = pa.Check(lambda d: d.lazyframe.select(pl.col(d.key) > 0), name="positive")
ISO_Z = _matches(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$", "iso_8601_utc")
SHA256 = _matches(r"^[0-9a-f]{64}$", "sha256_hex")

# uniqueness (the idempotency key, the business key) through contracts.canonical.unique_rows
PAYLOAD_SCHEMAS = {
    "planning_inventory_sync": schema("planning_inventory_sync", {
        "idempotency_key": pa.Column(str, checks=[SHA256]),
        "product_code": pa.Column(str), "site_code": pa.Column(str),
        "on_hand": pa.Column(float, checks=[NON_NEGATIVE]), "uom": pa.Column(str),
        "as_of": pa.Column(str, checks=[ISO_Z]),
        "quality": pa.Column(str, checks=[_isin("reconciled", "drift", "stale", "unverifiable")]),
    }, ["idempotency_key"], ["product_code", "site_code"]),
    "erp_replenishment_proposal": schema("erp_replenishment_proposal", {
        "idempotency_key": pa.Column(str, checks=[SHA256]),
        "MATNR": pa.Column(str, checks=[_matches(r"^\d{18}$", "matnr_18_digits")]),
        "WERKS": pa.Column(str), "quantity": pa.Column(float, checks=[POSITIVE]), "MEINS": pa.Column(str),
        "need_date": pa.Column(str, checks=[_matches(r"^\d{4}-\d{2}-\d{2}$", "iso_date")]),
        "forecast_version": pa.Column(str, nullable=True),
    }, ["idempotency_key"], ["MATNR", "WERKS", "need_date"]),
}

STATUS = ("match", "within_tolerance", "drift", "unverifiable")
MART_SCHEMAS = {
    "marts.inventory_drift": schema("marts.inventory_drift", {
        "item_id": pa.Column(str), "location_id": pa.Column(str),
        "erp_qty": pa.Column(float), "status_wms": pa.Column(str, checks=[_isin(*STATUS)]),
        "status_planning": pa.Column(str, checks=[_isin(*STATUS)]), "status": pa.Column(str, checks=[_isin(*STATUS)]),
    }, ["item_id", "location_id"]),
    "marts.forecast_order_alignment": schema("marts.forecast_order_alignment", {
        "item_id": pa.Column(str), "location_id": pa.Column(str),
        "status": pa.Column(str, checks=[_isin("shortage_in_lead_time", "needs_order", "excess", "aligned")]),
        "proposal_qty": pa.Column(float, checks=[NON_NEGATIVE]),
        "shortage_qty": pa.Column(float, checks=[NON_NEGATIVE]),
        "excess_qty": pa.Column(float, checks=[NON_NEGATIVE]),
    }, ["item_id", "location_id"]),
}


def check_payload(payload_type: str, records: pl.DataFrame) -> dict:
    return schema_failures(PAYLOAD_SCHEMAS[payload_type], records)


def check_mart(con: duckdb.DuckDBPyConnection, table: str, file: str | os.PathLike | None = None) -> dict:
    """Check a published mart; ``file``: the Parquet file its view reads (read by polars,
    cheaper than through the view)."""
    cols = list(MART_SCHEMAS[table].columns)
    frame = (pl.read_parquet(file, columns=cols) if file is not None
             else con.execute(f"SELECT {', '.join(cols)} FROM {table}").pl())
    return schema_failures(MART_SCHEMAS[table], frame)
