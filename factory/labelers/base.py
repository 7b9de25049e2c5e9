"""The labeler contract: `Labeler` (fit, calibrated probabilities, explanations, save/load), its recorded
`LabelerInfo`, `training_hash`, and the small helpers every family shares.

Subclasses live beside this module, one module per kind of features (bag of words, pretrained
embeddings, pairs); `factory.labelers` re-exports the public names.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from threadpoolctl import threadpool_limits


TASK_TYPES = ("classification", "pair")
#: Columns that feed the models, per task type; they enter `training_hash`.
INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("text",),
    "pair": ("left_text", "right_text", "left_price", "right_price"),
}
_HASHED_COLUMNS = ("text", "left_text", "right_text", "left_price", "right_price")
#: Probability floor so that downstream log-losses and fusions never see an exact 0.
_PROBA_FLOOR = 1e-6
_INFO_FILE = "info.json"
_MODEL_FILE = "labeler.joblib"


# --------------------------------------------------------------------------- info, hashing


@dataclass
class LabelerInfo:
    """What a trained labeler is, enough to trace a prediction back to code, params and seed data."""

    name: str
    family: str
    version: str
    training_hash: str
    classes: list[str]
    n_train: int
    params: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to a JSON string (the `info.json` written beside a saved labeler)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "LabelerInfo":
        """Parse what `to_json` wrote."""
        return cls(**json.loads(text))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _canonical(value: Any) -> Any:
    """A JSON-stable form of a cell: numpy scalars unwrapped, NaN/None/NA as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def training_hash(items: pd.DataFrame, labels: Sequence) -> str:
    """SHA-256 over sorted (item_id, label, input columns) rows: independent of row order, stable across processes."""
    if len(items) != len(labels):
        raise ValueError(f"training_hash: {len(items)} items but {len(labels)} labels")
    if "item_id" not in items.columns:
        raise ValueError("training_hash: items need an 'item_id' column")
    columns = [c for c in _HASHED_COLUMNS if c in items.columns]
    ids = items["item_id"].tolist()
    values = {c: items[c].tolist() for c in columns}
    rows = []
    for i, (item_id, label) in enumerate(zip(ids, list(labels))):
        record = [_canonical(item_id), _canonical(label), [[c, _canonical(values[c][i])] for c in columns]]
        rows.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------- helpers


def _texts(items: pd.DataFrame, column: str) -> list[str]:
    if column not in items.columns:
        raise ValueError(f"items lack the '{column}' column (have: {list(items.columns)})")
    return items[column].fillna("").astype(str).tolist()


def _floats(items: pd.DataFrame, column: str) -> np.ndarray:
    if column not in items.columns:
        return np.full(len(items), np.nan)
    return pd.to_numeric(items[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _finish_proba(proba: np.ndarray) -> np.ndarray:
    """Replace non-finite values, floor at a tiny probability and renormalise rows to sum to 1."""
    proba = np.nan_to_num(np.asarray(proba, dtype=float), nan=0.0, posinf=1.0, neginf=0.0)
    proba = np.clip(proba, _PROBA_FLOOR, None)
    return proba / proba.sum(axis=1, keepdims=True)


def _top_terms(row_weights: np.ndarray, names: np.ndarray, top: int) -> list[tuple[str, float]]:
    """The `top` terms with the largest positive contribution, as (term, contribution), largest first."""
    positive = np.flatnonzero(row_weights > 0)
    if positive.size == 0 or top <= 0:
        return []
    order = positive[np.argsort(-row_weights[positive], kind="stable")][:top]
    return [(str(names[j]), float(row_weights[j])) for j in order]


def _linear_class_weights(coef: np.ndarray, fitted_classes: np.ndarray, target: Any) -> np.ndarray:
    """Row of coefficients voting for `target` (binary sklearn models store one row for classes_[1])."""
    index = int(np.flatnonzero(fitted_classes == target)[0])
    if coef.shape[0] == 1:
        return coef[0] if index == 1 else -coef[0]
    return coef[index]


# --------------------------------------------------------------------------- base class


class Labeler:
    """Base class: validates inputs, maps labels to the full class list and makes every output row a distribution.

    Subclasses implement `_fit_model(items, y)` (``y`` holds indices into
    ``self.classes_`` and covers at least two distinct classes) and
    `_predict_scores(items)` returning probabilities over ``self.fitted_classes_``
    (sorted present class indices). Degenerate seeds (zero or one distinct
    class, or no usable features) are answered by a smoothed class prior.
    """

    name: str = "labeler"
    family: str = "base"
    version: str = "0"
    task_type: str = "classification"
    #: BLAS/OpenMP threads while fitting and predicting. These models are small: extra threads
    #: mostly spin, and on a machine shared with other runs they made fits 3-20x slower.
    max_threads: int | None = 1

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = int(seed)
        self.params: dict[str, Any] = {**self.default_params(), **params}
        unknown = set(params) - set(self.default_params())
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown params {sorted(unknown)}; known: {sorted(self.default_params())}")
        self.classes_: list | None = None
        self._info: LabelerInfo | None = None
        self._prior: np.ndarray | None = None
        self._fallback: str | None = None
        self.fitted_classes_: np.ndarray | None = None

    # -- to override
    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Hyper-parameters of this labeler (recorded in `info.params`)."""
        return {}

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _explain_items(self, items: pd.DataFrame, predicted: np.ndarray, top: int) -> list[list[tuple[str, float]]]:
        """Per item, up to `top` (term, contribution towards the predicted class) pairs, largest first."""
        return [[] for _ in range(len(items))]

    # -- public API
    def fit(self, items: pd.DataFrame, labels: Sequence, classes: Sequence) -> "Labeler":
        """Train on a seed of labelled items; `classes` fixes the full class list and column order."""
        classes = list(classes)
        if not classes:
            raise ValueError(f"{self.name}: `classes` is empty; pass the full label schema")
        if len(set(map(repr, classes))) != len(classes):
            raise ValueError(f"{self.name}: `classes` has duplicates: {classes}")
        labels = list(labels)
        if len(labels) != len(items):
            raise ValueError(f"{self.name}: {len(items)} items but {len(labels)} labels")
        for column in INPUT_COLUMNS[self.task_type][:2 if self.task_type == "pair" else 1]:
            if column not in items.columns:
                raise ValueError(f"{self.name}: items lack the '{column}' column needed for task_type '{self.task_type}'")
        index = {c: i for i, c in enumerate(classes)}
        y = np.empty(len(labels), dtype=int)
        for row, label in enumerate(labels):
            key = label.item() if isinstance(label, np.generic) else label
            if key not in index:
                item_id = items["item_id"].iloc[row] if "item_id" in items.columns else row
                raise ValueError(
                    f"{self.name}: label {label!r} of item {item_id!r} (row {row}) is not in classes {classes}; "
                    "fix the label or add the class to the schema"
                )
            y[row] = index[key]

        items = items.reset_index(drop=True)
        self.classes_ = classes
        k = len(classes)
        counts = np.bincount(y, minlength=k).astype(float)
        n = int(len(y))
        # Additive smoothing (rule of succession): an honest answer when the seed says little.
        self._prior = (counts + 1.0) / (n + k)
        self.fitted_classes_ = np.flatnonzero(counts > 0)
        self._fallback = None
        if n == 0:
            self._fallback = "no training items: uniform prior"
        elif len(self.fitted_classes_) < 2:
            self._fallback = "single class in seed: smoothed class prior"
        else:
            try:
                with thread_limit(self.max_threads):
                    self._fit_model(items, y)
            except _NoFeatures as exc:
                self._fallback = f"no usable features ({exc}): smoothed class prior"
        self._info = LabelerInfo(
            name=self.name,
            family=self.family,
            version=self.version,
            training_hash=training_hash(items, labels) if "item_id" in items.columns else "",
            classes=[str(c) for c in classes],
            n_train=n,
            params={**self.params, "seed": self.seed, "task_type": self.task_type, "fallback": self._fallback,
                    **self._fit_notes()},
        )
        return self

    def _fit_notes(self) -> dict[str, Any]:
        """Extra facts decided at fit time (e.g. effective min_df, CV folds), recorded in info.params."""
        return {}

    def predict_proba(self, items: pd.DataFrame) -> np.ndarray:
        """Probabilities of shape (n_items, len(classes)), columns in `classes` order, rows summing to 1."""
        self._check_fitted()
        k = len(self.classes_)
        n = len(items)
        if n == 0:
            return np.zeros((0, k))
        items = items.reset_index(drop=True)
        if self._fallback is not None:
            return _finish_proba(np.tile(self._prior, (n, 1)))
        with thread_limit(self.max_threads):
            scores = np.asarray(self._predict_scores(items), dtype=float)
        present = self.fitted_classes_
        # Shrink towards the class prior by one pseudo-example: negligible on a real seed,
        # but it keeps a model fitted on a handful of items from claiming near-certainty.
        n_train = self._n_train
        prior_present = self._prior[present] / self._prior[present].sum()
        scores = (n_train * scores + prior_present) / (n_train + 1.0)
        proba = np.zeros((n, k))
        if len(present) == k:
            proba[:, present] = scores
        else:
            # Classes absent from the seed keep a small mass: 1/(n_train+k), at most 1% each.
            unseen_mass = min(0.01, 1.0 / (self._n_train + k))
            n_unseen = k - len(present)
            proba[:, present] = scores * (1.0 - unseen_mass * n_unseen)
            proba[:, np.setdiff1d(np.arange(k), present)] = unseen_mass
        return _finish_proba(proba)

    def predict(self, items: pd.DataFrame) -> list:
        """Most probable class per item."""
        proba = self.predict_proba(items)
        return [self.classes_[j] for j in proba.argmax(axis=1)]

    def explain(self, items: pd.DataFrame, top: int = 5) -> list[list[str]]:
        """Per item, up to `top` tokens the model relied on for its predicted class (for UI highlighting); may be empty."""
        return [[term for term, _ in row] for row in self.explain_weights(items, top)]

    def explain_weights(self, items: pd.DataFrame, top: int = 5) -> list[list[tuple[str, float]]]:
        """Per item, up to `top` (token, contribution) pairs: how much each token pushed the model towards its
        predicted class (only positive contributions, largest first; the scale is the family's own, so compare
        contributions within one labeler and one item, not across labelers)."""
        self._check_fitted()
        if len(items) == 0:
            return []
        items = items.reset_index(drop=True)
        if self._fallback is not None:
            return [[] for _ in range(len(items))]
        predicted = self.predict_proba(items).argmax(axis=1)
        return self._explain_items(items, predicted, top)

    @property
    def info(self) -> LabelerInfo:
        """Name, family, version, training hash, classes, seed size and params of the fitted labeler."""
        self._check_fitted()
        return self._info

    def save(self, path: Path | str) -> None:
        """Write the fitted labeler to folder `path` (labeler.joblib + info.json)."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, folder / _MODEL_FILE, compress=3)
        (folder / _INFO_FILE).write_text(self._info.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> "Labeler":
        """Read a labeler written by `save`; checks its type against `cls` and its info against info.json."""
        folder = Path(path)
        model_file = folder / _MODEL_FILE
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} not found: is {folder} a folder written by Labeler.save()?")
        try:
            labeler = joblib.load(model_file)
        except (AttributeError, ModuleNotFoundError, ImportError) as exc:
            # A class renamed or removed since the save: the model is stale, not corrupt.
            raise ValueError(f"{model_file} was saved by another version of factory.labelers ({exc}); "
                             "retrain the labelers (key cached models by labeler_suite_version())") from exc
        if not isinstance(labeler, cls):
            raise TypeError(f"{model_file} holds a {type(labeler).__name__}, not a {cls.__name__}")
        info_file = folder / _INFO_FILE
        if info_file.is_file():
            on_disk = LabelerInfo.from_json(info_file.read_text(encoding="utf-8"))
            if on_disk.training_hash != labeler.info.training_hash or on_disk.version != labeler.info.version:
                raise ValueError(f"{info_file} does not match {model_file} (hash or version differ); re-save the labeler")
        return labeler

    # -- internals
    def _check_fitted(self) -> None:
        if self.classes_ is None:
            raise RuntimeError(f"{self.name}: call fit() before predicting, explaining or saving")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, version={self.version!r})"

    @property
    def _n_train(self) -> int:
        return 0 if self._info is None else self._info.n_train


def thread_limit(limit: int | None):
    """Context manager capping BLAS and OpenMP thread pools (no-op when `limit` is None)."""
    return contextlib.nullcontext() if limit is None else threadpool_limits(limits=limit)


class _NoFeatures(Exception):
    """Raised by a subclass when the seed yields no features (e.g. all texts empty)."""


def _fit_tfidf(vectorizer: TfidfVectorizer, texts: list[str]) -> sp.csr_matrix:
    try:
        return vectorizer.fit_transform(texts)
    except ValueError as exc:  # empty vocabulary
        raise _NoFeatures(str(exc)) from exc


def _min_df_for(n_items: int, wanted: int) -> int:
    # min_df>1 removes noise on a real seed but empties the vocabulary of a tiny one.
    return wanted if n_items >= 20 * wanted else 1
