"""Sync payload records: fields, quality, blocking, delta and idempotency keys (§6)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from contracts.settings import Settings
from reconciliation.payloads import (
    ERP_REPLENISHMENT_PROPOSAL,
    PLANNING_INVENTORY_SYNC,
    build_erp_replenishment_proposal,
    build_planning_inventory_sync,
)
from tests.delivery.conftest import AS_OF, SCRIPT

S = Settings()


def by_product(records: pl.DataFrame) -> dict[str, dict]:
    return {r["product_code"]: r for r in records.to_dicts()}


def test_planning_records_one_per_mapped_erp_item_location(world):
    build = build_planning_inventory_sync(world.con, AS_OF, S)
    records, blocked = build
    assert blocked is None
    got = by_product(records)
    assert set(got) == {"PRD-104233", "PRD-104234", SCRIPT}  # 104236 has no planning code; 104233/1020 not in ERP
    r = got["PRD-104233"]
    assert (r["site_code"], r["on_hand"], r["uom"], r["as_of"], r["quality"]) == (
        "SITE-HH", 100.0, "EA", "2026-11-24T06:00:00Z", "reconciled")
    assert got["PRD-104234"]["quality"] == "drift"  # open WMS drift exception
    assert got[SCRIPT]["site_code"] == "SITE-LY" and got[SCRIPT]["on_hand"] == 7.5
    assert build.stats["unmapped"] == 1 and build.stats["item_locations"] == 4
    assert records["idempotency_key"].str.len_chars().to_list() == [64] * 3
    assert records["idempotency_key"].n_unique() == 3


def test_quality_ignores_planning_drift_and_resolved_wms_drift(world):
    # the WMS drift of 104234 is gone (its exception resolves); 104233 drifts vs planning only
    world.con.execute("UPDATE marts.inventory_drift SET status_wms = 'match', status = 'match' "
                      "WHERE item_id = '104234'")
    world.con.execute("UPDATE marts.exceptions SET status = 'resolved', resolved_at = ?", [AS_OF])
    world.con.execute("UPDATE marts.inventory_drift SET status_planning = 'drift', status = 'drift' "
                      "WHERE item_id = '104233' AND location_id = '1010'")
    world.exception("INVENTORY_DRIFT", "high", item_id="104233", location_id="1010", reference="planning")
    got = by_product(build_planning_inventory_sync(world.con, AS_OF, S).records)
    assert got["PRD-104234"]["quality"] == "reconciled"
    assert got["PRD-104233"]["quality"] == "reconciled"


def test_unverifiable_wms_comparison_is_flagged(world):
    world.con.execute("UPDATE marts.inventory_drift SET status_wms = 'unverifiable' WHERE item_id = '104233'")
    got = by_product(build_planning_inventory_sync(world.con, AS_OF, S).records)
    assert got["PRD-104233"]["quality"] == "unverifiable"


def test_blocked_when_erp_inventory_feed_is_stale(world):
    world.con.execute("UPDATE ingest.feed_status SET stale = true, age_hours = 50 WHERE feed = 'inventory_balance'")
    records, blocked = build_planning_inventory_sync(world.con, AS_OF, S)
    assert blocked is not None and "erp/inventory_balance is stale" in blocked
    assert set(records["quality"]) == {"stale"}  # what would have been sent, for the report
    # proposals are netted from that stock too
    world.proposal("104233", "1010", 3, 24.0)
    assert build_erp_replenishment_proposal(world.con, AS_OF, S).blocked_reason


def test_blocked_when_newest_erp_file_was_rejected(world):
    world.insert("ingest.manifest", file_path="erp/inventory_balance/inventory_balance_20261124T080000Z.csv",
                 system="erp", feed="inventory_balance", extract_ts=world.T_ERP + timedelta(hours=2),
                 outcome="rejected", reason="wrong delimiter", ingested_at=AS_OF, run_as_of=AS_OF)
    _, blocked = build_planning_inventory_sync(world.con, AS_OF, S)
    assert blocked is not None and "was rejected: wrong delimiter" in blocked


def test_an_older_rejected_file_does_not_block(world):
    world.insert("ingest.manifest", file_path="erp/inventory_balance/inventory_balance_20261123T060000Z.csv",
                 system="erp", feed="inventory_balance", extract_ts=world.T_ERP - timedelta(days=1),
                 outcome="rejected", reason="truncated", ingested_at=AS_OF, run_as_of=AS_OF)
    assert build_planning_inventory_sync(world.con, AS_OF, S).blocked_reason is None


def test_blocked_when_drift_mart_is_from_another_run(world):
    later = AS_OF + timedelta(hours=1)
    _, blocked = build_planning_inventory_sync(world.con, later, S)
    assert blocked is not None and "marts.inventory_drift was computed for run 2026-11-24T09:00:00Z" in blocked


def test_item_with_two_planning_codes_is_not_sent(world):
    world.insert("canonical.item_xref", system="PLANNING", external_code="PRD-OLD", item_id="104233")
    build = build_planning_inventory_sync(world.con, AS_OF, S)
    assert "PRD-104233" not in by_product(build.records) and build.stats["ambiguous_mapping"] == 1


def test_same_run_rebuilt_gives_same_keys(world):
    a = build_planning_inventory_sync(world.con, AS_OF, S).records
    b = build_planning_inventory_sync(world.con, AS_OF, S).records
    assert a["idempotency_key"].to_list() == b["idempotency_key"].to_list()


def test_delta_emits_only_changed_records_and_full_sync_all(world, make_outbox):
    ob = make_outbox()
    first = build_planning_inventory_sync(world.con, AS_OF, S, ob).records
    assert ob.emit(PLANNING_INVENTORY_SYNC, first, AS_OF).record_count == 3

    # next run: a new ERP extract, one quantity changed
    nxt = AS_OF + timedelta(hours=1)
    world.con.execute("UPDATE marts.inventory_drift SET run_as_of = ?, erp_as_of = ?",
                      [nxt, world.T_ERP + timedelta(hours=1)])
    world.con.execute("UPDATE marts.inventory_drift SET erp_qty = 90 WHERE item_id = '104233' AND erp_present")
    delta = build_planning_inventory_sync(world.con, nxt, S, ob)
    assert delta.records["product_code"].to_list() == ["PRD-104233"]
    assert delta.records["on_hand"].to_list() == [90.0]
    assert delta.records["as_of"].to_list() == ["2026-11-24T07:00:00Z"]
    assert delta.stats["unchanged"] == 2
    assert ob.emit(PLANNING_INVENTORY_SYNC, delta.records, nxt).record_count == 1
    assert build_planning_inventory_sync(world.con, nxt, S, ob).records.height == 0

    full = build_planning_inventory_sync(world.con, nxt, S, ob, full_sync=True).records
    # everything not already sent by this run (PRD-104233 just was)
    assert sorted(full["product_code"]) == sorted(["PRD-104234", SCRIPT])
    assert ob.emit(PLANNING_INVENTORY_SYNC, full, nxt).record_count == 2
    # a full sync of a later run sends every record again, with new keys
    later = nxt + timedelta(days=1)
    world.con.execute("UPDATE marts.inventory_drift SET run_as_of = ?", [later])
    full2 = build_planning_inventory_sync(world.con, later, S, ob, full_sync=True).records
    assert full2.height == 3
    assert not set(full2["idempotency_key"]) & set(full["idempotency_key"]) & set(first["idempotency_key"])
    assert ob.emit(PLANNING_INVENTORY_SYNC, full2, later).record_count == 3
    assert build_planning_inventory_sync(world.con, later, S, ob, full_sync=True).records.height == 0


def test_value_that_comes_back_gets_a_new_key(world, make_outbox):
    """100 → 90 → 100: the return to 100 must reach the receiver, so it cannot reuse the
    first 100's idempotency key (the receiver would drop it as a duplicate)."""
    ob = make_outbox()
    keys = []
    for qty in (100.0, 90.0, 100.0):
        world.con.execute("UPDATE marts.inventory_drift SET erp_qty = ? WHERE item_id = '104233' AND erp_present",
                          [qty])
        recs = build_planning_inventory_sync(world.con, AS_OF, S, ob).records.filter(
            pl.col("product_code") == "PRD-104233")
        assert recs.height == 1
        ob.emit(PLANNING_INVENTORY_SYNC, recs, AS_OF)
        keys.append(recs["idempotency_key"].item())
    assert len(set(keys)) == 3


def test_key_that_drops_out_of_erp_is_sent_once_as_zero(world, make_outbox):
    ob = make_outbox()
    ob.emit(PLANNING_INVENTORY_SYNC, build_planning_inventory_sync(world.con, AS_OF, S, ob).records, AS_OF)
    world.con.execute("UPDATE marts.inventory_drift SET erp_present = false, erp_qty = 0, erp_as_of = NULL "
                      "WHERE item_id = '104234'")
    build = build_planning_inventory_sync(world.con, AS_OF, S, ob)
    assert build.records.select("product_code", "on_hand", "as_of").to_dicts() == [
        {"product_code": "PRD-104234", "on_hand": 0.0, "as_of": "2026-11-24T06:00:00Z"}]
    assert build.stats["dropped_out_of_erp"] == 1
    ob.emit(PLANNING_INVENTORY_SYNC, build.records, AS_OF)
    assert build_planning_inventory_sync(world.con, AS_OF, S, ob).records.height == 0


def test_proposal_records_and_no_second_emission(world, make_outbox):
    world.proposal("104233", "1010", 3, 24.0)
    world.proposal("104234", "1020", 5, 12.5, forecast_version="FV-47")
    ob = make_outbox()
    build = build_erp_replenishment_proposal(world.con, AS_OF, S, ob)
    assert build.blocked_reason is None
    fields = ["MATNR", "WERKS", "quantity", "MEINS", "need_date", "forecast_version"]
    assert build.records.select(fields).to_dicts() == [
        {"MATNR": "000000000000104233", "WERKS": "1010", "quantity": 24.0, "MEINS": "EA",
         "need_date": "2026-12-14", "forecast_version": "FV-46"},
        {"MATNR": "000000000000104234", "WERKS": "1020", "quantity": 12.5, "MEINS": "EA",
         "need_date": "2026-12-28", "forecast_version": "FV-47"},
    ]
    ob.emit(ERP_REPLENISHMENT_PROPOSAL, build.records, AS_OF)
    assert build_erp_replenishment_proposal(world.con, AS_OF, S, ob).records.height == 0
    # a changed quantity is a new proposal record
    world.con.execute("UPDATE marts.replenishment_proposal SET quantity = 36 WHERE item_id = '104233'")
    again = build_erp_replenishment_proposal(world.con, AS_OF, S, ob).records
    assert again.select("MATNR", "quantity").to_dicts() == [{"MATNR": "000000000000104233", "quantity": 36.0}]


def test_proposals_blocked_by_stale_purchase_orders_not_by_a_stale_forecast(world):
    world.proposal("104233", "1010", 3, 24.0)
    world.con.execute("UPDATE ingest.feed_status SET stale = true WHERE feed = 'forecast'")
    assert build_erp_replenishment_proposal(world.con, AS_OF, S).blocked_reason is None
    world.con.execute("UPDATE ingest.feed_status SET stale = true WHERE feed = 'purchase_order'")
    assert "erp/purchase_order is stale" in build_erp_replenishment_proposal(world.con, AS_OF, S).blocked_reason


# --- skipping an unchanged build (reconciliation/delivery.py) ------------------------------
def _deliver(world, ob, payload_type=PLANNING_INVENTORY_SYNC, as_of=AS_OF, full_sync=False, skip=True):
    from reconciliation.delivery import deliver

    if payload_type == PLANNING_INVENTORY_SYNC:
        def build(con, as_of, outbox):
            return build_planning_inventory_sync(con, as_of, S, outbox, full_sync=full_sync)
    else:
        def build(con, as_of, outbox):
            return build_erp_replenishment_proposal(con, as_of, S, outbox)
    return deliver(world.con, ob, payload_type, as_of, build, full_sync=full_sync, skip_unchanged=skip)


def _next_run(world, hours=1):
    """A later run over the same data: the marts' run clock moves on, nothing else."""
    later = AS_OF + timedelta(hours=hours)
    world.con.execute("UPDATE marts.inventory_drift SET run_as_of = ?", [later])
    world.con.execute("UPDATE marts.replenishment_proposal SET run_as_of = ?", [later])
    world.con.execute("UPDATE ingest.feed_status SET run_as_of = ?", [later])
    return later


def test_unchanged_inputs_skip_the_build_and_report_what_a_rebuild_gives(world, make_outbox, monkeypatch):
    ob = make_outbox()
    first = _deliver(world, ob)
    assert not first.skipped and first.result.record_count == 3
    later = _next_run(world)
    calls = []
    monkeypatch.setattr("reconciliation.payloads.version_records",
                        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError("rebuilt")))
    again = _deliver(world, ob, as_of=later)
    assert again.skipped and calls == []
    monkeypatch.undo()
    rebuilt = _deliver(world, ob, as_of=later, skip=False)  # the same answer, the long way
    assert not rebuilt.skipped
    assert (again.records_built, again.blocked_reason, again.contract) == (
        rebuilt.records_built, rebuilt.blocked_reason, rebuilt.contract) == (0, None, {"failures": {}, "sample": []})
    assert again.stats == rebuilt.stats
    assert again.stats["unchanged"] == again.stats["candidates"] == 3
    assert world.con.execute("SELECT count(*) FROM sync.record").fetchone() == (3,)


def test_a_changed_quantity_rebuilds_and_emits(world, make_outbox):
    ob = make_outbox()
    _deliver(world, ob)
    later = _next_run(world)
    world.con.execute("UPDATE marts.inventory_drift SET erp_qty = 90 WHERE item_id = '104233' AND erp_present")
    done = _deliver(world, ob, as_of=later)
    assert not done.skipped and done.result.record_count == 1
    assert world.con.execute("SELECT count(*) FROM sync.record").fetchone() == (4,)  # mirrored
    assert _deliver(world, ob, as_of=later).skipped  # and now unchanged again


def test_a_stale_erp_feed_rebuilds_blocked_and_a_blocked_skip_still_reports_it(world, make_outbox):
    ob = make_outbox()
    _deliver(world, ob)
    later = _next_run(world)
    world.con.execute("UPDATE ingest.feed_status SET stale = true, age_hours = 30 WHERE feed = 'inventory_balance'")
    held = _deliver(world, ob, as_of=later)
    assert not held.skipped and held.result is None
    assert "erp/inventory_balance is stale" in held.blocked_reason and held.records_built == 3  # quality 'stale'
    # the next run, still stale: skipped, but blocked with this run's reason and row
    later2 = _next_run(world, hours=2)
    world.con.execute("UPDATE ingest.feed_status SET age_hours = 31")
    again = _deliver(world, ob, as_of=later2)
    assert again.skipped and again.records_built == 3 and "31 h old" in again.blocked_reason
    assert world.con.execute("SELECT run_as_of, records_held FROM sync.blocked ORDER BY 1").fetchall() == [
        (later, 3), (later2, 3)]
    # fresh again: rebuilt, sendable, and nothing to send (the 'stale' records never went out)
    world.con.execute("UPDATE ingest.feed_status SET stale = false")
    sent = _deliver(world, ob, as_of=later2)
    assert not sent.skipped and sent.blocked_reason is None and sent.records_built == 0


def test_an_emission_by_another_process_rebuilds(world, make_outbox):
    ob = make_outbox()
    _deliver(world, ob)
    later = _next_run(world)
    other = make_outbox()  # another process emits a changed record of the same payload type
    world.con.execute("UPDATE marts.inventory_drift SET erp_qty = 1 WHERE item_id = '104234'")
    recs = build_planning_inventory_sync(world.con, later, S, other).records
    assert other.emit(PLANNING_INVENTORY_SYNC, recs, later).record_count == 1
    world.con.execute("UPDATE marts.inventory_drift SET erp_qty = 50 WHERE item_id = '104234'")
    done = _deliver(world, ob, as_of=later)
    assert not done.skipped and done.result.record_count == 1  # 104234 back to 50
    assert world.con.execute("SELECT count(*) FROM sync.batch").fetchone() == (3,)  # the other's mirrored too


def test_full_sync_rebuilds_and_is_skipped_only_within_its_run(world, make_outbox):
    ob = make_outbox()
    _deliver(world, ob)
    later = _next_run(world)
    full = _deliver(world, ob, as_of=later, full_sync=True)
    assert not full.skipped and full.result.record_count == 3
    assert _deliver(world, ob, as_of=later, full_sync=True).skipped
    later2 = _next_run(world, hours=2)
    assert _deliver(world, ob, as_of=later2, full_sync=True).result.record_count == 3
    assert _deliver(world, ob, as_of=later2).skipped is False  # the flag is an input too
    assert _deliver(world, ob, as_of=later2).skipped


def test_proposals_skip_when_unchanged_and_follow_their_run(world, make_outbox):
    world.proposal("104233", "1010", 3, 24.0)
    ob = make_outbox()
    assert _deliver(world, ob, ERP_REPLENISHMENT_PROPOSAL).result.record_count == 1
    later = _next_run(world)
    assert _deliver(world, ob, ERP_REPLENISHMENT_PROPOSAL, as_of=later).skipped
    # the mart was not rebuilt for this run: blocked, whatever was stored
    stale_run = later + timedelta(hours=1)
    held = _deliver(world, ob, ERP_REPLENISHMENT_PROPOSAL, as_of=stale_run)
    assert "was computed for run" in held.blocked_reason and held.records_built == 0
    world.con.execute("UPDATE marts.replenishment_proposal SET quantity = 30")
    done = _deliver(world, ob, ERP_REPLENISHMENT_PROPOSAL, as_of=later)
    assert not done.skipped and done.result.record_count == 1
