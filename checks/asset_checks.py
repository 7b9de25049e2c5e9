"""Dagster asset checks from the quality standard: one AssetCheckSpec per declared expectation."""
from __future__ import annotations

import dagster as dg

from checks.standards import DEFAULT_STANDARD, SuiteOutcome, expectations


def check_specs(asset_key: dg.AssetKey, suite: str, standard: str = DEFAULT_STANDARD) -> list[dg.AssetCheckSpec]:
    """One Dagster check per expectation of the suite; blocking where the standard says so."""
    return [dg.AssetCheckSpec(name=e["name"], asset=asset_key, blocking=bool(e.get("blocking")),
                              description=f"{e['description']} [{standard}: {e['type']}]")
            for e in expectations(suite, standard)]


def check_results(asset_key: dg.AssetKey, outcome: SuiteOutcome) -> list[dg.AssetCheckResult]:
    """Dagster check results naming the failing rows by item id."""
    return [dg.AssetCheckResult(
        asset_key=asset_key, check_name=o.name, passed=o.success,
        severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
        description=o.message(),
        metadata={"standard": outcome.standard, "expectation": o.type,
                  "unexpected_count": o.unexpected_count,
                  "unexpected_items": dg.MetadataValue.json(o.unexpected_items[:50])})
        for o in outcome.outcomes]
