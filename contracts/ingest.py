"""Ingest delivered files: manifest, hash idempotency, quarantine, staging.

For each file found in the landing zone:

- unchanged since last seen (same size and mtime / ETag) -> skipped, nothing written;
- same bytes as the version already ingested under that name -> manifest ``duplicate``;
- otherwise parsed (``contracts/readers.py``), checked (``contracts/mapping.py``) and
  recorded: ``accepted`` (accepted rows go to ``staging.<feed>``) or ``rejected`` with
  its reason (unparseable, a full snapshot with no rows, or more than
  ``settings.reject_bad_row_share`` of its rows quarantined). A file with the same name
  and a new hash is a correction: a new version that supersedes the earlier one.

Accepted rows are kept as one Parquet file per file version under
``<lake>/staging/<system>_<feed>/`` (canonical shape, base units); the manifest,
quarantine and conflict keys of a file are written in one DuckDB transaction, so a
table is never half-loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import polars as pl

from contracts import landing as landing_mod
from contracts.feeds import FEEDS, INGEST_ORDER, Feed, LandingFile
from contracts.files import write_parquet_atomic
from contracts.mapping import Prepared, References, prepare
from contracts.readers import ROW_NUMBER, FileRejected, read_feed_file
from contracts.settings import Settings
from contracts.warehouse import create_all, default_lake_dir, export_to_lake, table_exists


@dataclass
class FileOutcome:
    rel_path: str
    feed: str | None
    outcome: str                      # accepted | rejected | duplicate
    reason: str | None
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    rule_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class FeedIngest:
    feed: str
    files: list[FileOutcome] = field(default_factory=list)
    skipped_unchanged: int = 0


def _now() -> datetime:
    return datetime.now(timezone.utc)


def load_references(con: duckdb.DuckDBPyConnection) -> References:
    def q(sql: str) -> pl.DataFrame:
        return con.execute(sql).pl()

    return References(
        items=q("SELECT item_id, matnr, base_uom FROM canonical.item"),
        locations=q("SELECT location_id FROM canonical.location"),
        uom=q("SELECT item_id, uom, factor FROM canonical.uom_conversion"),
        item_xref=q("SELECT system, external_code, item_id FROM canonical.item_xref"),
        location_xref=q("SELECT system, external_code, location_id FROM canonical.location_xref"),
    )


def _latest_version(con, rel_path: str):
    return con.execute(
        """SELECT sha256, outcome, ingested_at FROM ingest.manifest
           WHERE file_path = ? AND outcome IN ('accepted', 'rejected')
           ORDER BY seq DESC LIMIT 1""",
        [rel_path],
    ).fetchone()


def _state(con, rel_path: str):
    return con.execute("SELECT signature, sha256 FROM ingest.file_state WHERE file_path = ?", [rel_path]).fetchone()


def _write_manifest(con, *, rel_path, system, feed, extract_ts, sha, size, outcome, reason, as_of, uri,
                    rows_read=0, rows_accepted=0, rows_quarantined=0, rows_duplicate=0, version_ts=None) -> None:
    con.execute(
        """INSERT INTO ingest.manifest BY NAME SELECT
             (SELECT coalesce(max(seq), 0) + 1 FROM ingest.manifest) AS seq,
             ? AS file_path, ? AS system, ? AS feed, ? AS extract_ts, ? AS sha256, ? AS size_bytes,
             ? AS rows_read, ? AS rows_accepted, ? AS rows_quarantined, ? AS rows_duplicate,
             ? AS outcome, ? AS reason, ? AS ingested_at, ? AS run_as_of, ? AS source_uri,
             ? AS version_ts""",
        [rel_path, system, feed, extract_ts, sha, size, rows_read, rows_accepted, rows_quarantined,
         rows_duplicate, outcome, reason, _now(), as_of, uri, version_ts],
    )


def _hash_file(path: str, chunk: int = 8 << 20) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _write_state(con, rel_path: str, size: int, signature: str, sha: str) -> None:
    con.execute(
        """INSERT INTO ingest.file_state VALUES (?, ?, ?, ?)
           ON CONFLICT (file_path) DO UPDATE SET size_bytes = excluded.size_bytes,
             signature = excluded.signature, sha256 = excluded.sha256""",
        [rel_path, size, signature, sha],
    )


def _quarantine_rows(feed: Feed, prep: Prepared, rel_path: str, sha: str) -> pl.DataFrame:
    return prep.quarantine.select(
        pl.lit(rel_path).alias("file_path"), pl.lit(sha).alias("sha256"), pl.lit(feed.system).alias("system"),
        pl.lit(feed.name).alias("feed"), pl.col(ROW_NUMBER).alias("row_number"), "rule", "column", "detail",
        "raw", "code_kind", "code",
    ).sort("row_number", "rule")


def staging_path(lake_dir: str | os.PathLike, feed: Feed, rel_path: str, sha: str) -> Path:
    """Where the accepted rows of one file version are kept (Parquet, canonical shape)."""
    stem = rel_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return Path(lake_dir) / "staging" / feed.qualified / f"{stem}__{sha[:16]}.parquet"


def _write_staging(lake_dir, feed: Feed, staged: pl.DataFrame, rel_path: str, sha: str,
                   extract_ts: datetime) -> Path:
    frame = staged.with_columns(pl.lit(rel_path).alias("source_file"))
    if feed.name in ("purchase_order", "planned_order"):
        frame = frame.with_columns(pl.lit(extract_ts).cast(pl.Datetime("us", "UTC")).alias("extract_ts"))
    path = staging_path(lake_dir, feed, rel_path, sha)
    write_parquet_atomic(frame, path, fsync=False)  # staging is rebuilt from the landing file
    return path


def ingest_file(con: duckdb.DuckDBPyConnection, lf: LandingFile, refs: Callable[[], References],
                settings: Settings, as_of: datetime, lake_dir: str | os.PathLike,
                data: bytes | None = None) -> FileOutcome | None:
    """Ingest one landing file; None when it is unchanged since it was last seen.

    ``refs()`` gives the master data to map against; it is called only when the file's
    rows are read, so unchanged, duplicate and unreadable files cost no reference load."""
    started = time.perf_counter()
    feed = lf.feed
    state = _state(con, lf.rel_path)
    if state is not None and state[0] == lf.signature:
        return None
    if data is None and not lf.uri.startswith("s3://"):
        # a local file: hashed in one streaming pass, then parsed by the library straight
        # from the file (never held in memory as bytes)
        sha, size = _hash_file(lf.uri)
        data = lf.uri
    else:
        data = landing_mod.read_bytes(lf.uri) if data is None else data
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
    common = dict(rel_path=lf.rel_path, system=feed.system, feed=feed.name, extract_ts=lf.extract_ts,
                  sha=sha, size=size, as_of=as_of, uri=lf.uri)
    latest = _latest_version(con, lf.rel_path)
    if latest is not None and latest[0] == sha:
        con.execute("BEGIN TRANSACTION")
        reason = f"identical re-delivery of the version ingested at {latest[2].isoformat()}"
        _write_manifest(con, **common, outcome="duplicate", reason=reason)
        _write_state(con, lf.rel_path, size, lf.signature, sha)
        con.execute("COMMIT")
        return FileOutcome(lf.rel_path, feed.name, "duplicate", reason, seconds=time.perf_counter() - started)

    try:
        parsed = read_feed_file(feed, data)
    except FileRejected as exc:
        con.execute("BEGIN TRANSACTION")
        _write_manifest(con, **common, outcome="rejected", reason=str(exc))
        _write_state(con, lf.rel_path, size, lf.signature, sha)
        con.execute("COMMIT")
        return FileOutcome(lf.rel_path, feed.name, "rejected", str(exc), seconds=time.perf_counter() - started)
    del data
    box = [parsed]
    del parsed
    prep = prepare(feed, box.pop(), refs())  # prepare releases the raw frame when done with it
    n_bad = prep.rows_quarantined
    reason = None
    if prep.rows_read == 0 and feed.is_full_snapshot:
        reason = "full snapshot with no rows"
    elif prep.rows_read and n_bad / prep.rows_read > settings.reject_bad_row_share:
        reason = (f"{n_bad} of {prep.rows_read} rows quarantined ({n_bad / prep.rows_read:.1%}), over the "
                  f"{settings.reject_bad_row_share:.0%} limit")
    outcome = "rejected" if reason else "accepted"
    rule_counts = dict(prep.quarantine.group_by("rule").agg(pl.col(ROW_NUMBER).n_unique()).iter_rows()) \
        if n_bad else {}
    if outcome == "accepted" and n_bad:
        reason = f"{n_bad} rows quarantined: " + ", ".join(f"{k} {v}" for k, v in sorted(rule_counts.items()))
    quarantine = _quarantine_rows(feed, prep, lf.rel_path, sha)
    rows_accepted = prep.staged.height if outcome == "accepted" else 0
    if outcome == "accepted":
        # written before the manifest row that makes it count; a crash in between leaves
        # a file that the retry overwrites (same name for the same bytes)
        _write_staging(lake_dir, feed, prep.staged, lf.rel_path, sha, lf.extract_ts)

    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM ingest.quarantine WHERE file_path = ? AND sha256 = ?", [lf.rel_path, sha])
        if quarantine.height:
            con.register("_q", quarantine)
            con.execute("INSERT INTO ingest.quarantine BY NAME SELECT * FROM _q")
            con.unregister("_q")
        if outcome == "accepted":
            con.execute("DELETE FROM staging.conflict_key WHERE _file_path = ? AND _sha256 = ?", [lf.rel_path, sha])
            if prep.conflicts.height:
                conflicts = prep.conflicts.with_columns(
                    pl.lit(feed.system).alias("system"), pl.lit(feed.name).alias("feed"),
                    pl.lit(lf.rel_path).alias("_file_path"), pl.lit(sha).alias("_sha256"))
                con.register("_c", conflicts)
                con.execute("INSERT INTO staging.conflict_key BY NAME SELECT * FROM _c")
                con.unregister("_c")
        version_ts = (prep.staged.select(pl.col("published_at").max()).item()
                      if feed.name == "forecast" and prep.staged.height else None)
        _write_manifest(con, **common, outcome=outcome, reason=reason, rows_read=prep.rows_read,
                        rows_accepted=rows_accepted, rows_quarantined=n_bad, rows_duplicate=prep.rows_duplicate,
                        version_ts=version_ts)
        _write_state(con, lf.rel_path, common["size"], lf.signature, sha)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return FileOutcome(lf.rel_path, feed.name, outcome, reason, prep.rows_read, rows_accepted, n_bad,
                       rule_counts, time.perf_counter() - started)


def record_unrecognised(con, item: landing_mod.Unrecognised, as_of: datetime) -> FileOutcome | None:
    """A file in the landing zone that is not named like any feed's file: rejected, recorded."""
    sig = f"{item.size}:unrecognised"
    state = _state(con, item.rel_path)
    if state is not None and state[0] == sig:
        return None
    data = landing_mod.read_bytes(item.uri)
    sha = hashlib.sha256(data).hexdigest()
    parts = item.rel_path.split("/")
    system = parts[0] if len(parts) > 1 else None
    feed = parts[1] if len(parts) > 2 else None
    reason = "file name does not follow <system>/<feed>/<feed>_<YYYYMMDDTHHMMSSZ>.<csv|jsonl|parquet>"
    con.execute("BEGIN TRANSACTION")
    _write_manifest(con, rel_path=item.rel_path, system=system, feed=feed, extract_ts=None, sha=sha,
                    size=len(data), outcome="rejected", reason=reason, as_of=as_of, uri=item.uri)
    _write_state(con, item.rel_path, len(data), sig, sha)
    con.execute("COMMIT")
    return FileOutcome(item.rel_path, feed, "rejected", reason)


def ingest_feed(con: duckdb.DuckDBPyConnection, feed: Feed, files: list[LandingFile], settings: Settings,
                as_of: datetime, lake_dir: str | os.PathLike) -> FeedIngest:
    """Ingest the given files of one feed, oldest name first."""
    result = FeedIngest(feed.name)
    # once per feed, and only if a file has rows to map: an hourly run skips the
    # unchanged files of most feeds and need not read ~250k master rows for each
    refs = functools.cache(lambda: load_references(con))
    for lf in sorted(files, key=lambda f: (f.extract_ts, f.rel_path)):
        outcome = ingest_file(con, lf, refs, settings, as_of, lake_dir)
        if outcome is None:
            result.skipped_unchanged += 1
        else:
            result.files.append(outcome)
    return result


def ingest_feed_from_landing(con: duckdb.DuckDBPyConnection, feed: Feed, landing: str, settings: Settings,
                             as_of: datetime, lake_dir: str | os.PathLike) -> FeedIngest:
    """List the feed's folder in the landing zone and ingest what is new."""
    create_all(con)
    files, _ = landing_mod.list_landing(landing, f"{feed.system}/{feed.name}")
    return ingest_feed(con, feed, files, settings, as_of, lake_dir)


def ingest_landing(con: duckdb.DuckDBPyConnection, landing: str, settings: Settings, as_of: datetime,
                   lake_dir: str | os.PathLike | None = None, build: bool = True) -> dict[str, FeedIngest]:
    """Ingest every feed in dependency order, rebuilding each canonical table as it goes.

    This is the whole ingestion layer in one call (the Dagster assets run the same steps
    one feed at a time).
    """
    from contracts.canonical_build import CANONICAL_TABLE, build_canonical_table, build_feed_status

    create_all(con)
    lake_dir = lake_dir or default_lake_dir(con)
    files, unknown = landing_mod.list_landing(landing)
    by_feed: dict[str, list[LandingFile]] = {}
    for lf in files:
        by_feed.setdefault(lf.feed.name, []).append(lf)
    results: dict[str, FeedIngest] = {}
    for name in INGEST_ORDER:
        results[name] = ingest_feed(con, FEEDS[name], by_feed.get(name, []), settings, as_of, lake_dir)
        if build:
            build_canonical_table(con, CANONICAL_TABLE[name], settings, as_of, lake_dir)
    extra = FeedIngest("unrecognised")
    for item in unknown:
        out = record_unrecognised(con, item, as_of)
        if out is not None:
            extra.files.append(out)
    results["unrecognised"] = extra
    if build:
        build_feed_status(con, settings, as_of)
    return results


def export_ingest_tables(con: duckdb.DuckDBPyConnection, lake_dir: str) -> None:
    """``ingest.manifest``, ``ingest.quarantine`` and ``ingest.feed_status`` to the lake. The
    first two change only together with a manifest row, so a run that ingested nothing
    does not rewrite them."""
    version = ":".join(map(str, con.execute(
        "SELECT count(*), max(seq), (SELECT count(*) FROM ingest.quarantine) FROM ingest.manifest").fetchone()))
    for table in ("ingest.manifest", "ingest.quarantine"):
        export_to_lake(con, table, lake_dir, version=version)
    export_to_lake(con, "ingest.feed_status", lake_dir)


def quarantine_summary(con: duckdb.DuckDBPyConnection, feed: str, limit: int = 5) -> tuple[dict, list[dict]]:
    """(rows per rule over the feed's current files, a sample of quarantined rows)."""
    if not table_exists(con, "ingest.current_files"):
        return {}, []
    counts = dict(con.execute(
        """SELECT q.rule, count(DISTINCT (q.file_path, q.row_number)) FROM ingest.quarantine q
           JOIN ingest.current_files c USING (file_path, sha256) WHERE q.feed = ? GROUP BY 1 ORDER BY 1""",
        [feed]).fetchall())
    sample = con.execute(
        """SELECT q.file_path, q.row_number, q.rule, q."column", q.detail, q.raw FROM ingest.quarantine q
           JOIN ingest.current_files c USING (file_path, sha256) WHERE q.feed = ?
           ORDER BY q.file_path, q.row_number LIMIT ?""", [feed, limit]).pl().to_dicts()
    return counts, sample
