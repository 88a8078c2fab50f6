"""The warehouse layout: every DuckDB table distsync writes, with its columns.

This is the contract between the layers: ingestion (``contracts/``) fills ``ingest``,
``staging`` and ``canonical``; reconciliation fills ``marts``; delivery fills ``sync``.
Quantities in ``canonical`` and ``marts`` are in the item's base unit; timestamps are
``TIMESTAMPTZ`` in UTC; ``item_id`` is ``MATNR`` without leading zeros and
``location_id`` is ``WERKS``.

``staging.<feed>`` keeps the accepted rows of *every* accepted file version (with
``_file_path``, ``_sha256``, ``_extract_ts``), so the current version of a feed can
always be rebuilt (degraded mode, corrections, out-of-order arrival) without reading a
landing file twice. ``canonical.*`` holds the current version only, chosen by each
feed's rule (see ``contracts/feeds.py``).
"""

from __future__ import annotations

import duckdb

from contracts.files import replaced_atomically

SCHEMAS = ("ingest", "staging", "canonical", "marts", "sync")

# --- ingest ------------------------------------------------------------------------------
INGEST_DDL = {
    "ingest.manifest": """
        seq BIGINT,                 -- ingestion order (a later seq is a later version)
        file_path VARCHAR,          -- landing-relative: erp/item_master/item_master_<TS>.csv
        system VARCHAR, feed VARCHAR,
        extract_ts TIMESTAMPTZ,     -- <TS> of the file name
        version_ts TIMESTAMPTZ,     -- forecast: max(published_at) of the file (picks the current version)
        sha256 VARCHAR, size_bytes BIGINT,
        rows_read BIGINT, rows_accepted BIGINT, rows_quarantined BIGINT,
        rows_duplicate BIGINT,      -- exact duplicate rows collapsed into one
        outcome VARCHAR,            -- accepted | rejected | duplicate
        reason VARCHAR,
        ingested_at TIMESTAMPTZ,    -- wall clock of the ingestion (audit only)
        run_as_of TIMESTAMPTZ,      -- as_of of the run that ingested it
        source_uri VARCHAR          -- full path or s3:// URL it was read from
    """,
    # fingerprint of the current files each canonical table was last built from:
    # an unchanged fingerprint means the table is not rebuilt (incremental runs)
    "ingest.canonical_state": """
        feed VARCHAR PRIMARY KEY, fingerprint VARCHAR, built_at TIMESTAMPTZ
    """,
    # the last canonical contract result per table, with the files it was computed from
    "ingest.canonical_check": """
        table_name VARCHAR PRIMARY KEY, files_key VARCHAR, result VARCHAR
    """,
    # conflicting_duplicate keys of every ingested snapshot file, mapped to item-locations
    "staging.conflict_key": """
        system VARCHAR, feed VARCHAR, item_id VARCHAR, location_id VARCHAR, natural_key VARCHAR,
        _file_path VARCHAR, _sha256 VARCHAR
    """,
    # the version at which an ingest table was last exported to the lake (export_to_lake)
    "ingest.lake_export": """
        table_name VARCHAR PRIMARY KEY, version VARCHAR
    """,
    # what was last seen at a path (size + mtime / ETag), to skip unchanged files
    # without reading or hashing them again
    "ingest.file_state": """
        file_path VARCHAR PRIMARY KEY, size_bytes BIGINT, signature VARCHAR, sha256 VARCHAR
    """,
    "ingest.quarantine": """
        file_path VARCHAR, sha256 VARCHAR, system VARCHAR, feed VARCHAR,
        row_number BIGINT,          -- 1-based data row (header excluded; JSONL line; Parquet row)
        rule VARCHAR,               -- e.g. null_value, malformed_key, bad_number, negative_quantity,
                                    -- invalid_value, unknown_uom, unmapped_code, unknown_item,
                                    -- unknown_location, conflicting_duplicate
        "column" VARCHAR,           -- the column the rule is about (null for row rules)
        detail VARCHAR,
        raw VARCHAR,                -- the raw row as JSON text
        code_kind VARCHAR,          -- for unmapped_code: item | location
        code VARCHAR                -- for unmapped_code: the external code
    """,
    # the file versions that make up each feed's current version at the run's as_of
    # (one file for a snapshot feed; every contributing file for purchase_order,
    # planned_order and transaction); rebuilt by every run
    "ingest.current_files": """
        file_path VARCHAR, sha256 VARCHAR, system VARCHAR, feed VARCHAR, extract_ts TIMESTAMPTZ
    """,
    # one row per feed per run: which file is current and whether it is stale
    "ingest.feed_status": """
        system VARCHAR, feed VARCHAR, current_files BIGINT, newest_file VARCHAR,
        newest_extract_ts TIMESTAMPTZ, age_hours DOUBLE, freshness_limit_hours DOUBLE,
        stale BOOLEAN, run_as_of TIMESTAMPTZ
    """,
}

# --- canonical (current version of each entity) ------------------------------------------
CANONICAL_DDL = {
    "canonical.item": """
        item_id VARCHAR, matnr VARCHAR, description VARCHAR, base_uom VARCHAR,
        material_group VARCHAR, standard_cost DOUBLE, currency VARCHAR,
        deletion_flag BOOLEAN, source_file VARCHAR
    """,
    "canonical.location": """
        location_id VARCHAR, name VARCHAR, country VARCHAR, region VARCHAR, source_file VARCHAR
    """,
    "canonical.item_location": """
        item_id VARCHAR, location_id VARCHAR, planner_code VARCHAR, lead_time_days INTEGER,
        safety_stock DOUBLE, order_multiple DOUBLE, source_file VARCHAR
    """,
    "canonical.uom_conversion": """
        item_id VARCHAR, uom VARCHAR, numerator BIGINT, denominator BIGINT,
        factor DOUBLE,              -- base units per one uom = numerator / denominator
        source_file VARCHAR
    """,
    "canonical.item_xref": """
        system VARCHAR,             -- PLANNING | WMS
        external_code VARCHAR, item_id VARCHAR, source_file VARCHAR
    """,
    "canonical.location_xref": """
        system VARCHAR, external_code VARCHAR, location_id VARCHAR, source_file VARCHAR
    """,
    # one row per source record of the current snapshot of each system
    "canonical.inventory_snapshot": """
        system VARCHAR,             -- erp | wms | planning
        item_id VARCHAR, location_id VARCHAR,
        storage_location VARCHAR,   -- ERP LGORT, WMS bin, null for planning
        lot VARCHAR,                -- WMS lot (null is a value)
        stock_status VARCHAR,       -- WMS status; null otherwise
        qty DOUBLE,                 -- base units (ERP: LABST+INSME+SPEME converted)
        unrestricted_qty DOUBLE, quality_qty DOUBLE, blocked_qty DOUBLE,  -- ERP only
        source_uom VARCHAR, snapshot_at TIMESTAMPTZ, source_file VARCHAR
    """,
    # every distinct txn_id, once
    "canonical.inventory_txn": """
        txn_id VARCHAR, item_id VARCHAR, location_id VARCHAR, qty DOUBLE,
        txn_type VARCHAR, txn_at TIMESTAMPTZ, reference VARCHAR, source_file VARCHAR
    """,
    # the current forecast version (latest published_at)
    "canonical.forecast": """
        item_id VARCHAR, location_id VARCHAR, week_start DATE, qty DOUBLE,
        source_qty DOUBLE, source_uom VARCHAR, forecast_version VARCHAR,
        published_at TIMESTAMPTZ, source_file VARCHAR
    """,
    # latest version of each PO line by file <TS>
    "canonical.purchase_order_line": """
        ebeln VARCHAR, ebelp VARCHAR, item_id VARCHAR, location_id VARCHAR, supplier VARCHAR,
        order_date DATE, delivery_date DATE,
        ordered_qty DOUBLE, received_qty DOUBLE,   -- base units
        order_uom VARCHAR, source_ordered_qty DOUBLE, source_received_qty DOUBLE,
        deleted BOOLEAN, delivery_completed BOOLEAN, confirmation_date DATE,
        plan_ref VARCHAR, changed_at TIMESTAMPTZ, extract_ts TIMESTAMPTZ, source_file VARCHAR
    """,
    # latest version of each recommendation by file <TS>
    "canonical.planned_order": """
        recommendation_id VARCHAR, item_id VARCHAR, location_id VARCHAR, qty DOUBLE,
        source_qty DOUBLE, source_uom VARCHAR, need_date DATE, released_at TIMESTAMPTZ,
        status VARCHAR, extract_ts TIMESTAMPTZ, source_file VARCHAR
    """,
    # natural keys quarantined as conflicting_duplicate in a current snapshot file:
    # reconciliation marks these item-locations unverifiable for that system
    "canonical.conflict_key": """
        system VARCHAR, feed VARCHAR, item_id VARCHAR, location_id VARCHAR,
        natural_key VARCHAR, source_file VARCHAR
    """,
}


def columns_of(ddl: str) -> list[tuple[str, str]]:
    """(name, type) of each column of a DDL body above (comments stripped; a name is
    returned as written, quoted where the DDL quotes it)."""
    text = "\n".join(line.split("--")[0] for line in ddl.splitlines())
    out = []
    for part in text.split(","):
        words = part.split()
        if len(words) >= 2:
            out.append((words[0], words[1]))
    return out


def quoted(name: str) -> str:
    return name if name.startswith('"') else f'"{name}"'


def empty_select(ddl: str) -> str:
    """A typed SELECT with the DDL's columns and no rows."""
    cols = ", ".join(f"CAST(NULL AS {t}) AS {quoted(c)}" for c, t in columns_of(ddl))
    return f"SELECT {cols} WHERE false"


def create_all(con: duckdb.DuckDBPyConnection) -> None:
    """Create every schema and the ingest/canonical tables that do not exist yet.

    ``canonical.*`` starts as empty tables (tests fill them directly); a canonical build
    replaces each with a view over its Parquet folder in the lake.
    """
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    existing = {f"{s}.{t}" for s, t in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables").fetchall()}
    for name, cols in {**INGEST_DDL, **CANONICAL_DDL}.items():
        if name not in existing:
            con.execute(f"CREATE TABLE {name} ({cols})")


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    return table_kind(con, qualified) is not None


def table_kind(con: duckdb.DuckDBPyConnection, qualified: str) -> str | None:
    """``BASE TABLE``, ``VIEW`` or None (no such table)."""
    schema, name = qualified.split(".")
    row = con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                      [schema, name]).fetchone()
    return row[0] if row else None


def drop_table_or_view(con: duckdb.DuckDBPyConnection, qualified: str) -> None:
    kind = table_kind(con, qualified)
    if kind is not None:
        con.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} {qualified}")


def export_to_lake(con: duckdb.DuckDBPyConnection, qualified: str, lake_dir: str, version: str | None = None) -> str:
    """Write a table as ``<lake>/<schema>/<table>/data.parquet``.

    The file is written next to its final name and renamed, so a reader never sees half
    a file. With ``version`` (anything that changes whenever the table does), a table
    whose file was already written at that version is not written again.
    """
    import os

    schema, table = qualified.split(".")
    folder = os.path.join(lake_dir, schema, table)
    final = os.path.join(folder, "data.parquet")
    if version is not None and os.path.exists(final):
        row = con.execute("SELECT version FROM ingest.lake_export WHERE table_name = ?", [qualified]).fetchone()
        if row is not None and row[0] == version:
            return final
    with replaced_atomically(final) as tmp:
        con.execute(f"COPY (SELECT * FROM {qualified}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
    if version is not None:
        con.execute("""INSERT INTO ingest.lake_export VALUES (?, ?)
                       ON CONFLICT (table_name) DO UPDATE SET version = excluded.version""", [qualified, version])
    return final


def default_lake_dir(con: duckdb.DuckDBPyConnection) -> str:
    """``<folder of the warehouse file>/lake``; for an in-memory warehouse a temporary
    folder of its own (kept in a session variable of the connection, so that a later
    connection never inherits another's folder) that is removed when the process exits."""
    import atexit
    import os
    import shutil
    import tempfile

    row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    if row and row[0]:
        return os.path.join(os.path.dirname(os.path.abspath(row[0])), "lake")
    known = con.execute("SELECT getvariable('distsync_lake')").fetchone()[0]
    if known:
        return known
    path = tempfile.mkdtemp(prefix="distsync-lake-")
    atexit.register(shutil.rmtree, path, True)
    con.execute("SET VARIABLE distsync_lake = '" + path.replace("'", "''") + "'")
    return path
