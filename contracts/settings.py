"""Every tunable number of the pipeline, in one place.

Defaults are the ones of ``shared/spec/semantics.md``. They can be overridden, in
increasing order of precedence, by

1. a TOML settings file (``--settings PATH``, ``DISTSYNC_SETTINGS``, or
   ``<data-dir>/distsync.toml`` when it exists), and
2. environment variables ``DISTSYNC_<FIELD NAME IN UPPER CASE>`` for scalar fields
   (for example ``DISTSYNC_HORIZON_WEEKS=16``, ``DISTSYNC_ABS_TOL=0.5``).

Tolerance overrides per material group and per location live in the file::

    abs_tol = 0
    rel_tol = 0

    [tolerance.material_group.MG01]
    abs_tol = 2
    rel_tol = 0.01

    [tolerance.location.1010]     # a location override wins over a group one
    abs_tol = 5

    [freshness_hours]
    transaction = 12

This module has no dagster import: the business layers read a plain ``Settings``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# Freshness limits per feed (hours); masters 7 days, forecast 8 days. planned_order has
# none by default (the spec sets none: recommendations arrive only when planning runs);
# add one with [freshness_hours] planned_order = 48.
DEFAULT_FRESHNESS_HOURS: dict[str, float] = {
    "inventory_balance": 24,
    "stock_snapshot": 24,
    "inventory_position": 24,
    "purchase_order": 24,
    "transaction": 6,
    "forecast": 8 * 24,
    "item_master": 7 * 24,
    "uom_conversion": 7 * 24,
    "location_master": 7 * 24,
    "item_location": 7 * 24,
    "item_xref": 7 * 24,
    "location_xref": 7 * 24,
}

FEEDS_WITH_FRESHNESS = (*DEFAULT_FRESHNESS_HOURS, "planned_order")


class SettingsError(ValueError):
    """A settings file or variable that cannot be used (one-line message)."""


@dataclass(frozen=True)
class Tolerance:
    abs_tol: float = 0.0
    rel_tol: float = 0.0


@dataclass(frozen=True)
class Settings:
    # §2 ingestion
    reject_bad_row_share: float = 0.05
    freshness_hours: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRESHNESS_HOURS))
    # §3 drift
    match_epsilon: float = 1e-6
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    tolerance_by_material_group: Mapping[str, Tolerance] = field(default_factory=dict)
    tolerance_by_location: Mapping[str, Tolerance] = field(default_factory=dict)
    severity_high_value: float = 1000.0
    severity_medium_value: float = 100.0
    # §4 alignment
    horizon_weeks: int = 12
    excess_weeks: float = 8.0
    recommendation_conversion_days: float = 2.0
    po_confirmation_days: float = 3.0
    late_po_high_days: float = 14.0
    # §6 outbox
    sync_schema_version: str = "1"
    # Dagster asset checks on the marts (warnings, not blocking)
    warn_drift_rate: float = 0.05          # share of item-locations in drift
    warn_drift_value_total: float = 100_000.0  # total drift value, in cost currency

    # ----------------------------------------------------------------------------------
    def tolerance_rows(self) -> tuple[list[dict], list[dict]]:
        """Overrides as plain rows (for a join): (by material group, by location)."""
        groups = [
            {"material_group": k, "abs_tol": v.abs_tol, "rel_tol": v.rel_tol}
            for k, v in self.tolerance_by_material_group.items()
        ]
        locs = [
            {"location_id": k, "abs_tol": v.abs_tol, "rel_tol": v.rel_tol}
            for k, v in self.tolerance_by_location.items()
        ]
        return groups, locs

    def as_dict(self) -> dict[str, Any]:
        """JSON-able echo of the effective settings (run metadata, reports)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    # ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if path is None and env.get("DISTSYNC_SETTINGS"):
            path = env["DISTSYNC_SETTINGS"]
        if path is not None:
            p = Path(path)
            try:
                data = tomllib.loads(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise SettingsError(f"settings file not found: {p}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise SettingsError(f"settings file {p} is not valid TOML: {exc}") from None
            values.update(_from_mapping(data, str(p)))
        values.update(_from_env(env))
        base = cls()
        if "freshness_hours" in values:
            merged = dict(base.freshness_hours)
            merged.update(values["freshness_hours"])
            values["freshness_hours"] = merged
        return dataclasses.replace(base, **values)


_SCALAR_TYPES = {
    f.name: (int if f.default.__class__ is int else str if f.default.__class__ is str else float)
    for f in dataclasses.fields(Settings)
    if f.default is not dataclasses.MISSING
}


def _coerce(name: str, raw: Any, where: str) -> Any:
    kind = _SCALAR_TYPES[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        what = {int: "whole number", float: "number", str: "text"}[kind]
        raise SettingsError(f"{where}: {name} must be a {what}, got {raw!r}") from None
    if kind in (int, float) and value < 0:
        raise SettingsError(f"{where}: {name} must not be negative, got {raw!r}")
    return value


def _tolerances(table: Any, where: str) -> dict[str, Tolerance]:
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table")
    out = {}
    for key, spec in table.items():
        if not isinstance(spec, dict):
            raise SettingsError(f"{where}.{key} must be a table with abs_tol / rel_tol")
        unknown = set(spec) - {"abs_tol", "rel_tol"}
        if unknown:
            raise SettingsError(f"{where}.{key}: unknown keys {sorted(unknown)}")
        out[str(key)] = Tolerance(
            abs_tol=_coerce("abs_tol", spec.get("abs_tol", 0.0), f"{where}.{key}"),
            rel_tol=_coerce("rel_tol", spec.get("rel_tol", 0.0), f"{where}.{key}"),
        )
    return out


def _from_mapping(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key == "tolerance":
            tol = raw if isinstance(raw, dict) else {}
            unknown = set(tol) - {"material_group", "location"}
            if unknown or not isinstance(raw, dict):
                raise SettingsError(f"{where}: [tolerance] takes material_group and location tables")
            if "material_group" in tol:
                values["tolerance_by_material_group"] = _tolerances(tol["material_group"], "tolerance.material_group")
            if "location" in tol:
                values["tolerance_by_location"] = _tolerances(tol["location"], "tolerance.location")
        elif key == "freshness_hours":
            if not isinstance(raw, dict):
                raise SettingsError(f"{where}: [freshness_hours] must be a table of feed = hours")
            unknown = set(raw) - set(FEEDS_WITH_FRESHNESS)
            if unknown:
                raise SettingsError(f"{where}: unknown feeds in [freshness_hours]: {sorted(unknown)}")
            values["freshness_hours"] = {k: _coerce("abs_tol", v, f"freshness_hours.{k}") for k, v in raw.items()}
        elif key in _SCALAR_TYPES:
            values[key] = _coerce(key, raw, where)
        else:
            raise SettingsError(f"{where}: unknown setting {key!r}")
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _SCALAR_TYPES:
        var = f"DISTSYNC_{name.upper()}"
        if var in env and env[var] != "":
            values[name] = _coerce(name, env[var], var)
    for feed in FEEDS_WITH_FRESHNESS:
        var = f"DISTSYNC_FRESHNESS_HOURS_{feed.upper()}"
        if var in env and env[var] != "":
            values.setdefault("freshness_hours", {})[feed] = _coerce("abs_tol", env[var], var)
    return values
