"""The factory's Dagster Definitions, built in one place: one asset lane per dataset spec found."""
from __future__ import annotations

import dagster as dg

from assets.batch import build_dataset_assets
from assets.resources import FactoryResource
from factory.pipeline import Factory


def build_definitions(root: str | None = None) -> dg.Definitions:
    """Definitions for every dataset under the factory root (datasets/*.yaml)."""
    fx = Factory.at(root)
    assets: list = []
    for name in fx.datasets():
        assets.extend(build_dataset_assets(name))
    return dg.Definitions(assets=assets, resources={"factory": FactoryResource(root=str(fx.paths.root))})


defs = build_definitions()
