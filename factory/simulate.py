"""Simulated reviewers for demos and benchmarks only (never used by the factory's own decisions).

Noise model: reviewer r answers the item's gold label with probability acc_r, else a class drawn
uniformly from the other classes; acc_r is drawn once per reviewer from U(acc_low, acc_high).
Every answer is a real ledger event whose annotator id starts with "sim-".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factory.ledger import Ledger
from factory.spec import DatasetSpec


@dataclass
class SimulatedPool:
    """A pool of simulated reviewers who know the gold label and make uniform mistakes."""

    truth: dict[str, str]
    n_reviewers: int = 5
    acc_low: float = 0.85
    acc_high: float = 0.97
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.accuracy = {f"sim-{i + 1:02d}": float(a) for i, a in
                         enumerate(self.rng.uniform(self.acc_low, self.acc_high, self.n_reviewers))}

    @property
    def noise_model(self) -> str:
        return (f"simulated reviewers: {self.n_reviewers}, accuracy ~ U({self.acc_low}, {self.acc_high}) per "
                f"reviewer, wrong answers uniform over the other classes")

    def answer_open_tasks(self, ledger: Ledger, spec: DatasetSpec, batch_id: str | None = None) -> int:
        """Answer every open task of the dataset (optionally one batch); returns how many were answered."""
        open_tasks = ledger.tasks(spec.name, batch_id=batch_id, status="open")
        classes = spec.class_names
        names = list(self.accuracy)
        for i, t in enumerate(open_tasks.itertuples(index=False)):
            who = names[i % len(names)]
            gold = self.truth[t.item_id]
            if self.rng.random() < self.accuracy[who]:
                label = gold
            else:
                label = self.rng.choice([c for c in classes if c != gold])
            ledger.answer_task(t.task_id, str(label), who, classes, spec_version=spec.version,
                               guideline_version=spec.guideline.version, source="simulated")
        return len(open_tasks)
