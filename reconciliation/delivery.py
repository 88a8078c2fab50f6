"""Deliver one payload type for a run: build (or skip an unchanged build), check the
outgoing contract, emit, mirror into the warehouse, and record what was held back.

Skipping an unchanged build
---------------------------

Building the records of a payload type means reading its mart (a million rows), the
last emitted state (a million keys), hashing and diffing; when nothing it reads changed,
the result is known already. After each build the *fingerprint* of what it read is kept
in ``sync.build_state`` (one row per payload type, in the warehouse) with the result a
rebuild would give at that moment. The fingerprint combines
:func:`reconciliation.payloads.input_fingerprint` (a content digest of exactly the rows
and columns the build reads, the outcome of the blocking checks, ``full_sync`` with the
run's ``as_of``, the schema version and the code) with the outbox's
:meth:`~reconciliation.outbox.Outbox.state_token` (the set of batch ids of the payload
type; ``sync_latest`` changes only with a new batch, so an emission by any process
changes it). It is content-based, not time-based: a new run over the same data (a new
``as_of``, the mart's ``run_as_of`` moved on) is still unchanged.

When the fingerprint matches, nothing is rebuilt; the blocking checks are still run for
this ``as_of`` (their reasons name this run), the contract result of the last build is
reported again, missing batches are still mirrored and a held-back run is still written
to ``sync.blocked``.

Decisions where the spec is silent:

* The result kept after an emission is what a rebuild gives right after it (nothing left
  to send; :func:`~reconciliation.payloads.after_emission`), with the fingerprint taken
  on the outbox state *after* the commit. A partial emission (some keys were already in
  the outbox: another process raced this one) keeps no state, so the next run rebuilds.
* A build whose fingerprint cannot be taken (a table it reads is missing) is never
  skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import duckdb

from contracts.outgoing import check_payload

from .outbox import BatchResult, Outbox
from .payloads import (
    PayloadBuild,
    after_emission,
    blocking_checks,
    input_fingerprint,
    utc,
)

_STATE_DDL = """CREATE TABLE IF NOT EXISTS sync.build_state (payload_type VARCHAR PRIMARY KEY, fingerprint VARCHAR,
    records_built BIGINT, stats VARCHAR, contract VARCHAR, built_at TIMESTAMPTZ)"""

Builder = Callable[..., PayloadBuild]


@dataclass
class Delivery:
    """What one delivery of a payload type did (the asset's metadata and checks)."""

    payload_type: str
    records_built: int
    blocked_reason: str | None
    stats: dict[str, Any]
    contract: dict[str, Any]
    result: BatchResult | None = None
    skipped: bool = False


def _stored(con: duckdb.DuckDBPyConnection, payload_type: str) -> tuple | None:
    con.execute("CREATE SCHEMA IF NOT EXISTS sync")
    con.execute(_STATE_DDL)
    return con.execute("SELECT fingerprint, records_built, stats, contract FROM sync.build_state WHERE payload_type = ?",
                       [payload_type]).fetchone()


def _store(con: duckdb.DuckDBPyConnection, payload_type: str, fingerprint: str | None, records_built: int,
           stats: dict, contract: dict, as_of: datetime) -> None:
    if fingerprint is None:
        con.execute("DELETE FROM sync.build_state WHERE payload_type = ?", [payload_type])
        return
    con.execute("""INSERT INTO sync.build_state VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (payload_type) DO UPDATE SET fingerprint = excluded.fingerprint,
                   records_built = excluded.records_built, stats = excluded.stats,
                   contract = excluded.contract, built_at = excluded.built_at""",
                [payload_type, fingerprint, records_built, json.dumps(stats, default=str),
                 json.dumps(contract, default=str), as_of])


def _fingerprint(inputs: str | None, token: str) -> str | None:
    return None if inputs is None else f"{inputs}:{token}"


def deliver(con: duckdb.DuckDBPyConnection, outbox: Outbox, payload_type: str, as_of: datetime | str,
            build: Builder, *, full_sync: bool = False, skip_unchanged: bool = True) -> Delivery:
    """Build (unless unchanged), check, emit and mirror ``payload_type`` for the run at
    ``as_of``; ``build(con, as_of, outbox)`` returns the :class:`PayloadBuild`."""
    as_of = utc(as_of)
    checks = blocking_checks(con, payload_type, as_of)
    try:
        inputs = input_fingerprint(con, payload_type, as_of, checks, full_sync, outbox.schema_version)
    except duckdb.CatalogException:
        inputs = None
    token = outbox.state_token(payload_type)
    stored = _stored(con, payload_type)
    fingerprint = _fingerprint(inputs, token)
    if skip_unchanged and fingerprint is not None and stored is not None and stored[0] == fingerprint:
        delivery = Delivery(payload_type, stored[1], checks.reason, json.loads(stored[2]), json.loads(stored[3]),
                            skipped=True)
        records_held = delivery.records_built
    else:
        built = build(con, as_of, outbox)
        contract = check_payload(payload_type, built.records)
        result = None
        if built.blocked_reason is None and not contract["failures"]:
            result = outbox.emit(payload_type, built.records, as_of, versioned_against=token)
        delivery = Delivery(payload_type, built.records.height, built.blocked_reason, built.stats, contract, result)
        records_held = built.records.height
        if result is not None and result.created:
            if result.already_emitted:
                fingerprint = None  # raced another emitter: rebuild next time
            else:
                fingerprint = _fingerprint(inputs, outbox.state_token(payload_type))
            _store(con, payload_type, fingerprint, 0, after_emission(built.stats),
                   check_payload(payload_type, built.records.head(0)), as_of)
        else:
            _store(con, payload_type, fingerprint, built.records.height, built.stats, contract, as_of)
        del built
    outbox.mirror_to_duckdb(con)
    if delivery.blocked_reason is not None:
        con.execute("CREATE TABLE IF NOT EXISTS sync.blocked (payload_type VARCHAR, run_as_of TIMESTAMPTZ, "
                    "reason VARCHAR, records_held BIGINT)")
        con.execute("DELETE FROM sync.blocked WHERE payload_type = ? AND run_as_of = ?", [payload_type, as_of])
        con.execute("INSERT INTO sync.blocked VALUES (?, ?, ?, ?)",
                    [payload_type, as_of, delivery.blocked_reason, records_held])
    return delivery
