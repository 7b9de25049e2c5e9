"""Bag-of-words families for one class per text: word TF-IDF + logistic regression, hashed character
n-grams + SGD, and LSA + nearest neighbours (kept available, not in the default suite)."""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import normalize

from factory.labelers.base import (Labeler, _fit_tfidf, _linear_class_weights, _min_df_for, _NoFeatures, _texts,
                                   _top_terms)
from factory.labelers.calibration import _TemperatureScaledLinear


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
