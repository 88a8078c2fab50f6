"""Jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

everything = dg.define_asset_job("distsync_full", selection=dg.AssetSelection.all(),
                                 description="Ingest every feed, rebuild canonical tables, reconcile, deliver.")

JOBS = [everything]
SCHEDULES: list = []
SENSORS: list = []
