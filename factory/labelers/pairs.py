"""Pair (entity matching) families: models over pair-similarity features and over the character
n-grams both sides share.  Items carry ``left_text``, ``right_text`` and optional ``left_price``, ``right_price``."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from factory.labelers.bag_of_words import _CharNgramTfidf
from factory.labelers.base import Labeler, _floats, _NoFeatures, _texts


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
