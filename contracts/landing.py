"""The landing zone: a local folder or an ``s3://bucket/prefix`` URL, through fsspec.

``list_landing`` finds every delivered file with a cheap signature (size and
modification time locally, ETag on S3), so a file already ingested is recognised without
reading or hashing it again. Files whose name is not ``<feed>_<TS>.<ext>`` under
``<system>/<feed>/`` are returned as ``unrecognised`` (they are recorded, never silently
ignored); hidden and in-flight files (``.*``, ``*.tmp``, ``*.part``) are skipped.

S3 settings come from the environment: ``DISTSYNC_S3_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL``) for an S3-compatible server, and the usual ``AWS_*`` credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec

from contracts.feeds import LandingFile, parse_file_name


class LandingError(Exception):
    """The landing zone itself cannot be read (one-line message for the operator)."""


def storage_options(url: str) -> dict:
    if not url.startswith("s3://"):
        return {}
    endpoint = os.environ.get("DISTSYNC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict = {}
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path inside it) for a local path or s3:// URL."""
    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", **storage_options(url))
        return fs, url[len("s3://"):].rstrip("/")
    fs = fsspec.filesystem("file")
    return fs, os.path.abspath(url)


@dataclass(frozen=True)
class Unrecognised:
    rel_path: str
    uri: str
    size: int


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.endswith((".tmp", ".part", ".crc"))


def list_landing(url: str, subdir: str | None = None) -> tuple[list[LandingFile], list[Unrecognised]]:
    """Every file under the landing (or only under ``subdir``, e.g. ``erp/item_master``)."""
    fs, root = filesystem(url)
    scheme = "s3://" if url.startswith("s3://") else ""
    try:
        if not fs.exists(root):
            raise LandingError(f"landing folder not found: {url}")
        if scheme:
            fs.invalidate_cache()
        found = fs.find(f"{root}/{subdir}" if subdir else root, detail=True)
    except LandingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage error is one line for the operator
        raise LandingError(f"cannot list landing {url}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    files: list[LandingFile] = []
    unknown: list[Unrecognised] = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root):].lstrip("/")
        if _hidden(rel.rsplit("/", 1)[-1]):
            continue
        size = int(info.get("size") or 0)
        uri = scheme + path
        if scheme:
            sig = f"{size}:{str(info.get('ETag') or info.get('etag') or '').strip(chr(34))}"
        else:
            sig = f"{size}:{int(info.get('mtime', 0) * 1e6) if isinstance(info.get('mtime'), float) else info.get('mtime')}"
        parsed = parse_file_name(rel)
        if parsed is None:
            unknown.append(Unrecognised(rel, uri, size))
            continue
        feed, ts = parsed
        files.append(LandingFile(rel, uri, feed, ts, size, sig))
    return files, unknown


def read_bytes(uri: str) -> bytes:
    if uri.startswith("s3://"):
        fs, _ = filesystem(uri)
        with fs.open(uri[len("s3://"):], "rb") as fh:
            return fh.read()
    with open(uri, "rb") as fh:
        return fh.read()
