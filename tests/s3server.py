"""A real S3 API server on loopback (moto's server mode), for s3:// tests."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(monkeypatch) -> Iterator[str]:
    """Start moto on 127.0.0.1:<free port>; yields the endpoint URL (env set for s3fs)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "DISTSYNC_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    try:
        yield endpoint
    finally:
        server.stop()


def upload_tree(endpoint: str, local_root, bucket: str, prefix: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(local_root)}")
