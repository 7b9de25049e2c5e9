"""Where a factory keeps its files: one root folder (FACTORY_HOME, default the current directory)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The folder layout under a factory root."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> "Paths":
        """Paths under `root`, else $FACTORY_HOME, else the current directory."""
        return cls(Path(root or os.environ.get("FACTORY_HOME") or ".").resolve())

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tables(self) -> Path:
        return self.data / "tables"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def database_url(self) -> str:
        """The ledger database: $FACTORY_DATABASE_URL, else a SQLite file under data/."""
        return os.environ.get("FACTORY_DATABASE_URL") or f"sqlite:///{self.data / 'ledger.sqlite'}"

    def spec_path(self, dataset: str) -> Path:
        return self.datasets / f"{dataset}.yaml"

    def table(self, name: str, dataset: str, batch_id: str) -> Path:
        return self.tables / name / dataset / f"{batch_id}.parquet"

    def ensure(self) -> "Paths":
        for p in (self.datasets, self.tables, self.models, self.releases):
            p.mkdir(parents=True, exist_ok=True)
        return self
