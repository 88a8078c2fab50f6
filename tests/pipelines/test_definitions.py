"""The one Definitions object loads, validates and materializes over the mini landing."""

import subprocess
import sys

import dagster as dg

from pipelines.definitions import defs
from pipelines.resources import DistsyncResource
from tests.conftest import MINI_AS_OF, ROOT


def test_definitions_load_with_every_feed_and_check():
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "ingest/erp_inventory_balance" in keys and "canonical/inventory_snapshot" in keys
    assert len([k for k in keys if k.startswith("ingest/") and k != "ingest/feed_status"]) == 13
    checks = {c.name for c in repo.asset_graph.asset_check_keys}
    assert {"raw_contract", "canonical_contract"} <= checks
    groups = {repo.asset_graph.get(dg.AssetKey.from_user_string("ingest/wms_transaction")).group_name}
    assert groups == {"wms"}


def test_dagster_definitions_validate():
    exe = ROOT / ".venv" / "bin" / "dagster"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dagster"]
    out = subprocess.run([*cmd, "definitions", "validate", "-m", "pipelines.definitions"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_materialize_over_mini(tmp_path, mini_landing):
    from pipelines.graph import ALL_ASSETS

    res = DistsyncResource(landing=str(mini_landing), data_dir=str(tmp_path / "data"), as_of=MINI_AS_OF.isoformat())
    result = dg.materialize(ALL_ASSETS, resources={"distsync": res}, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {(e.asset_check_key.asset_key.to_user_string(), e.asset_check_key.name): e.passed
              for e in result.get_asset_check_evaluations()}
    assert checks[("canonical/inventory_snapshot", "canonical_contract")] is True
    # the rejected location_master file fails the ERP location feed's raw contract check
    assert checks[("ingest/erp_location_master", "raw_contract")] is False
    assert checks[("ingest/erp_item_master", "raw_contract")] is True
    # the mini drift is worth ~151k at standard cost: over the 100k warning threshold
    assert checks[("marts/inventory_drift", "drift_value_below_threshold")] is False
    # deliveries yield to ready marts: every mart step starts before the first delivery
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    first_delivery = min(i for i, k in enumerate(started) if k.startswith("delivery__"))
    assert all(i < first_delivery for i, k in enumerate(started) if k.startswith("marts__")), started
    assert checks[("marts/inventory_drift", "mart_contract")] is True
    assert checks[("marts/forecast_order_alignment", "mart_contract")] is True
    assert checks[("delivery/planning_inventory_sync", "sendable")] is True
    assert checks[("delivery/planning_inventory_sync", "payload_contract")] is True
    drift = next(e for e in result.get_asset_materialization_events()
                 if e.asset_key.to_user_string() == "marts/inventory_drift").materialization.metadata
    assert drift["drift"].value == 12 and "| item |" in drift["top_drift"].value
    assert drift["settings"].value["horizon_weeks"] == 12
    assert len(list((tmp_path / "data" / "lake" / "canonical" / "inventory_snapshot").glob("*.parquet"))) == 3
