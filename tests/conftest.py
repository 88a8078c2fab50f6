"""Shared test fixtures and settings.

PostgreSQL: tests that need the server read its URL from ``DISTSYNC_TEST_PG_URL``; when
the variable is not set, the value of ``[tool.distsync.test] postgres_url`` in
``pyproject.toml`` is used (the server the development and CI machines run). Set the
variable to an empty string to skip those tests on a machine without PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "mini"
MINI_AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)

_pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
os.environ.setdefault(
    "DISTSYNC_TEST_PG_URL", _pyproject.get("tool", {}).get("distsync", {}).get("test", {}).get("postgres_url", "")
)


@pytest.fixture
def mini_landing(tmp_path: Path) -> Path:
    """A private copy of the mini landing folder (tests may add files to it)."""
    dest = tmp_path / "landing"
    shutil.copytree(MINI / "landing", dest)
    return dest


@pytest.fixture
def con():
    import duckdb

    from contracts.warehouse import create_all

    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    create_all(c)
    yield c
    c.close()
