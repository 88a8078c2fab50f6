"""Pick each feed's current version and build the canonical tables from staging.

Current-version rules (``shared/spec/extracts.md``), over file versions whose ``<TS>``
is not after the run's ``as_of`` (so a run with an old ``as_of`` reproduces exactly):

- a file name's current version is its latest *accepted* version (a rejected
  correction leaves the earlier accepted version in place);
- full snapshots: the accepted file with the latest ``<TS>`` (a rejected newer file
  leaves the previous one current: degraded mode);
- ``forecast``: the accepted file with the latest ``published_at``;
- ``purchase_order`` / ``planned_order`` deltas: the latest version of each line /
  recommendation, by file ``<TS>``;
- ``transaction``: every distinct ``txn_id`` once (the first file that delivered it).

A canonical table is rebuilt only when the set of current file versions changed since
its last build (``ingest.canonical_state``), and checked against its pandera contract
(``contracts/canonical.py``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import duckdb

from contracts.feeds import DELTA, EVENTS, FEEDS, SNAPSHOT, VERSIONED, Feed
from contracts.settings import Settings
from contracts.warehouse import create_all, table_exists

CANONICAL_TABLE = {
    "item_master": "canonical.item",
    "uom_conversion": "canonical.uom_conversion",
    "location_master": "canonical.location",
    "item_location": "canonical.item_location",
    "item_xref": "canonical.item_xref",
    "location_xref": "canonical.location_xref",
    "inventory_balance": "canonical.inventory_snapshot",
    "stock_snapshot": "canonical.inventory_snapshot",
    "inventory_position": "canonical.inventory_snapshot",
    "purchase_order": "canonical.purchase_order_line",
    "forecast": "canonical.forecast",
    "planned_order": "canonical.planned_order",
    "transaction": "canonical.inventory_txn",
}

# staging column -> canonical column, per feed (only where names differ or need work)
_SELECT = {
    "purchase_order": "* EXCLUDE (_file_path, _sha256, _extract_ts, _row_number), _extract_ts AS extract_ts, _file_path AS source_file",
    "planned_order": "* EXCLUDE (_file_path, _sha256, _extract_ts, _row_number), _extract_ts AS extract_ts, _file_path AS source_file",
}
_DEFAULT_SELECT = "* EXCLUDE (_file_path, _sha256, _extract_ts, _row_number), _file_path AS source_file"


def _candidates_sql(feed: Feed) -> str:
    """Latest accepted version of every file name of the feed, extract_ts <= as_of."""
    return f"""
        SELECT file_path, sha256, system, feed, extract_ts FROM (
            SELECT *, row_number() OVER (PARTITION BY file_path ORDER BY seq DESC) AS rn
            FROM ingest.manifest WHERE feed = '{feed.name}' AND outcome = 'accepted'
              AND extract_ts <= $as_of
        ) WHERE rn = 1"""


def select_current_files(con: duckdb.DuckDBPyConnection, feed: Feed, as_of: datetime) -> list[tuple]:
    cands = _candidates_sql(feed)
    if feed.kind == SNAPSHOT:
        sql = f"SELECT * FROM ({cands}) ORDER BY extract_ts DESC, file_path DESC LIMIT 1"
    elif feed.kind == VERSIONED:
        if not table_exists(con, feed.staging_table):
            return []
        sql = f"""
            SELECT c.* FROM ({cands}) c
            JOIN (SELECT _file_path, _sha256, max(published_at) AS published_at
                  FROM {feed.staging_table} GROUP BY ALL) s
              ON s._file_path = c.file_path AND s._sha256 = c.sha256
            ORDER BY s.published_at DESC, c.extract_ts DESC LIMIT 1"""
    else:  # DELTA, EVENTS: every accepted file contributes
        sql = f"SELECT * FROM ({cands}) ORDER BY extract_ts, file_path"
    return con.execute(sql, {"as_of": as_of}).fetchall()


def _fingerprint(files: list[tuple]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f[0]}|{f[1]}\n".encode())
    return h.hexdigest()


def build_canonical_feed(con: duckdb.DuckDBPyConnection, feed: Feed, settings: Settings, as_of: datetime,
                         force: bool = False) -> dict:
    """Rebuild the canonical rows of one feed when its current files changed.

    Returns metadata: whether it was rebuilt, the current files, row count.
    """
    create_all(con)
    files = select_current_files(con, feed, as_of)
    fp = _fingerprint(files)
    target = CANONICAL_TABLE[feed.name]
    state = con.execute("SELECT fingerprint FROM ingest.canonical_state WHERE feed = ?", [feed.name]).fetchone()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM ingest.current_files WHERE feed = ?", [feed.name])
        if files:
            con.executemany("INSERT INTO ingest.current_files VALUES (?, ?, ?, ?, ?)", files)
        rebuilt = force or state is None or state[0] != fp
        if rebuilt:
            _rebuild(con, feed, target)
            con.execute(
                """INSERT INTO ingest.canonical_state VALUES (?, ?, now())
                   ON CONFLICT (feed) DO UPDATE SET fingerprint = excluded.fingerprint, built_at = excluded.built_at""",
                [feed.name, fp])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    where = f"WHERE system = '{feed.system}'" if target == "canonical.inventory_snapshot" else ""
    rows = con.execute(f"SELECT count(*) FROM {target} {where}").fetchone()[0]
    return {"rebuilt": rebuilt, "current_files": [f[0] for f in files], "rows": rows, "table": target}


def _rebuild(con: duckdb.DuckDBPyConnection, feed: Feed, target: str) -> None:
    snapshot_part = target == "canonical.inventory_snapshot"
    if snapshot_part:
        con.execute(f"DELETE FROM {target} WHERE system = ?", [feed.system])
        con.execute("DELETE FROM canonical.conflict_key WHERE feed = ?", [feed.name])
    else:
        con.execute(f"DELETE FROM {target}")
    if not table_exists(con, feed.staging_table):
        return
    cur = f"""(SELECT s.* FROM {feed.staging_table} s
               JOIN ingest.current_files c ON c.feed = '{feed.name}'
                AND c.file_path = s._file_path AND c.sha256 = s._sha256)"""
    select = _SELECT.get(feed.name, _DEFAULT_SELECT)
    if feed.kind in (SNAPSHOT, VERSIONED):
        src = cur
    elif feed.kind == DELTA:
        key = "ebeln, ebelp" if feed.name == "purchase_order" else "recommendation_id"
        src = f"""(SELECT * FROM {cur} QUALIFY row_number() OVER (
                    PARTITION BY {key} ORDER BY _extract_ts DESC, _file_path DESC, _row_number DESC) = 1)"""
    elif feed.kind == EVENTS:
        src = f"""(SELECT * FROM {cur} QUALIFY row_number() OVER (
                    PARTITION BY txn_id ORDER BY _extract_ts, _file_path, _row_number) = 1)"""
    else:  # pragma: no cover - every kind is listed above
        raise ValueError(feed.kind)
    con.execute(f"INSERT INTO {target} BY NAME SELECT {select} FROM {src}")
    if snapshot_part:
        con.execute(
            f"""INSERT INTO canonical.conflict_key BY NAME
                SELECT k.system, k.feed, k.item_id, k.location_id, k.natural_key, k._file_path AS source_file
                FROM staging.conflict_key k JOIN ingest.current_files c
                  ON c.feed = '{feed.name}' AND c.file_path = k._file_path AND c.sha256 = k._sha256""")


def build_feed_status(con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime) -> list[dict]:
    """Freshness of every feed at ``as_of`` into ``ingest.feed_status`` (one row per feed)."""
    create_all(con)
    rows = []
    for name, feed in FEEDS.items():
        newest = con.execute(
            f"SELECT file_path, extract_ts FROM ({_candidates_sql(feed)}) ORDER BY extract_ts DESC LIMIT 1",
            {"as_of": as_of}).fetchone()
        n_current = con.execute("SELECT count(*) FROM ingest.current_files WHERE feed = ?", [name]).fetchone()[0]
        limit = settings.freshness_hours.get(name)
        age = (as_of - newest[1]).total_seconds() / 3600 if newest else None
        stale = bool(limit is not None and (age is None or age > limit))
        rows.append((feed.system, name, n_current, newest[0] if newest else None, newest[1] if newest else None,
                     age, limit, stale, as_of))
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM ingest.feed_status WHERE run_as_of = ?", [as_of])
    con.executemany("INSERT INTO ingest.feed_status VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("COMMIT")
    cols = ("system", "feed", "current_files", "newest_file", "newest_extract_ts", "age_hours",
            "freshness_limit_hours", "stale", "run_as_of")
    return [dict(zip(cols, r)) for r in rows]


def feeds_of(table: str) -> list[Feed]:
    return [FEEDS[name] for name, t in CANONICAL_TABLE.items() if t == table]


def build_canonical_table(con: duckdb.DuckDBPyConnection, table: str, settings: Settings,
                          as_of: datetime) -> dict:
    """Build one canonical table from its feed(s) and check it against its contract."""
    from contracts.canonical import validate_table

    parts = {feed.name: build_canonical_feed(con, feed, settings, as_of) for feed in feeds_of(table)}
    rebuilt = any(p["rebuilt"] for p in parts.values())
    key = "|".join(sorted(f"{name}:{','.join(p['current_files'])}" for name, p in parts.items()))
    cached = con.execute("SELECT result FROM ingest.canonical_check WHERE table_name = ? AND files_key = ?",
                         [table, key]).fetchone()
    if cached is not None and not rebuilt:
        check = json.loads(cached[0])      # same files as the last check: not read again
    else:
        check = validate_table(con, table)
        con.execute(
            """INSERT INTO ingest.canonical_check VALUES (?, ?, ?)
               ON CONFLICT (table_name) DO UPDATE SET files_key = excluded.files_key, result = excluded.result""",
            [table, key, json.dumps(check, default=str)])
    return {"table": table, "feeds": parts, "rows": check["rows"], "rebuilt": rebuilt,
            "contract_failures": check["failures"], "contract_sample": check["sample"]}
