"""Skip a mart whose inputs did not change since it was last built.

A mart's *input fingerprint* combines the fingerprints of the canonical tables it reads
(``ingest.canonical_state``, kept by the canonical build), the settings, and the part of
the run clock its rules depend on. When the fingerprint equals the one recorded at its
last build, the mart is left as it is (only its ``run_as_of`` column is moved to the
new run), so an incremental run costs what changed. Tables filled some other way (tests
that insert canonical rows directly) have no fingerprint: their marts are always built.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import duckdb

from contracts.settings import Settings

_STATE_DDL = "CREATE TABLE IF NOT EXISTS marts.build_state (mart VARCHAR PRIMARY KEY, fingerprint VARCHAR, built_at TIMESTAMPTZ)"


def input_fingerprint(con: duckdb.DuckDBPyConnection, inputs: list[str], settings: Settings,
                      clock_key: str) -> str | None:
    """Fingerprint of the inputs, or None when one of them has no recorded build."""
    rows = dict(con.execute(
        "SELECT feed, fingerprint FROM ingest.canonical_state WHERE feed IN (SELECT unnest($t))",
        {"t": inputs}).fetchall())
    if set(rows) != set(inputs):
        return None
    h = hashlib.sha256()
    for t in sorted(inputs):
        h.update(f"{t}={rows[t]}\n".encode())
    h.update(json.dumps(settings.as_dict(), sort_keys=True).encode())
    h.update(clock_key.encode())
    return h.hexdigest()


def is_current(con: duckdb.DuckDBPyConnection, mart: str, fingerprint: str | None) -> bool:
    if fingerprint is None:
        return False
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    con.execute(_STATE_DDL)
    row = con.execute("SELECT fingerprint FROM marts.build_state WHERE mart = ?", [mart]).fetchone()
    return row is not None and row[0] == fingerprint


def record_build(con: duckdb.DuckDBPyConnection, mart: str, fingerprint: str | None) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
    con.execute(_STATE_DDL)
    if fingerprint is None:
        con.execute("DELETE FROM marts.build_state WHERE mart = ?", [mart])
        return
    con.execute("""INSERT INTO marts.build_state VALUES (?, ?, now())
                   ON CONFLICT (mart) DO UPDATE SET fingerprint = excluded.fingerprint, built_at = excluded.built_at""",
                [mart, fingerprint])


def move_run_clock(con: duckdb.DuckDBPyConnection, tables: list[str], as_of: datetime) -> None:
    """Stamp unchanged mart rows with the new run's ``as_of``."""
    for t in tables:
        con.execute(f"UPDATE {t} SET run_as_of = $a WHERE run_as_of IS DISTINCT FROM $a", {"a": as_of})
