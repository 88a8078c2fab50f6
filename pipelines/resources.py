"""The one Dagster resource: where the landing zone, warehouse and outbox are.

Every field may be left empty; it is then resolved *at run time* (not at import) from
the environment variables of ``outputs.md`` and the defaults:

| field | environment | default |
|---|---|---|
| ``landing`` | ``DISTSYNC_LANDING`` | ``<data_dir>/landing`` |
| ``data_dir`` | ``DISTSYNC_DATA_DIR`` | ``data`` |
| ``as_of`` | ``DISTSYNC_AS_OF`` | the run's tag ``distsync/as_of``, else the run's start |
| ``settings_file`` | ``DISTSYNC_SETTINGS`` | ``<data_dir>/distsync.toml`` if it exists |
| ``outbox_url`` | ``DISTSYNC_OUTBOX_URL`` | ``sqlite:///<data_dir>/outbox.sqlite`` |
| ``outbox_folder`` | ``DISTSYNC_OUTBOX_FOLDER`` | ``<data_dir>/outbox`` |
"""

from __future__ import annotations

import os
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from contracts.settings import Settings
from contracts.warehouse import create_all

AS_OF_TAG = "distsync/as_of"


class RunClockError(ValueError):
    pass


def parse_as_of(text: str) -> datetime:
    """ISO-8601 (``Z`` or offset; a naive time is taken as UTC) -> aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise RunClockError(f"--as-of must be an ISO-8601 timestamp, got {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class DistsyncResource(dg.ConfigurableResource):
    """Paths and run clock of distsync (see the module docstring for the defaults)."""

    landing: Optional[str] = None
    data_dir: Optional[str] = None
    as_of: Optional[str] = None
    settings_file: Optional[str] = None
    outbox_url: Optional[str] = None
    outbox_folder: Optional[str] = None
    full_sync: bool = False

    # --- resolution ------------------------------------------------------------------------
    def data_path(self) -> Path:
        return Path(self.data_dir or os.environ.get("DISTSYNC_DATA_DIR") or "data")

    def landing_url(self) -> str:
        return self.landing or os.environ.get("DISTSYNC_LANDING") or str(self.data_path() / "landing")

    def warehouse_path(self) -> Path:
        return self.data_path() / "warehouse.duckdb"

    def lake_path(self) -> Path:
        return self.data_path() / "lake"

    def reports_path(self) -> Path:
        return self.data_path() / "reports"

    def outbox_sql_url(self) -> str:
        return (self.outbox_url or os.environ.get("DISTSYNC_OUTBOX_URL")
                or f"sqlite:///{(self.data_path() / 'outbox.sqlite').resolve()}")

    def outbox_folder_url(self) -> str:
        return self.outbox_folder or os.environ.get("DISTSYNC_OUTBOX_FOLDER") or str(self.data_path() / "outbox")

    def load_settings(self) -> Settings:
        path = self.settings_file or os.environ.get("DISTSYNC_SETTINGS")
        if not path and (self.data_path() / "distsync.toml").exists():
            path = str(self.data_path() / "distsync.toml")
        return Settings.load(path)

    def resolve_as_of(self, context: Optional[dg.OpExecutionContext] = None) -> datetime:
        text = self.as_of or os.environ.get("DISTSYNC_AS_OF")
        if not text and context is not None:
            text = context.run.tags.get(AS_OF_TAG)
        if text:
            return parse_as_of(text)
        if context is not None:
            record = context.instance.get_run_record_by_id(context.run_id)
            if record is not None and record.create_timestamp is not None:
                return record.create_timestamp.astimezone(timezone.utc).replace(microsecond=0)
        return datetime.now(timezone.utc).replace(microsecond=0)

    # --- the warehouse connection ---------------------------------------------------------
    # Within a run the steps share one connection, opened by the first step that needs it
    # and closed when the run ends: opening the DuckDB file, checking its schemas and
    # checkpointing it at close cost tens of milliseconds a step, and a run has 30 steps
    # (the in-process executor runs them one after another in one process; DuckDB admits
    # one writer anyway). Outside a run every ``connect()`` opens and closes its own.
    _in_run: bool = PrivateAttr(default=False)
    _run_con: Optional[duckdb.DuckDBPyConnection] = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = False
        if self._run_con is not None:
            con, self._run_con = self._run_con, None
            con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        path = self.warehouse_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            create_all(con)
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse (created with every schema on first use)."""
        if not self._in_run:
            con = self._open()
            try:
                yield con
            finally:
                con.close()
            return
        if self._run_con is None:
            self._run_con = self._open()
        try:
            yield self._run_con
        except BaseException:
            # a failed step leaves no open transaction behind for the next one
            with suppress(duckdb.Error):
                self._run_con.execute("ROLLBACK")
            raise
