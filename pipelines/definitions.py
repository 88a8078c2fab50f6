"""The one Dagster ``Definitions`` object of distsync (``dagster dev`` loads this module)."""

from __future__ import annotations

import dagster as dg

from pipelines.graph import ALL_ASSETS
from pipelines.jobs import JOBS, SCHEDULES, SENSORS
from pipelines.resources import DistsyncResource

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"distsync": DistsyncResource()},
    # every asset writes the one DuckDB file: run steps one after another in the run's
    # process (the `duckdb` pool in dagster.yaml keeps runs from overlapping too)
    executor=dg.in_process_executor,
)
