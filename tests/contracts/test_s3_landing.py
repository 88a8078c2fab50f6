"""s3:// landing against a real S3 API server on loopback (moto server mode)."""

import json

import pytest

from contracts.ingest import ingest_landing
from contracts.settings import Settings
from tests.conftest import MINI, MINI_AS_OF
from tests.s3server import moto_s3, upload_tree

pytestmark = pytest.mark.s3


def test_mini_landing_from_s3_matches_local(con, monkeypatch, tmp_path):
    expected = json.loads((MINI / "expected.json").read_text())
    with moto_s3(monkeypatch) as endpoint:
        upload_tree(endpoint, MINI / "landing", "landing-bucket", "extracts")
        url = "s3://landing-bucket/extracts"
        ingest_landing(con, url, Settings(), MINI_AS_OF, tmp_path / "lake")
        rejected = {r[0] for r in con.execute(
            "SELECT file_path FROM ingest.manifest WHERE outcome = 'rejected'").fetchall()}
        assert rejected == set(expected["rejected_files"])
        uri = con.execute("SELECT any_value(source_uri) FROM ingest.manifest").fetchone()[0]
        assert uri.startswith("s3://landing-bucket/extracts/")
        assert con.execute("SELECT count(*) FROM canonical.inventory_snapshot").fetchone()[0] == 276
        # unchanged objects (same ETag) are not read again
        again = ingest_landing(con, url, Settings(), MINI_AS_OF, tmp_path / "lake")
        assert sum(len(r.files) for r in again.values()) == 0
