"""Multi-label aggregation: label sets per answer, one set per item, probabilities per label."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory.engine.multilabel import aggregate_multilabel

LABELS = ["fire", "flood", "quake", "storm", "war"]


def _crowd(seed=0, n_items=600, per=5, n_workers=40):
    """Items with 0, 1 or 2 true labels (pairs: fire+war); workers tick a true label with their own
    sensitivity (many are lazy: 0.35) and a false one with a small rate."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=n_items, p=[0.1, 0.75, 0.15])
    truth = []
    for k in kinds:
        truth.append(frozenset() if k == 0 else frozenset({LABELS[rng.integers(5)]}) if k == 1 else
                     frozenset({"fire", "war"}))
    sens = np.where(rng.random(n_workers) < 0.5, 0.35, 0.95)
    fpr = rng.uniform(0.0, 0.03, n_workers)
    rows = []
    for i, t in enumerate(truth):
        for w in rng.choice(n_workers, size=per, replace=False):
            ticked = [lab for lab in LABELS if (rng.random() < sens[w]) if lab in t] + \
                     [lab for lab in LABELS if lab not in t and rng.random() < fpr[w]]
            rows.append((f"i{i:04d}", f"w{w:02d}", "|".join(sorted(ticked, key=LABELS.index))))
    return pd.DataFrame(rows, columns=["item_id", "worker_id", "labels"]), \
        pd.Series(truth, index=[f"i{i:04d}" for i in range(n_items)])


def _example_f1(pred: pd.Series, truth: pd.Series) -> float:
    f = [1.0 if not p and not t else 2 * len(p & t) / (len(p) + len(t)) for p, t in zip(pred.loc[truth.index], truth)]
    return float(np.mean(f))


def test_beats_per_label_majority_when_lazy_workers_omit_labels():
    answers, truth = _crowd()
    fused = aggregate_multilabel(answers, LABELS)
    got = fused["labels"].map(frozenset)
    sets = answers.assign(s=answers["labels"].map(lambda s: frozenset(x for x in s.split("|") if x)))
    majority = sets.groupby("item_id")["s"].apply(
        lambda col: frozenset(lab for lab in LABELS if sum(lab in s for s in col) > len(col) / 2))
    assert _example_f1(got, truth) > _example_f1(majority, truth) + 0.05
    assert _example_f1(got, truth) > 0.9
    # the lazy workers are found without truth: their sensitivity is estimated well below the careful ones'
    s = fused.attrs["workers"]["sensitivity"]
    assert s.min() < 0.6 < s.max()


def test_probabilities_per_label_and_confidence_per_item_are_probabilities():
    answers, _ = _crowd(seed=1, n_items=200)
    fused = aggregate_multilabel(answers, LABELS)
    probs = fused[[f"prob_{lab}" for lab in LABELS]].to_numpy()
    assert ((probs >= 0) & (probs <= 1 + 1e-12)).all()
    assert ((fused["confidence"] > 0) & (fused["confidence"] <= 1 + 1e-12)).all()
    # a label is in the chosen set only if its marginal is not negligible
    for labs, row in zip(fused["labels"], probs):
        assert all(row[LABELS.index(lab)] >= 0.2 for lab in labs)


def test_co_occurring_labels_are_recovered_as_a_set_and_none_is_an_answer():
    answers = pd.DataFrame({"item_id": ["a"] * 4 + ["b"] * 4,
                            "worker_id": ["w1", "w2", "w3", "w4"] * 2,
                            "labels": ["fire|war", "fire|war", "fire", "fire|war", "", "", "", "storm"]})
    fused = aggregate_multilabel(answers, LABELS)
    assert fused.loc["a", "labels"] == ["fire", "war"]
    assert fused.loc["b", "labels"] == []  # the empty set ("none of the labels") is a valid result


def test_answers_naming_unknown_labels_are_refused_with_the_row():
    answers = pd.DataFrame({"item_id": ["a", "a"], "worker_id": ["w1", "w2"], "labels": ["fire", "fire|lava"]})
    with pytest.raises(ValueError, match=r"answer row 1: label\(s\) \['lava'\] are not in the schema"):
        aggregate_multilabel(answers, LABELS)
    with pytest.raises(ValueError, match="lack column"):
        aggregate_multilabel(answers.drop(columns="worker_id"), LABELS)
