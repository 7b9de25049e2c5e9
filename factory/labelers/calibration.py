"""Calibration and training helpers: temperature scaling of linear models' decision values, and
out-of-sample probabilities by cross-validation (`cross_val_proba`)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.model_selection import KFold, StratifiedKFold

from factory.labelers.base import Labeler, _softmax


def _logits(model: Any, X: Any) -> np.ndarray:
    """Decision values as an (n, n_classes) matrix (binary sklearn models return one column for classes_[1])."""
    scores = np.asarray(model.decision_function(X), dtype=float)
    if scores.ndim == 1:
        scores = np.column_stack([np.zeros_like(scores), scores])
    return scores


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _fit_temperature(logits: np.ndarray, y_cols: np.ndarray) -> float:
    """Scale t minimising the log-loss of softmax(t * logits) (temperature scaling, one parameter: safe on small seeds)."""
    rows = np.arange(len(y_cols))

    def nll(log_t: float) -> float:
        return float(-_log_softmax(logits * math.exp(log_t))[rows, y_cols].mean())

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(50.0)), method="bounded")
    return float(math.exp(result.x))


class _TemperatureScaledLinear(Labeler):
    """A linear model whose decision values become probabilities by softmax(t * logits); t fitted on out-of-fold logits.

    Cheaper and, on small multi-class seeds, better calibrated than one-vs-rest
    sigmoid calibration: one parameter learned from k-fold out-of-sample scores.
    With fewer than two examples of some class, `default_temperature` is used
    and info.params says so.
    """

    default_temperature = 1.0
    temperature_prior_weight = 20.0

    def _make_model(self) -> Any:
        raise NotImplementedError

    def _fit_linear(self, X: Any, y: np.ndarray) -> None:
        present = np.unique(y)
        min_count = int(np.bincount(y)[present].min())
        folds = min(self.params["calibration_folds"], min_count)
        self.model_ = self._make_model().fit(X, y)
        self.temperature_ = self.default_temperature
        self.calibration_folds_ = folds if folds >= 2 else 0
        if folds >= 2:
            column_of = {c: j for j, c in enumerate(present)}
            y_cols = np.array([column_of[c] for c in y])
            oof = np.zeros((len(y), len(present)))
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
            for train_idx, test_idx in cv.split(np.zeros(len(y)), y):
                oof[test_idx] = _logits(self._make_model().fit(X[train_idx], y[train_idx]), X[test_idx])
            fitted = _fit_temperature(oof, y_cols)
            # A temperature fitted on ten held-out scores is noise: shrink log t towards the default
            # as if the default had been seen on `temperature_prior_weight` items.
            weight = len(y) / (len(y) + self.temperature_prior_weight)
            self.temperature_ = float(math.exp(weight * math.log(fitted) + (1 - weight) * math.log(self.default_temperature)))

    def _fit_notes(self) -> dict[str, Any]:
        if not hasattr(self, "temperature_"):
            return {}
        return {"temperature": round(self.temperature_, 4), "effective_calibration_folds": self.calibration_folds_,
                **getattr(self, "_extra_notes", {})}

    def _proba_from(self, X: Any) -> np.ndarray:
        return _softmax(self.temperature_ * _logits(self.model_, X))


def cross_val_proba(make: Callable[[], Labeler], items: pd.DataFrame, labels: Sequence, classes: Sequence,
                    folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-sample probabilities for every item: each row predicted by a labeler (from `make()`) not trained on it.

    Uses stratified folds when every present class can fill them, plain shuffled
    folds otherwise, and fewer folds when there are fewer items. With fewer than
    two items there is nothing to hold out: rows are the smoothed prior over
    `classes` (uniform for zero training items).
    """
    classes = list(classes)
    labels = list(labels)
    n = len(items)
    if n != len(labels):
        raise ValueError(f"cross_val_proba: {n} items but {len(labels)} labels")
    k = len(classes)
    if n == 0:
        return np.zeros((0, k))
    items = items.reset_index(drop=True)
    out = np.full((n, k), np.nan)
    if n < 2:
        return make().fit(items.iloc[:0], [], classes).predict_proba(items)
    n_splits = max(2, min(folds, n))
    label_keys = np.array([repr(l.item() if isinstance(l, np.generic) else l) for l in labels])
    _, counts = np.unique(label_keys, return_counts=True)
    if counts.min() >= 2:
        # Fewer folds rather than folds that miss a class: every class stays in every training split.
        n_splits = min(n_splits, int(counts.min()))
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n), label_keys)
    else:
        splitter = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n))
    for train_idx, test_idx in splits:
        labeler = make()
        labeler.fit(items.iloc[train_idx], [labels[i] for i in train_idx], classes)
        out[test_idx] = labeler.predict_proba(items.iloc[test_idx])
    return out
