"""The asset graph, in the order data flows: ingest -> canonical -> marts -> delivery."""

from __future__ import annotations

from assets.canonical import canonical_assets, feed_status
from assets.ingestion import ingest_assets
from assets.delivery import delivery_assets
from assets.marts import mart_assets

ALL_ASSETS = [*ingest_assets, *canonical_assets, feed_status, *mart_assets, *delivery_assets]
