"""The one resource the assets need: the factory root (folders + ledger)."""
from __future__ import annotations

import dagster as dg

from factory.pipeline import Factory
from factory.progress import NULL, Progress


class FactoryResource(dg.ConfigurableResource):
    """Where the factory keeps its ledger, tables, models and releases (default: $FACTORY_HOME or cwd)."""

    root: str | None = None

    def factory(self, progress: Progress = NULL) -> Factory:
        """The factory; its long steps report through `progress` (silent by default)."""
        return Factory.at(self.root, progress)
