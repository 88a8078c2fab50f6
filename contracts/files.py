"""Local files that readers see whole: written under a temporary name, then renamed.

One mechanism for every file distsync writes next to its readers — staging and lake
Parquet, the per-run marts, the outbox batches and state cache, the planner reports and
their caches: :func:`replaced_atomically` hands out a temporary path in the target's
folder (hidden, named after the process, so concurrent writers do not collide and
landing listings skip it) and renames it onto the target when the block succeeds; when
it fails the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import polars as pl


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path to write; it becomes ``path`` when the block ends without an
    error (fsynced first when ``fsync``: skip it for files that can be regenerated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """``data`` as the whole content of ``path``."""
    with replaced_atomically(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_parquet_atomic(frame: pl.DataFrame, path: str | os.PathLike, *, compression: str = "lz4",
                         fsync: bool = True) -> None:
    """``frame`` as the Parquet file ``path``."""
    with replaced_atomically(path, fsync=fsync) as tmp:
        frame.write_parquet(tmp, compression=compression)


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``target`` (which must not exist) becomes a hard link to ``source``; a copy where
    links are not possible (another file system, or links not allowed)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def link_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``target`` becomes the same file as ``source`` (:func:`link_or_copy`), replacing
    whatever it was in one rename."""
    with replaced_atomically(target) as tmp:
        link_or_copy(source, tmp)
