"""Labelers of the ``multi-label`` task type: one-vs-rest models, one binary model per class.

Each labeler learns, for every class of the spec, the probability that a person ticks it, from the
seed's label sets (canonical ``|``-joined text, ``""`` the empty set).  ``predict_proba`` returns an
``(n_items, n_classes)`` matrix of *marginal* probabilities (rows do not sum to 1); the predicted set is
every class at probability >= 0.5 (``MultiLabel.decide``).  Three differentiated families, as for one
class per item: word TF-IDF, character n-grams and pretrained GloVe embeddings, each under per-class
logistic regression.  A class the seed never (or always) ticks gets its smoothed rate, never 0 or 1.

They subclass :class:`factory.labelers.Labeler` for saving, loading and the recorded ``info``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from factory.embeddings import embed_texts
from factory.labelers.bag_of_words import _CharNgramTfidf
from factory.labelers.base import (Labeler, LabelerInfo, _fit_tfidf, _min_df_for, _NoFeatures, _texts, thread_limit,
                                   training_hash)

SEP = "|"
_FLOOR = 1e-4


def label_matrix(labels: Sequence, classes: Sequence[str], items: pd.DataFrame | None = None,
                 who: str = "labeler") -> np.ndarray:
    """0/1 matrix (items x classes) of canonical label sets; ValueError naming the item for an unknown class."""
    index = {str(c): j for j, c in enumerate(classes)}
    Y = np.zeros((len(labels), len(index)), dtype=float)
    for row, value in enumerate(labels):
        parts = [p for p in str(value).split(SEP) if p] if isinstance(value, str) else [str(p) for p in value]
        for p in parts:
            if p not in index:
                item = items["item_id"].iloc[row] if items is not None and "item_id" in items.columns else row
                raise ValueError(f"{who}: label set {value!r} of item {item!r} (row {row}) names '{p}', "
                                 f"not in classes {list(index)}")
            Y[row, index[p]] = 1.0
    return Y


class _OneVsRest(Labeler):
    task_type = "multi-label"
    version = "1.0.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 10.0, "max_iter": 1000}

    # -- features (to override)
    def _fit_features(self, items: pd.DataFrame) -> Any:
        raise NotImplementedError

    def _transform(self, items: pd.DataFrame) -> Any:
        raise NotImplementedError

    def fit(self, items: pd.DataFrame, labels: Sequence, classes: Sequence) -> "_OneVsRest":
        """Train one logistic regression per class on the seed's sets (``|``-joined text or lists)."""
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError(f"{self.name}: `classes` is empty; pass the full label schema")
        labels = list(labels)
        if len(labels) != len(items):
            raise ValueError(f"{self.name}: {len(items)} items but {len(labels)} labels")
        if "text" not in items.columns:
            raise ValueError(f"{self.name}: items lack the 'text' column needed for task_type 'multi-label'")
        items = items.reset_index(drop=True)
        Y = label_matrix(labels, classes, items, self.name)
        n = len(items)
        self.classes_ = classes
        self._rates = (Y.sum(axis=0) + 1.0) / (n + 2.0)  # rule of succession per class
        self._prior = self._rates
        self.models_: list = [None] * len(classes)
        self._fallback = None
        if n == 0:
            self._fallback = "no training items: per-class rate 1/2"
        else:
            try:
                with thread_limit(self.max_threads):
                    X = self._fit_features(items)
                    for j in range(len(classes)):
                        if 0 < Y[:, j].sum() < n:
                            self.models_[j] = LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"],
                                                                 random_state=self.seed).fit(X, Y[:, j].astype(int))
            except _NoFeatures as exc:
                self._fallback = f"no usable features ({exc}): per-class rates"
        self._info = LabelerInfo(
            name=self.name, family=self.family, version=self.version,
            training_hash=training_hash(items, labels) if "item_id" in items.columns else "",
            classes=classes, n_train=n,
            params={**self.params, "seed": self.seed, "task_type": self.task_type, "fallback": self._fallback,
                    "constant_classes": [c for c, m in zip(classes, self.models_) if m is None]})
        return self

    def predict_proba(self, items: pd.DataFrame) -> np.ndarray:
        """Per-class probability that the class belongs to the item's set, shape (n_items, n_classes)."""
        self._check_fitted()
        n, k = len(items), len(self.classes_)
        out = np.tile(self._rates, (n, 1))
        if n == 0 or self._fallback is not None or not any(m is not None for m in self.models_):
            return np.clip(out, _FLOOR, 1 - _FLOOR)
        items = items.reset_index(drop=True)
        with thread_limit(self.max_threads):
            X = self._transform(items)
            n_train = self._n_train
            for j, m in enumerate(self.models_):
                if m is not None:  # shrunk towards the class rate by one pseudo-example, as the class labelers
                    out[:, j] = (n_train * m.predict_proba(X)[:, 1] + self._rates[j]) / (n_train + 1.0)
        return np.clip(out, _FLOOR, 1 - _FLOOR)

    def predict(self, items: pd.DataFrame) -> list[str]:
        """The predicted set per item: every class at probability >= 0.5, canonical ``|``-joined text."""
        p = self.predict_proba(items)
        return [SEP.join(c for c, v in zip(self.classes_, row) if v >= 0.5) for row in p]

    def explain(self, items: pd.DataFrame, top: int = 5) -> list[list[str]]:
        return [[] for _ in range(len(items))]


class OvrWordTfidfLogReg(_OneVsRest):
    """Family 'word-tfidf-logreg', one vs rest: word 1-2 gram TF-IDF, a logistic regression per class."""

    name = "ovr_word_tfidf_logreg"
    family = "word-tfidf-logreg"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 10.0, "max_iter": 1000, "ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True}

    def _fit_features(self, items):
        p = self.params
        self.vectorizer_ = TfidfVectorizer(ngram_range=tuple(p["ngram_range"]), min_df=_min_df_for(len(items), p["min_df"]),
                                           sublinear_tf=p["sublinear_tf"])
        return _fit_tfidf(self.vectorizer_, _texts(items, "text"))

    def _transform(self, items):
        return self.vectorizer_.transform(_texts(items, "text"))


class OvrCharNgramLogReg(_OneVsRest):
    """Family 'char-ngram', one vs rest: hashed char_wb 2-5 grams (robust to spelling), logistic regression per class."""

    name = "ovr_char_ngram_logreg"
    family = "char-ngram"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 10.0, "max_iter": 1000, "ngram_range": [2, 5], "n_features": 2 ** 18, "max_chars": 5000}

    def _fit_features(self, items):
        p = self.params
        self.vectorizer_ = _CharNgramTfidf(p["ngram_range"], p["n_features"], p["max_chars"])
        return self.vectorizer_.fit_transform(_texts(items, "text"))

    def _transform(self, items):
        return self.vectorizer_.transform(_texts(items, "text"))


class OvrGloveLogReg(_OneVsRest):
    """Family 'pretrained-embedding', one vs rest: SIF-weighted GloVe 6B means, standardised, logistic regression
    per class (features learned outside the seed; ``cache_dir`` as GloveSifLogReg)."""

    name = "ovr_glove_logreg"
    family = "pretrained-embedding"
    cache_dir = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 0.1, "max_iter": 2000, "sif_a": 1e-3}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("cache_dir", None)
        return state

    def _embed(self, items):
        return embed_texts(_texts(items, "text"), cache_dir=self.cache_dir, sif_a=self.params["sif_a"])

    def _fit_features(self, items):
        Z = self._embed(items)
        if not np.abs(Z).sum(axis=1).any():
            raise _NoFeatures("no training text has a word GloVe knows")
        self.scaler_ = StandardScaler().fit(Z)
        return self.scaler_.transform(Z)

    def _transform(self, items):
        return self.scaler_.transform(self._embed(items))


FAMILIES: tuple[type[_OneVsRest], ...] = (OvrWordTfidfLogReg, OvrCharNgramLogReg, OvrGloveLogReg)


def make_set_labelers(seed: int = 0) -> list[_OneVsRest]:
    """Three unfitted one-vs-rest labelers of different families."""
    return [cls(seed=seed) for cls in FAMILIES]


def set_suite_version() -> str:
    return "+".join(f"{cls.name}@{cls.version}" for cls in FAMILIES)
