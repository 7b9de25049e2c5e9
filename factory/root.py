"""The factory root object: one folder (`$FACTORY_HOME`), its ledger and its dataset specs.

Below the services and the pipeline: workforce, guidelines, release, the CLI and the web app all take a
`Factory`, and none of them needs the batch steps (factory.pipeline) to get one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from factory.config import Paths
from factory.storage.ledger import Ledger
from factory.progress import NULL, Progress
from factory.spec import DatasetSpec, load_spec


@dataclass
class Factory:
    """A factory root: its folders, its ledger and its dataset specs."""

    paths: Paths = field(default_factory=Paths.from_env)
    progress: Progress = field(default=NULL, repr=False, compare=False)  # how long steps report (silent)

    @classmethod
    def at(cls, root: str | Path | None = None, progress: Progress = NULL) -> "Factory":
        return cls(Paths.from_env(root), progress)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.paths.database_url)

    def spec(self, dataset: str) -> DatasetSpec:
        return load_spec(self.paths.spec_path(dataset))

    def datasets(self) -> list[str]:
        return sorted(p.stem for p in self.paths.datasets.glob("*.yaml"))
