"""Pick each feed's current version and publish the canonical tables.

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

Storage: a canonical table is the Parquet folder ``<lake>/canonical/<table>/`` and a
DuckDB view ``canonical.<table>`` over it. For snapshot feeds the folder holds hard
links to the current files' staging Parquet (no copy); for delta and event feeds one
Parquet file with the latest version of each key. A table is republished only when the
set of current file versions changed (``ingest.canonical_state``), and checked against
its pandera contract (``contracts/canonical.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import duckdb

from contracts.feeds import DELTA, EVENTS, FEEDS, SNAPSHOT, VERSIONED, Feed
from contracts.files import link_or_copy
from contracts.ingest import staging_path
from contracts.settings import Settings
from contracts.warehouse import (CANONICAL_DDL, columns_of, create_all, default_lake_dir, drop_table_or_view,
                                empty_select, quoted)

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
DELTA_KEY = {"purchase_order": "ebeln, ebelp", "planned_order": "recommendation_id"}


def feeds_of(table: str) -> list[Feed]:
    return [FEEDS[name] for name, t in CANONICAL_TABLE.items() if t == table]


def _candidates_sql(feed: Feed) -> str:
    """Latest accepted version of every file name of the feed, extract_ts <= as_of."""
    return f"""
        SELECT file_path, sha256, system, feed, extract_ts, version_ts FROM (
            SELECT *, row_number() OVER (PARTITION BY file_path ORDER BY seq DESC) AS rn
            FROM ingest.manifest WHERE feed = '{feed.name}' AND outcome = 'accepted'
              AND extract_ts <= $as_of
        ) WHERE rn = 1"""


def select_current_files(con: duckdb.DuckDBPyConnection, feed: Feed, as_of: datetime) -> list[tuple]:
    """(file_path, sha256, system, feed, extract_ts) of the feed's current file versions."""
    cands = _candidates_sql(feed)
    if feed.kind == SNAPSHOT:
        sql = f"SELECT * FROM ({cands}) ORDER BY extract_ts DESC, file_path DESC LIMIT 1"
    elif feed.kind == VERSIONED:
        sql = f"SELECT * FROM ({cands}) ORDER BY version_ts DESC NULLS LAST, extract_ts DESC LIMIT 1"
    else:  # DELTA, EVENTS: every accepted file contributes
        sql = f"SELECT * FROM ({cands}) ORDER BY extract_ts, file_path"
    return [r[:5] for r in con.execute(sql, {"as_of": as_of}).fetchall()]


def _fingerprint(lake_dir: Path, files: dict[str, list[tuple]]) -> str:
    h = hashlib.sha256(str(lake_dir.resolve()).encode())
    for feed in sorted(files):
        for f in files[feed]:
            h.update(f"{feed}|{f[0]}|{f[1]}\n".encode())
    return h.hexdigest()


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _publish(con: duckdb.DuckDBPyConnection, table: str, lake: Path, files: dict[str, list[tuple]],
             built_from: dict[str, list[tuple]] | None = None) -> Path:
    """Write ``<lake>/canonical/<table>/`` for the given current files; return the folder.

    ``built_from``: the current files the existing folder was built from. An event feed
    (``transaction``) whose files are those plus newer ones keeps the parts it has and
    gets one more with the newly delivered ``txn_id``s (the hourly run's case), instead of
    deduplicating every movement again."""
    name = table.split(".")[1]
    final = lake / "canonical" / name
    tmp = lake / "canonical" / f".{name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for feed_name, rows in files.items():
        feed = FEEDS[feed_name]
        paths = [staging_path(lake, feed, r[0], r[1]) for r in rows]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"staging Parquet missing for {feed_name}: {missing[0]} (re-ingest the file)")
        if not paths:
            continue
        before = (built_from or {}).get(feed_name) or []
        parts = sorted(final.glob(f"{feed.name}*.parquet")) if final.is_dir() else []
        if feed.kind == EVENTS and before and parts and len(rows) > len(before) and rows[:len(before)] == before:
            for p in parts:
                link_or_copy(p, tmp / p.name)
            out = tmp / f"{feed.name}.{len(parts):05d}.parquet"
            con.execute(
                f"""COPY (SELECT * EXCLUDE (filename) FROM read_parquet({_sql_list(paths[len(before):])},
                          filename = true, union_by_name = true)
                          WHERE txn_id NOT IN (SELECT txn_id FROM read_parquet({_sql_list(parts)}))
                          QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY filename, _row_number) = 1)
                    TO '{out}' (FORMAT parquet, COMPRESSION lz4)""")
        elif feed.kind in (SNAPSHOT, VERSIONED):
            for p in paths:
                link_or_copy(p, tmp / f"{feed.name}__{p.name}")
        else:
            if feed.kind == DELTA:
                order = f"PARTITION BY {DELTA_KEY[feed.name]} ORDER BY extract_ts DESC, source_file DESC, _row_number DESC"
            else:
                order = "PARTITION BY txn_id ORDER BY filename, _row_number"
            out = tmp / f"{feed.name}.parquet"
            con.execute(
                f"""COPY (SELECT * EXCLUDE (filename) FROM read_parquet({_sql_list(paths)}, filename = true,
                          union_by_name = true) QUALIFY row_number() OVER ({order}) = 1)
                    TO '{out}' (FORMAT parquet, COMPRESSION lz4)""")
    old = lake / "canonical" / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _create_view(con: duckdb.DuckDBPyConnection, table: str, folder: Path | None) -> None:
    cols = columns_of(CANONICAL_DDL[table])
    drop_table_or_view(con, table)
    if folder is None or not any(folder.glob("*.parquet")):
        con.execute(f"CREATE VIEW {table} AS {empty_select(CANONICAL_DDL[table])}")
        return
    select = ", ".join(f"CAST({quoted(c)} AS {t}) AS {quoted(c)}" for c, t in cols)
    pattern = str(folder / "*.parquet").replace("'", "''")
    con.execute(f"CREATE VIEW {table} AS SELECT {select} FROM read_parquet('{pattern}', union_by_name = true)")


def build_canonical_table(con: duckdb.DuckDBPyConnection, table: str, settings: Settings, as_of: datetime,
                          lake_dir: str | os.PathLike, force: bool = False) -> dict:
    """Publish one canonical table from its feed(s) when its current files changed, and
    check it against its contract. Returns metadata for the UI."""
    from contracts.canonical import validate_table

    create_all(con)
    lake = Path(lake_dir).resolve()
    feeds = feeds_of(table)
    files = {f.name: select_current_files(con, f, as_of) for f in feeds}
    fp = _fingerprint(lake, files)
    state = con.execute("SELECT fingerprint FROM ingest.canonical_state WHERE feed = ?", [table]).fetchone()
    rebuilt = force or state is None or state[0] != fp
    # the current files the table was last built from, in the order select_current_files gives
    recorded = {name: con.execute(
        "SELECT file_path, sha256, system, feed, extract_ts FROM ingest.current_files WHERE feed = ? "
        "ORDER BY extract_ts, file_path", [name]).fetchall() for name in files}
    changed_feeds = [f for f in feeds if sorted(recorded[f.name]) != sorted(files[f.name])]
    con.execute("BEGIN TRANSACTION")
    try:
        for f in changed_feeds:
            con.execute("DELETE FROM ingest.current_files WHERE feed = ?", [f.name])
            if files[f.name]:
                con.executemany("INSERT INTO ingest.current_files VALUES (?, ?, ?, ?, ?)", files[f.name])
        if rebuilt:
            same_folder = state is not None and state[0] == _fingerprint(lake, recorded)
            folder = _publish(con, table, lake, files, recorded if same_folder else None)
            _create_view(con, table, folder)
            if table == "canonical.inventory_snapshot":
                con.execute("DELETE FROM canonical.conflict_key")
                con.execute(
                    """INSERT INTO canonical.conflict_key BY NAME
                       SELECT k.system, k.feed, k.item_id, k.location_id, k.natural_key, k._file_path AS source_file
                       FROM staging.conflict_key k JOIN ingest.current_files c
                         ON c.feed = k.feed AND c.file_path = k._file_path AND c.sha256 = k._sha256""")
            con.execute(
                """INSERT INTO ingest.canonical_state VALUES (?, ?, now())
                   ON CONFLICT (feed) DO UPDATE SET fingerprint = excluded.fingerprint, built_at = excluded.built_at""",
                [table, fp])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    cached = con.execute("SELECT result FROM ingest.canonical_check WHERE table_name = ? AND files_key = ?",
                         [table, fp]).fetchone()
    if cached is not None and not rebuilt:
        check = json.loads(cached[0])      # same files as the last check: not read again
    else:
        folder = lake / "canonical" / table.split(".")[1]
        check = validate_table(con, table, sorted(folder.glob("*.parquet")) if folder.is_dir() else None)
        con.execute(
            """INSERT INTO ingest.canonical_check VALUES (?, ?, ?)
               ON CONFLICT (table_name) DO UPDATE SET files_key = excluded.files_key, result = excluded.result""",
            [table, fp, json.dumps(check, default=str)])
    return {"table": table, "rebuilt": rebuilt, "rows": check["rows"],
            "current_files": {name: [r[0] for r in rows] for name, rows in files.items()},
            "folder": str(lake / "canonical" / table.split(".")[1]),
            "contract_failures": check["failures"], "contract_sample": check["sample"]}


def build_canonical(con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime,
                    lake_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Every canonical table plus feed freshness (what the ingestion layer ends with)."""
    lake_dir = lake_dir or default_lake_dir(con)
    out = {t: build_canonical_table(con, t, settings, as_of, lake_dir) for t in sorted(set(CANONICAL_TABLE.values()))}
    build_feed_status(con, settings, as_of)
    return out


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
