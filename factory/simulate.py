"""Simulated people for demos and benchmarks only (never used by the factory's own decisions).

Noise model: reviewer r answers the item's gold label with probability acc_r, else a class drawn
uniformly from the other classes; acc_r is drawn once per reviewer from U(acc_low, acc_high).
Experts answer right with probability `expert_accuracy` and always give a rationale.  Tasks are
handed out with the factory's own dispatch rules (tier, blind overlap, nobody reviews their own
label).  Every answer is a real ledger event whose annotator id starts with "sim-".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from factory.storage.ledger import Ledger
from factory.spec import DatasetSpec
from factory.workforce import dispatch


@dataclass
class SimulatedPool:
    """A pool of simulated reviewers (half L1, half L2) and experts who know the gold label."""

    truth: dict[str, str]
    n_reviewers: int = 5
    acc_low: float = 0.85
    acc_high: float = 0.97
    n_experts: int = 1
    expert_accuracy: float = 0.98
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.accuracy = {f"sim-{i + 1:02d}": float(a) for i, a in
                         enumerate(self.rng.uniform(self.acc_low, self.acc_high, self.n_reviewers))}
        self.tier = {a: ("L1" if i < self.n_reviewers // 2 else "L2") for i, a in enumerate(self.accuracy)}
        for i in range(self.n_experts):
            self.accuracy[f"sim-expert-{i + 1}"] = self.expert_accuracy
            self.tier[f"sim-expert-{i + 1}"] = "expert"

    @property
    def noise_model(self) -> str:
        return (f"simulated reviewers: {self.n_reviewers}, accuracy ~ U({self.acc_low}, {self.acc_high}) per "
                f"reviewer, wrong answers uniform over the other classes; {self.n_experts} simulated expert(s) "
                f"at {self.expert_accuracy}")

    @property
    def people(self) -> pd.DataFrame:
        return pd.DataFrame({"annotator_id": list(self.tier), "tier": list(self.tier.values()), "status": "active",
                             "max_open_tasks": 10 ** 9, "domains": "[]"})

    def register(self, workforce) -> None:
        """Put the simulated people in the annotator registry (idempotent)."""
        have = set(workforce.list()["annotator_id"])
        for a, t in self.tier.items():
            if a not in have:
                workforce.add(a, tier=t)

    def _answer(self, who: str, item_id: str, classes: list[str]) -> str:
        gold = self.truth[item_id]
        if self.rng.random() < self.accuracy[who]:
            return gold
        return str(self.rng.choice([c for c in classes if c != gold]))

    def answer_open_tasks(self, ledger: Ledger, spec: DatasetSpec, batch_id: str | None = None) -> int:
        """Answer every open task of the dataset (optionally of one batch); returns how many were answered."""
        open_tasks = ledger.tasks(spec.name, batch_id=batch_id, status="open")
        if open_tasks.empty:
            return 0
        classes = spec.class_names
        ev = ledger.events(spec.name, kind=["human", "correction"])
        ev = ev[ev["item_id"].isin(open_tasks["item_id"])]
        answered_by = ev.groupby("item_id")["actor"].agg(set).to_dict()
        who = dispatch(open_tasks, self.people, answered_by, seed=int(self.rng.integers(1 << 30)))
        answers, n = [], 0
        for t in open_tasks.itertuples(index=False):
            person = who.get(t.task_id)
            if person is None:
                continue
            label = self._answer(person, t.item_id, classes)
            if t.kind == "arbitrate":
                ledger.arbitrate(spec.name, t.item_id, label, person,
                                 f"simulated expert: read the item and the {len(answered_by.get(t.item_id, ()))} "
                                 f"conflicting answers", classes, spec_version=spec.version,
                                 guideline_version=spec.guideline.version)
                n += 1
                continue
            answers.append({"task_id": t.task_id, "label": label, "annotator": person, "source": "simulated",
                            "spec_version": spec.version, "guideline_version": spec.guideline.version})
        if answers:
            ledger.answer_tasks(answers, {spec.name: spec.label_schema})
        return n + len(answers)


def sparse_crowd(seed: int, n: int = 600, classes: int = 4, workers: int = 30, answers_per_item: int = 3
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """A seeded sparse crowd (each worker ~60 answers): answers[item_id, worker_id, label] and the truth.

    Noise model: the first class has 60 % of the items; worker skills ~ U(0.55, 0.95); a wrong
    answer is uniform over the other classes.  Used by tests and benchmarks of the aggregation.
    """
    rng = np.random.default_rng(seed)
    K = classes
    truth = rng.choice(K, size=n, p=[0.6] + [0.4 / (K - 1)] * (K - 1))
    skill = rng.uniform(0.55, 0.95, size=workers)
    frames = []
    for _ in range(answers_per_item):
        w = rng.integers(0, workers, size=n)
        lab = np.where(rng.random(n) < skill[w], truth, (truth + rng.integers(1, K, size=n)) % K)
        frames.append(pd.DataFrame({"item_id": np.arange(n), "worker_id": w, "label": lab}))
    return pd.concat(frames).drop_duplicates(["item_id", "worker_id"]), truth
