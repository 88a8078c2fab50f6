"""Skip a mart whose inputs did not change since it was last built.

A mart's *input fingerprint* combines the fingerprints of the canonical tables it reads
(``ingest.canonical_state``, kept by the canonical build), the settings, the part of
the run clock its rules depend on, any digest the builder adds (drift adds one of the
WMS movements that can move its figures) and the code that builds and checks the marts
(:func:`code_stamp` of :data:`MART_CODE`: a new version of distsync rebuilds them). When the fingerprint equals the one recorded
at its last build, the mart's file is carried over to the new run
(``mart_store.move_run_mart``: a hard link, no rewrite) together with the result of its
contract check, so an incremental run costs what changed. Tables filled some other way
(tests that insert canonical rows directly) have no fingerprint: their marts are always
built. The builds are recorded in ``marts.build_state``, created (and given newer columns)
with the other persistent marts by ``marts_ddl.ensure_marts``, which every builder calls
first.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

import duckdb

from contracts.settings import Settings
from contracts.warehouse import table_exists

from .mart_store import current_file, move_run_mart

_ROOT = Path(__file__).resolve().parent.parent
# the modules whose code decides a mart's rows and its contract result
MART_CODE = tuple(_ROOT / f for f in (
    "reconciliation/drift.py", "reconciliation/alignment.py", "reconciliation/marts_ddl.py",
    "reconciliation/mart_store.py", "reconciliation/incremental.py", "contracts/outgoing.py"))


def code_stamp(*files: str | os.PathLike) -> str:
    """A digest of the source of ``files``: part of every fingerprint or cache key whose
    result depends on that code (marts, payload builds, report texts)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def input_fingerprint(con: duckdb.DuckDBPyConnection, inputs: list[str], settings: Settings,
                      clock_key: str, extra: str = "") -> str | None:
    """Fingerprint of the inputs, or None when one of them has no recorded build (or the
    warehouse keeps no build records at all: a connection that only sees the lake)."""
    if not table_exists(con, "ingest.canonical_state"):
        return None
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
    h.update(extra.encode())
    h.update(code_stamp(*MART_CODE).encode())
    return h.hexdigest()


def _recorded_build(con: duckdb.DuckDBPyConnection, mart: str, fingerprint: str | None) -> dict | None:
    """The contract result recorded with the mart's last build when that build had this
    fingerprint (the mart is current), else None."""
    if fingerprint is None:
        return None
    row = con.execute("SELECT fingerprint, contract FROM marts.build_state WHERE mart = ?", [mart]).fetchone()
    if row is None or row[0] != fingerprint:
        return None
    return json.loads(row[1]) if row[1] else {"failures": {}, "sample": []}


def carry_over(con: duckdb.DuckDBPyConnection, mart: str, fingerprint: str | None, tables: list[str],
               lake_dir: str | os.PathLike, as_of: datetime) -> dict | None:
    """When the mart's last build had this fingerprint and each of its ``tables`` still has
    its lake file, carry those files over to the run at ``as_of`` (a hard link each,
    ``mart_store.move_run_mart``) and return the contract result recorded with the build;
    otherwise None: the mart has to be built."""
    contract = _recorded_build(con, mart, fingerprint)
    if contract is None or any(current_file(con, lake_dir, t) is None for t in tables):
        return None
    for table in tables:
        move_run_mart(con, table, lake_dir, as_of)
    return contract


def record_build(con: duckdb.DuckDBPyConnection, mart: str, fingerprint: str | None,
                 contract: dict | None = None) -> None:
    if fingerprint is None:
        con.execute("DELETE FROM marts.build_state WHERE mart = ?", [mart])
        return
    con.execute("""INSERT INTO marts.build_state VALUES (?, ?, now(), ?)
                   ON CONFLICT (mart) DO UPDATE SET fingerprint = excluded.fingerprint,
                     built_at = excluded.built_at, contract = excluded.contract""",
                [mart, fingerprint, json.dumps(contract, default=str) if contract is not None else None])
