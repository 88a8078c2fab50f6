"""Where the per-run marts live: Parquet files in the lake, DuckDB views over them.

A per-run mart (``marts.inventory_drift``, ``marts.forecast_order_alignment``,
``marts.replenishment_proposal``, ``marts.projection``) is written once per computation
as one Parquet file::

    <lake>/marts/<table>/run_as_of=<YYYYMMDDTHHMMSSZ>/data.parquet

(the folder name is Hive partitioning, so Spark, polars, pyarrow or DuckDB read
``run_as_of`` from the path), and ``marts.<table>`` in the warehouse is a view over that
file that adds ``run_as_of`` at its place in the column list. The drift history is the
same files kept for every run::

    <lake>/marts/inventory_drift_history/run_as_of=<ts>/data.parquet

with ``marts.inventory_drift_history`` a view over all of them.

Why: writing a million-row mart once, as Parquet, costs a fraction of inserting it into
a DuckDB table *and* exporting it to the lake (what this project did before), and a run
whose mart inputs did not change moves the mart to the new run by a hard link — no
rewrite, no ``UPDATE … SET run_as_of`` of a million rows, and the history grows by a link,
not by a million rows in the DuckDB file.

Rules:

* A file is written under a temporary name and renamed: readers see the old file or the
  new one. The view is switched after the file is in place; other runs' folders of a
  per-run mart are removed afterwards (an open reader keeps its file).
* ``run_as_of`` is never stored in the files; it is the folder name (UTC, seconds, and
  ``.ffffff`` microseconds only when the run clock has them).
* A warehouse from before this layout (marts as DuckDB tables, history rows in
  ``marts.inventory_drift_history``) is migrated the first time a mart is published: the
  history rows move to the lake, one folder per run, and the tables become views.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import polars as pl

from contracts.files import link_atomic, replaced_atomically
from contracts.warehouse import columns_of, drop_table_or_view, empty_select, quoted, table_kind

from .marts_ddl import MARTS_DDL

HISTORY = "marts.inventory_drift_history"
DATA_FILE = "data.parquet"
_RUN_PREFIX = "run_as_of="
_TS_FORMATS = "['%Y%m%dT%H%M%SZ', '%Y%m%dT%H%M%S.%fZ']"


def run_folder(as_of: datetime) -> str:
    """``run_as_of=20261124T090000Z`` (microseconds only when there are some)."""
    as_of = as_of.astimezone(timezone.utc)
    return _RUN_PREFIX + as_of.strftime("%Y%m%dT%H%M%S.%fZ" if as_of.microsecond else "%Y%m%dT%H%M%SZ")


def mart_dir(lake_dir: str | os.PathLike, table: str) -> Path:
    return Path(lake_dir) / "marts" / table.split(".")[1]


def run_file(lake_dir: str | os.PathLike, table: str, as_of: datetime) -> Path:
    return mart_dir(lake_dir, table) / run_folder(as_of) / DATA_FILE


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _stored_columns(table: str) -> list[tuple[str, str]]:
    return [(c, t) for c, t in columns_of(MARTS_DDL[table]) if c != "run_as_of"]


def _view_select(table: str, run_as_of_sql: str) -> str:
    """The table's columns in DDL order and types, ``run_as_of`` given by an expression."""
    return ", ".join(f"{run_as_of_sql} AS run_as_of" if c == "run_as_of" else f"CAST({quoted(c)} AS {t}) AS {quoted(c)}"
                     for c, t in columns_of(MARTS_DDL[table]))


def _point_view(con: duckdb.DuckDBPyConnection, table: str, file: Path, as_of: datetime) -> None:
    stamp = f"TIMESTAMPTZ '{as_of.astimezone(timezone.utc).isoformat()}'"
    if table_kind(con, table) == "BASE TABLE":
        drop_table_or_view(con, table)
    con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {_view_select(table, stamp)} "
                f"FROM read_parquet({_sql_path(file)})")


def _remove_other_runs(lake_dir: str | os.PathLike, table: str, keep: Path) -> None:
    folder = mart_dir(lake_dir, table)
    for entry in folder.iterdir():
        if entry != keep.parent and (entry.name.startswith(_RUN_PREFIX) or entry.name == DATA_FILE):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _publish(con: duckdb.DuckDBPyConnection, table: str, lake_dir: str | os.PathLike, as_of: datetime,
             write: Callable[[Path], None]) -> Path:
    """``write`` fills a temporary file; it becomes this run's file and the view's."""
    file = run_file(lake_dir, table, as_of)
    with replaced_atomically(file) as tmp:
        write(tmp)
    _point_view(con, table, file, as_of)
    _remove_other_runs(lake_dir, table, file)
    return file


def write_run_mart(con: duckdb.DuckDBPyConnection, table: str, lake_dir: str | os.PathLike, as_of: datetime,
                   source_sql: str, params: dict | None = None) -> Path:
    """Write ``source_sql`` (which yields the table's columns, ``run_as_of`` excepted) as
    this run's file of a per-run mart and point ``marts.<table>`` at it."""
    select = ", ".join(f"CAST({quoted(c)} AS {t}) AS {quoted(c)}" for c, t in _stored_columns(table))

    def write(tmp: Path) -> None:
        # row order carries no meaning in a mart: let DuckDB write with every core
        con.execute("SET preserve_insertion_order = false")
        try:
            con.execute(f"COPY (SELECT {select} FROM ({source_sql})) TO {_sql_path(tmp)} "
                        "(FORMAT parquet, COMPRESSION zstd)", params or {})
        finally:
            con.execute("RESET preserve_insertion_order")

    return _publish(con, table, lake_dir, as_of, write)


def write_run_frame(con: duckdb.DuckDBPyConnection, table: str, lake_dir: str | os.PathLike, as_of: datetime,
                    frame: pl.DataFrame) -> Path:
    """:func:`write_run_mart` for a polars frame (polars writes it: several times faster
    than DuckDB scanning the frame). The frame must have the table's columns,
    ``run_as_of`` excepted; others are left out."""
    columns = [c.strip('"') for c, _ in _stored_columns(table)]
    return _publish(con, table, lake_dir, as_of,
                    lambda tmp: frame.select(columns).write_parquet(tmp, compression="lz4"))


def current_file(con: duckdb.DuckDBPyConnection, lake_dir: str | os.PathLike, table: str) -> Path | None:
    """The file ``marts.<table>`` reads now, when it is a view over this lake's file."""
    if table_kind(con, table) != "VIEW":
        return None
    folder = mart_dir(lake_dir, table)
    files = sorted(folder.glob(f"{_RUN_PREFIX}*/{DATA_FILE}")) if folder.exists() else []
    return files[-1] if len(files) == 1 else None


def move_run_mart(con: duckdb.DuckDBPyConnection, table: str, lake_dir: str | os.PathLike,
                  as_of: datetime) -> Path:
    """Carry the current file of a per-run mart over to the run at ``as_of`` unchanged
    (a hard link into the new run's folder; a copy where links are not possible)."""
    source = current_file(con, lake_dir, table)
    if source is None:
        raise FileNotFoundError(f"{table} has no current file in {mart_dir(lake_dir, table)}")
    target = run_file(lake_dir, table, as_of)
    if source != target:
        link_atomic(source, target)
    _point_view(con, table, target, as_of)
    _remove_other_runs(lake_dir, table, target)
    return target


# --- drift history --------------------------------------------------------------------------
def add_history_run(con: duckdb.DuckDBPyConnection, lake_dir: str | os.PathLike, as_of: datetime,
                    drift_file: Path) -> None:
    """Record this run's drift mart file in the history (idempotent per ``run_as_of``)."""
    migrate_history_table(con, lake_dir)
    link_atomic(drift_file, run_file(lake_dir, HISTORY, as_of))
    _history_view(con, lake_dir)


def _history_view(con: duckdb.DuckDBPyConnection, lake_dir: str | os.PathLike) -> None:
    folder = mart_dir(lake_dir, HISTORY)
    drop_table_or_view(con, HISTORY)
    if not any(folder.glob(f"{_RUN_PREFIX}*/{DATA_FILE}")):
        con.execute(f"CREATE VIEW {HISTORY} AS {empty_select(MARTS_DDL[HISTORY])}")
        return
    stamp = f"CAST(strptime(run_as_of, {_TS_FORMATS}) AS TIMESTAMPTZ)"
    pattern = _sql_path(folder / f"{_RUN_PREFIX}*" / DATA_FILE)
    con.execute(f"CREATE VIEW {HISTORY} AS SELECT {_view_select(HISTORY, stamp)} FROM read_parquet({pattern}, "
                "hive_partitioning = true, hive_types = {'run_as_of': VARCHAR}, union_by_name = true)")


def migrate_history_table(con: duckdb.DuckDBPyConnection, lake_dir: str | os.PathLike) -> int:
    """Move the rows of an older warehouse's ``marts.inventory_drift_history`` *table* to
    the lake (one folder per run) and remove the older per-run export files; returns the
    number of runs moved (0 when there is nothing to migrate)."""
    if table_kind(con, HISTORY) != "BASE TABLE":
        return 0
    runs = [r[0] for r in con.execute(f"SELECT DISTINCT run_as_of FROM {HISTORY} WHERE run_as_of IS NOT NULL")
            .fetchall()]
    select = ", ".join(quoted(c) for c, _ in _stored_columns(HISTORY))
    for run in runs:
        with replaced_atomically(run_file(lake_dir, HISTORY, run)) as tmp:
            con.execute(f"COPY (SELECT {select} FROM {HISTORY} WHERE run_as_of = $r) TO {_sql_path(tmp)} "
                        "(FORMAT parquet, COMPRESSION zstd)", {"r": run})
    folder = mart_dir(lake_dir, HISTORY)
    for old in folder.glob(f"{_RUN_PREFIX}*.parquet"):  # the earlier one-file-per-run export
        old.unlink(missing_ok=True)
    _history_view(con, lake_dir)
    return len(runs)
