"""Parse one delivered file into a frame with the libraries' own readers.

CSV and JSON Lines are read with every column as text (so a malformed value becomes a
quarantined row, not a failed file); Parquet keeps its Arrow types. Anything that makes
the *file* unusable raises ``FileRejected`` with a one-line reason: not UTF-8, no bytes,
no header, wrong delimiter, wrong columns, unparseable JSON, truncated Parquet.

Every frame gets ``_row_number``: the 1-based data row (CSV: header excluded; JSON Lines:
the line; Parquet: the row).
"""

from __future__ import annotations

import codecs
import io
import os

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.feeds import Feed

ROW_NUMBER = "_row_number"


class FileRejected(Exception):
    """The file as a whole cannot be used; ``str(exc)`` is the reason recorded."""


PARQUET_TYPES = {
    "warehouse_code": pa.string(), "sku": pa.string(), "lot": pa.string(), "bin": pa.string(),
    "qty_each": pa.int64(), "status": pa.string(), "snapshot_at": pa.timestamp("us", tz="UTC"),
    "txn_id": pa.string(), "txn_type": pa.string(), "txn_at": pa.timestamp("us", tz="UTC"),
    "reference": pa.string(),
}


def read_feed_file(feed: Feed, data: bytes | str | os.PathLike) -> pl.DataFrame:
    """Parse a file given as its bytes or as a local path (a path is parsed by the
    library straight from the file, so a large file is never held in memory twice)."""
    if not isinstance(data, bytes):
        path = os.fspath(data)
        if os.path.getsize(path) == 0:
            raise FileRejected("empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(len(codecs.BOM_UTF8))
        if feed.fmt != "parquet" and head == codecs.BOM_UTF8:
            with open(path, "rb") as fh:   # rare: strip the mark in memory
                data = fh.read()
        else:
            data = path
    if isinstance(data, bytes) and len(data) == 0:
        raise FileRejected("empty file (0 bytes)")
    if isinstance(data, bytes) and feed.fmt != "parquet" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # a UTF-8 byte-order mark is not part of the header
    if feed.fmt == "csv":
        return _read_csv(feed, data)
    if feed.fmt == "jsonl":
        return _read_jsonl(feed, data)
    return _read_parquet(feed, data)


def _source(data: bytes | str):
    return io.BytesIO(data) if isinstance(data, bytes) else data


def _check_utf8(data: bytes | str) -> None:
    """Raise the precise 'not UTF-8' reason (only called once a parser has failed, so a
    good file is never decoded a second time in Python)."""
    if not isinstance(data, bytes):
        with open(data, "rb") as fh:
            data = fh.read()
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=True)
    except UnicodeDecodeError as exc:
        raise FileRejected(f"not UTF-8 (invalid byte at offset {exc.start})") from None


def _read_csv(feed: Feed, data: bytes | str) -> pl.DataFrame:
    if isinstance(data, bytes):
        head = data[: data.find(b"\n")] if b"\n" in data else data
    else:
        with open(data, "rb") as fh:
            head = fh.readline().rstrip(b"\n")
    try:
        first = head.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        _check_utf8(data)
        raise  # pragma: no cover - _check_utf8 raised
    if not first.strip():
        raise FileRejected("no header row")
    header = first.split("|")
    if header != list(feed.columns):
        if "|" not in first and any(d in first for d in (",", ";", "\t")):
            delim = next(d for d in (",", ";", "\t") if d in first)
            raise FileRejected(f"wrong delimiter: header is separated by {delim!r}, expected '|'")
        raise FileRejected(f"wrong columns: header {header} != expected {list(feed.columns)}")
    try:
        df = pl.read_csv(
            _source(data),
            separator="|",
            quote_char='"',
            infer_schema=False,          # every column as text; the contract parses values
            truncate_ragged_lines=False,
            raise_if_empty=False,
        )
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, pl.exceptions.ShapeError) as exc:
        _check_utf8(data)
        raise FileRejected(f"unparseable CSV: {_first_line(exc)}") from None
    return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))


def _read_jsonl(feed: Feed, data: bytes | str) -> pl.DataFrame:
    schema = {c: pl.String for c in feed.columns}
    try:
        df = pl.read_ndjson(_source(data), schema=schema, ignore_errors=False)
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError) as exc:
        _check_utf8(data)
        raise FileRejected(f"unparseable JSON Lines: {_first_line(exc)}") from None
    if df.height == 0:
        return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
    # a file whose objects share none of the expected keys is not this feed
    if df.select(pl.all().is_null().all()).row(0) == tuple(True for _ in feed.columns):
        raise FileRejected(f"wrong columns: no line has any of the keys {list(feed.columns)}")
    return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))


def _read_parquet(feed: Feed, data: bytes | str) -> pl.DataFrame:
    try:
        table = pq.read_table(pa.BufferReader(data) if isinstance(data, bytes) else data)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FileRejected(f"unreadable Parquet (truncated or corrupt): {_first_line(exc)}") from None
    names = table.schema.names
    if sorted(names) != sorted(feed.columns):
        raise FileRejected(f"wrong columns: {names} != expected {list(feed.columns)}")
    wrong = []
    for name in feed.columns:
        got, want = table.schema.field(name).type, PARQUET_TYPES[name]
        if got == want:
            continue
        if pa.types.is_timestamp(got) and pa.types.is_timestamp(want) and got.tz is not None:
            continue  # another unit or UTC spelling: converted losslessly below
        if pa.types.is_large_string(got) or pa.types.is_string_view(got):
            continue
        wrong.append(f"{name}: {got} (expected {want})")
    if wrong:
        raise FileRejected("wrong column types: " + "; ".join(wrong))
    df = pl.from_arrow(table.select(list(feed.columns)))
    casts = []
    for name in feed.columns:
        if name in ("snapshot_at", "txn_at"):
            casts.append(pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    if casts:
        df = df.with_columns(casts)
    return df.with_row_index(ROW_NUMBER, offset=1).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
