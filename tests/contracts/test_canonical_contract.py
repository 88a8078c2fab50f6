"""Canonical contracts: the hash-first uniqueness rule and reading a table from its lake files."""

import shutil

import duckdb
import pandera.polars as pa
import polars as pl
import pytest

from contracts.canonical import SCHEMAS, schema, schema_failures, validate_table
from contracts.ingest import ingest_landing
from contracts.settings import Settings
from tests.conftest import MINI, MINI_AS_OF

KEYED = schema("t", {"a": pa.Column(str, nullable=True), "b": pa.Column(int, nullable=True)}, ["a", "b"])


def test_unique_keys_pass():
    assert schema_failures(KEYED, pl.DataFrame({"a": ["x", "y", "x"], "b": [1, 1, 2]}))["failures"] == {}


def test_every_row_of_a_repeated_key_fails_as_pandera_reports_it():
    out = schema_failures(KEYED, pl.DataFrame({"a": ["x", "y", "x", "x"], "b": [1, 1, 1, 1]}))
    assert out["failures"] == {"t: multiple_fields_uniqueness": 3}
    assert {r["index"] for r in out["sample"]} == {"0", "2", "3"}
    assert out["sample"][0]["failure_case"] == '{"a":"x","b":1}'


def test_missing_key_values_are_values_too():
    out = schema_failures(KEYED, pl.DataFrame({"a": [None, None, "x"], "b": [None, None, None]}, schema={"a": pl.String, "b": pl.Int64}))
    assert out["failures"] == {"t: multiple_fields_uniqueness": 2}


def test_a_hash_collision_is_settled_by_comparing_the_keys(monkeypatch):
    # every key hashes alike: distinct keys must still pass, a real repeat still fail
    monkeypatch.setattr(pl.Expr, "hash", lambda self, seed=0: pl.lit(7, pl.UInt64).repeat_by(pl.len()).explode())
    assert schema_failures(KEYED, pl.DataFrame({"a": ["x", "y", "z"], "b": [1, 2, 3]}))["failures"] == {}
    assert schema_failures(KEYED, pl.DataFrame({"a": ["x", "y", "x"], "b": [1, 2, 1]}))["failures"] == \
        {"t: multiple_fields_uniqueness": 2}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    shutil.copytree(MINI / "landing", root / "landing")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ingest_landing(con, str(root / "landing"), Settings(), MINI_AS_OF, root / "lake")  # builds canonical
    yield con, root / "lake"
    con.close()


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_reading_the_lake_files_checks_what_the_view_shows(built, table):
    con, lake = built
    files = sorted((lake / "canonical" / table.split(".")[1]).glob("*.parquet"))
    assert files or table == "canonical.conflict_key"
    from_files, from_view = validate_table(con, table, files), validate_table(con, table)
    assert from_files == from_view and from_files["rows"] == con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_two_codes_mapped_to_one_item_break_the_forecast_key(built, tmp_path):
    con, lake = built
    files = sorted((lake / "canonical" / "forecast").glob("*.parquet"))
    twice = pl.read_parquet(files).head(3)
    pl.concat([twice, twice]).write_parquet(tmp_path / "doubled.parquet")
    out = validate_table(con, "canonical.forecast", [tmp_path / "doubled.parquet"])
    assert out["failures"] == {"canonical.forecast: multiple_fields_uniqueness": 6}


def test_payload_contract_refuses_a_repeated_idempotency_or_business_key():
    from contracts.outgoing import check_payload

    row = {"idempotency_key": "a" * 64, "product_code": "P1", "site_code": "S1", "on_hand": 1.0, "uom": "EA",
           "as_of": "2026-11-24T09:00:00Z", "quality": "reconciled"}
    same_key = pl.DataFrame([row, {**row, "site_code": "S2"}])
    assert check_payload("planning_inventory_sync", same_key)["failures"] == \
        {"planning_inventory_sync: field_uniqueness": 2}
    same_business = pl.DataFrame([row, {**row, "idempotency_key": "b" * 64}])
    assert check_payload("planning_inventory_sync", same_business)["failures"] == \
        {"planning_inventory_sync: multiple_fields_uniqueness": 2}
    assert check_payload("planning_inventory_sync", pl.DataFrame([row]))["failures"] == {}
