"""Labelers of the ``spans`` task type: per-token BIO taggers that need no download.

An item is its recorded tokens (``tokens``: a list of strings, from ingest; :func:`tokenize` is the
documented fallback when only ``text`` is there).  A labeler learns from stored spans answers
(``[[start, end, type], ...]`` JSON, ``end`` exclusive) turned into BIO tags, and gives per token a
distribution over ``O, B-<type>, I-<type>`` (:meth:`_SpanLabeler.token_marginals`).  Its spans are the
argmax tags repaired into valid BIO (``I-X`` not after ``X`` starts a span); a span's probability is the
mean of its tokens' probabilities of their tags.  Two differentiated families:

- ``crf_shape``: a linear-chain CRF (``sklearn-crfsuite``) on word shape, affixes, case and the +-1 context
  words: learns boundaries and transitions from the sequence;
- ``window_gazetteer``: a per-token logistic regression over a +-2 word window, plus a gazetteer of the
  phrases people labelled earlier (longest match).  On its own training items the gazetteer counts leave
  the item out, so the model learns how far a remembered phrase is to be trusted on text it has not seen.

Both subclass :class:`factory.labelers.Labeler` for saving, loading and the recorded ``info``.  Their
``predict_proba`` gives, per item and span type, the probability that the item holds a span of the type
(the largest ``B-<type>`` marginal): the ``prob_<type>`` columns the pipeline's tables carry.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np
import pandas as pd
import sklearn_crfsuite
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression

from factory.engine.spans import bio_spans, repair_bio
from factory.labelers.base import Labeler, LabelerInfo, thread_limit, training_hash

# A word is a run of letters/digits/underscore, with inner hyphens or apostrophes (o'neill, well-known);
# every other non-space character is a token of its own.  Offsets of spans are indices into this list.
TOKEN_RE = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """The factory's word tokeniser for spans (``TOKEN_RE``): words with inner hyphens/apostrophes, and
    punctuation marks one per token."""
    return TOKEN_RE.findall(str(text))


def tag_names(classes: Sequence[str]) -> list[str]:
    return ["O"] + [f"{p}-{c}" for c in classes for p in ("B", "I")]


def spans_to_bio(stored: Any, n_tokens: int) -> list[str]:
    """A stored spans answer (JSON text or list of [start, end, type]) as BIO tags over ``n_tokens`` tokens."""
    spans = json.loads(stored or "[]") if isinstance(stored, str) else list(stored or [])
    tags = ["O"] * n_tokens
    for s, e, t in spans:
        if e > n_tokens:
            raise ValueError(f"span [{s}, {e}) goes past the item's {n_tokens} tokens")
        tags[s] = f"B-{t}"
        for i in range(s + 1, e):
            tags[i] = f"I-{t}"
    return tags


def bio_to_stored(tags: Sequence[str]) -> str:
    """Valid BIO tags as the stored spans text (``end`` exclusive)."""
    return json.dumps([[int(s), int(e) + 1, t] for s, e, t in sorted(bio_spans(list(tags)))], separators=(",", ":"))


def item_tokens(items: pd.DataFrame) -> list[list[str]]:
    """Each item's recorded tokens (``tokens`` column), or :func:`tokenize` of its text."""
    if "tokens" in items.columns:
        return [list(t) if not isinstance(t, str) else json.loads(t) for t in items["tokens"]]
    if "text" not in items.columns:
        raise ValueError(f"span labelers need a 'tokens' or 'text' column (have: {list(items.columns)})")
    return [tokenize(t) for t in items["text"].fillna("").astype(str)]


def _shape(w: str) -> str:
    s = re.sub(r"[A-Z]+", "X", re.sub(r"[a-z]+", "x", re.sub(r"\d+", "d", w)))
    return s[:6]


class _SpanLabeler(Labeler):
    task_type = "spans"
    version = "1.0.0"

    def _fit_tags(self, toks: list[list[str]], bio: list[list[str]]) -> None:
        raise NotImplementedError

    def _marginals(self, toks: list[list[str]]) -> list[np.ndarray]:
        raise NotImplementedError

    def fit(self, items: pd.DataFrame, labels: Sequence, classes: Sequence) -> "_SpanLabeler":
        """Train on stored spans answers (JSON ``[[start, end, type], ...]``) of the items' tokens."""
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError(f"{self.name}: `classes` is empty; pass the span types")
        labels = list(labels)
        if len(labels) != len(items):
            raise ValueError(f"{self.name}: {len(items)} items but {len(labels)} labels")
        items = items.reset_index(drop=True)
        toks = item_tokens(items)
        bio = []
        for row, (t, lab) in enumerate(zip(toks, labels)):
            try:
                tags = spans_to_bio(lab, len(t))
            except (ValueError, TypeError) as exc:
                item = items["item_id"].iloc[row] if "item_id" in items.columns else row
                raise ValueError(f"{self.name}: label {lab!r} of item {item!r} (row {row}): {exc}") from None
            unknown = {g[2:] for g in tags if g != "O"} - set(classes)
            if unknown:
                item = items["item_id"].iloc[row] if "item_id" in items.columns else row
                raise ValueError(f"{self.name}: label of item {item!r} (row {row}) has type(s) {sorted(unknown)} "
                                 f"not in classes {classes}")
            bio.append(tags)
        self.classes_ = classes
        self.tags_ = tag_names(classes)
        counts = Counter(g for tags in bio for g in tags)
        total = sum(counts.values())
        # add-one smoothed tag rates: the answer when nothing can be learnt (no items, or every token O)
        self._prior = np.array([(counts[g] + 1.0) / (total + len(self.tags_)) for g in self.tags_])
        self._fallback = None
        if total == 0 or len(counts) < 2:
            self._fallback = "no training tokens" if total == 0 else "one tag only: its smoothed rate"
        else:
            with thread_limit(self.max_threads):
                self._fit_tags(toks, bio)
        self._info = LabelerInfo(
            name=self.name, family=self.family, version=self.version,
            training_hash=training_hash(items[["item_id"]], [str(x) for x in labels]) if "item_id" in items.columns else "",
            classes=classes, n_train=len(items), params={**self.params, "seed": self.seed, "task_type": "spans",
                                                         "fallback": self._fallback})
        return self

    def token_marginals(self, items: pd.DataFrame) -> list[np.ndarray]:
        """Per item an (n_tokens x n_tags) array: each token's distribution over ``tag_names(classes)``."""
        self._check_fitted()
        toks = item_tokens(items.reset_index(drop=True))
        if self._fallback is not None:
            return [np.tile(self._prior, (len(t), 1)) for t in toks]
        with thread_limit(self.max_threads):
            out = self._marginals(toks)
        return [np.clip(m, 1e-6, None) / np.clip(m, 1e-6, None).sum(axis=1, keepdims=True) if len(m) else m
                for m in out]

    def predict_spans(self, items: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Stored spans per item, each item's confidence (its weakest decision: the least probable span or
        non-entity token) and the (items x types) probability that the item holds a span of each type."""
        marg = self.token_marginals(items)
        labels, conf = [], np.ones(len(marg))
        types = np.zeros((len(marg), len(self.classes_)))
        for i, m in enumerate(marg):
            if not len(m):
                labels.append("[]")
                continue
            tags = repair_bio([self.tags_[j] for j in m.argmax(axis=1)])
            labels.append(bio_to_stored(tags))
            idx = [self.tags_.index(g) for g in tags]
            tok_p = m[np.arange(len(m)), idx]
            parts = [float(tok_p[s:e + 1].mean()) for s, e, _ in bio_spans(tags)]
            parts += [float(p) for p, g in zip(tok_p, tags) if g == "O"]
            conf[i] = min(parts) if parts else 1.0
            for k, c in enumerate(self.classes_):
                types[i, k] = float(m[:, self.tags_.index(f"B-{c}")].max())
        return labels, conf, np.clip(types, 1e-4, 1 - 1e-4)

    def predict_proba(self, items: pd.DataFrame) -> np.ndarray:
        """(items x types): the probability that the item holds a span of each type."""
        return self.predict_spans(items)[2]

    def predict(self, items: pd.DataFrame) -> list[str]:
        return self.predict_spans(items)[0]

    def explain(self, items: pd.DataFrame, top: int = 5) -> list[list[str]]:
        return [[] for _ in range(len(items))]


class CrfShapeTagger(_SpanLabeler):
    """Family 'crf': a linear-chain CRF (L-BFGS, elastic net) on word shape, affixes, case and +-1 context."""

    name = "crf_shape"
    family = "crf"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"c1": 0.1, "c2": 0.05, "max_iterations": 100}

    @staticmethod
    def _features(toks: list[str]) -> list[dict]:
        out = []
        for i, w in enumerate(toks):
            f = {"bias": 1.0, "w": w.lower(), "shape": _shape(w), "p2": w[:2], "p3": w[:3], "s2": w[-2:],
                 "s3": w[-3:], "title": w.istitle(), "upper": w.isupper(), "digit": w.isdigit(), "len": min(len(w), 8)}
            if i == 0:
                f["BOS"] = True
            else:
                f |= {"-1w": toks[i - 1].lower(), "-1title": toks[i - 1].istitle(), "-1shape": _shape(toks[i - 1])}
            if i == len(toks) - 1:
                f["EOS"] = True
            else:
                f |= {"+1w": toks[i + 1].lower(), "+1title": toks[i + 1].istitle(), "+1shape": _shape(toks[i + 1])}
            out.append(f)
        return out

    def _fit_tags(self, toks, bio):
        p = self.params
        self.crf_ = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=p["c1"], c2=p["c2"], max_iterations=p["max_iterations"],
                                         all_possible_transitions=True)
        keep = [i for i, t in enumerate(toks) if t]
        self.crf_.fit([self._features(toks[i]) for i in keep], [bio[i] for i in keep])

    def _marginals(self, toks):
        out = [np.zeros((0, len(self.tags_)))] * len(toks)
        keep = [i for i, t in enumerate(toks) if t]
        marg = self.crf_.predict_marginals([self._features(toks[i]) for i in keep]) if keep else []
        for i, m in zip(keep, marg):
            out[i] = np.array([[tok.get(g, 0.0) for g in self.tags_] for tok in m])
        return out


class WindowGazetteerTagger(_SpanLabeler):
    """Family 'window-gazetteer': per-token logistic regression on a +-2 word window and a gazetteer of the
    phrases labelled earlier (longest match; leave-item-out counts on its own training items)."""

    name = "window_gazetteer"
    family = "window-gazetteer"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"C": 1.0, "max_iter": 500, "max_phrase": 6}

    def _gaz_tags(self, toks: list[str], own: dict | None = None) -> list[str]:
        """Longest-match gazetteer tags ('B-X'/'I-X'/'') for one item; `own`: this item's phrases, left out."""
        low = [w.lower() for w in toks]
        out = [""] * len(toks)
        i = 0
        while i < len(low):
            hit = None
            for n in range(min(self.params["max_phrase"], len(low) - i), 0, -1):
                ph = tuple(low[i:i + n])
                c = Counter(self.gazetteer_.get(ph, {}))
                if own and ph in own:
                    c.subtract(own[ph])
                c = +c
                if c:
                    hit = (n, c.most_common(1)[0][0])
                    break
            if hit:
                n, t = hit
                out[i] = f"B-{t}"
                for k in range(i + 1, i + n):
                    out[k] = f"I-{t}"
                i += n
            else:
                i += 1
        return out

    def _features(self, toks: list[str], gaz: list[str]) -> list[dict]:
        low = [w.lower() for w in toks]
        out = []
        for i, w in enumerate(toks):
            f = {"w": low[i], "shape": _shape(w), "title": w.istitle(), "s3": low[i][-3:], "gaz": gaz[i] or "none"}
            for d in (-2, -1, 1, 2):
                j = i + d
                f[f"{d}w"] = low[j] if 0 <= j < len(toks) else ("<s>" if j < 0 else "</s>")
                f[f"{d}gaz"] = (gaz[j] if 0 <= j < len(toks) else "") or "none"
            f["gaz_title"] = f"{gaz[i] or 'none'}|{w.istitle()}"
            out.append(f)
        return out

    def _fit_tags(self, toks, bio):
        self.gazetteer_: dict[tuple, dict] = defaultdict(Counter)
        own_all = []
        for t, tags in zip(toks, bio):
            own: dict[tuple, Counter] = defaultdict(Counter)
            for s, e, typ in bio_spans(tags):
                own[tuple(w.lower() for w in t[s:e + 1])][typ] += 1
            for ph, c in own.items():
                self.gazetteer_[ph].update(c)
            own_all.append(own)
        self.gazetteer_ = {k: dict(v) for k, v in self.gazetteer_.items()}
        X = [f for t, own in zip(toks, own_all) for f in self._features(t, self._gaz_tags(t, own))]
        y = [g for tags in bio for g in tags]
        self.vec_ = DictVectorizer()
        self.model_ = LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"], random_state=self.seed)
        self.model_.fit(self.vec_.fit_transform(X), y)

    def _marginals(self, toks):
        out = [np.zeros((0, len(self.tags_)))] * len(toks)
        keep = [i for i, t in enumerate(toks) if t]
        if not keep:
            return out
        X = self.vec_.transform([f for i in keep for f in self._features(toks[i], self._gaz_tags(toks[i]))])
        p = self.model_.predict_proba(X)
        cols = [list(self.model_.classes_).index(g) if g in self.model_.classes_ else -1 for g in self.tags_]
        full = np.stack([p[:, c] if c >= 0 else np.zeros(len(p)) for c in cols], axis=1)
        at = 0
        for i in keep:
            out[i] = full[at:at + len(toks[i])]
            at += len(toks[i])
        return out


FAMILIES: tuple[type[_SpanLabeler], ...] = (CrfShapeTagger, WindowGazetteerTagger)


def make_span_labelers(seed: int = 0) -> list[_SpanLabeler]:
    """Two unfitted span taggers of different families (a CRF, a window classifier with a gazetteer)."""
    return [cls(seed=seed) for cls in FAMILIES]


def span_suite_version() -> str:
    return "+".join(f"{cls.name}@{cls.version}" for cls in FAMILIES)


def cross_val_spans(make, items: pd.DataFrame, labels: Sequence, classes: Sequence[str], folds: int = 5,
                    seed: int = 0) -> list[str]:
    """Out-of-sample spans for every item: each predicted by a labeler (from ``make()``) not trained on it
    (shuffled K-fold, fewer folds with fewer items; with fewer than two items: the untrained fallback)."""
    from sklearn.model_selection import KFold

    items = items.reset_index(drop=True)
    labels = list(labels)
    n = len(items)
    if n < 2:
        return make().fit(items.iloc[:0], [], classes).predict(items) if n else []
    out: list[str] = [""] * n
    for tr, te in KFold(n_splits=max(2, min(folds, n)), shuffle=True, random_state=seed).split(np.zeros(n)):
        lb = make().fit(items.iloc[tr], [labels[i] for i in tr], classes)
        for i, lab in zip(te, lb.predict(items.iloc[te])):
            out[i] = lab
    return out
