"""Multi-label aggregation: many people tick a set of labels per item (possibly none); one set out.

Model (a label-set Dawid-Skene with a per-worker binary channel): the item's true set T is one of a
list of *candidate sets* — the empty set, every single label, and every set some answer gave — with
a learned prior over them (so label co-occurrence is learned: a pair that people tick together is a
candidate with its own prior, a pair nobody ticked is never invented).  Given T, a worker ticks each
true label with its sensitivity s_w and each other label with its false-tick rate f_w, independently:

    P(S | T, w) = s_w^|S∩T| (1-s_w)^|T\\S| f_w^|S\\T| (1-f_w)^(L-|T∪S|)

EM fits s_w, f_w (MAP under Beta priors: s ~ Beta(2, 1), people tick most true labels; f ~ Beta(1,
10), a false tick is rare when a typical item has one label of many) and the set prior; the E-step
gives each item's posterior over the candidate sets, hence a probability per label (the mass of the
sets that contain it) and a confidence per item (the chosen set's posterior).  Two parameters per
worker instead of crowd-kit BinaryRelevance(DawidSkene)'s two per worker *per label*: a crowd of
workers with a few dozen answers each cannot estimate 16 numbers each.

Answers may also carry model labelers: they are workers like any other (their s and f are learned).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["aggregate_multilabel", "parse_label_set", "DEFAULTS"]

DEFAULTS = {"sensitivity_prior": (2.0, 1.0), "false_tick_prior": (1.0, 10.0), "set_prior_alpha": 1.0,
            "max_iter": 200, "tol": 1e-7}


def parse_label_set(value, labels: Sequence[str], where: str = "") -> frozenset:
    """A label set from a list/set/tuple or a '|'-joined string ('' = the empty set); unknown labels raise."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise ValueError(f"{where}missing label set (use an empty list or '' for 'none of the labels')")
    items = [v for v in value.split("|") if v] if isinstance(value, str) else list(value)
    bad = [v for v in items if v not in labels]
    if bad:
        raise ValueError(f"{where}label(s) {bad} are not in the schema {list(labels)}")
    return frozenset(items)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


def aggregate_multilabel(answers: pd.DataFrame, labels: Iterable[str], **opts) -> pd.DataFrame:
    """Fuse label-set answers (``item_id, worker_id, labels``) into one set per item.

    ``labels`` per answer: a list/set of label names or a '|'-joined string ('' is the empty set).
    Returns one row per item (index item_id): ``labels`` (sorted list), ``confidence`` (posterior of
    that set), ``n_answers`` and ``prob_<label>`` (posterior probability that the label applies).
    ``attrs`` holds the workers' ``sensitivity``/``false_tick`` and the candidate sets' prior.
    """
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **opts}
    labels = list(labels)
    L = len(labels)
    if L == 0 or L > 62:
        raise ValueError(f"aggregate_multilabel: need 1 to 62 labels, got {L}")
    missing = {"item_id", "worker_id", "labels"} - set(answers.columns)
    if missing:
        raise ValueError(f"aggregate_multilabel: answers lack column(s) {sorted(missing)}")
    bit = {lab: 1 << i for i, lab in enumerate(labels)}
    masks = np.array([sum(bit[v] for v in parse_label_set(s, labels, f"answer row {r}: "))
                      for r, s in enumerate(answers["labels"].tolist())], dtype=np.int64)
    ii, items = pd.factorize(answers["item_id"], sort=True)
    ww, workers = pd.factorize(answers["worker_id"], sort=True)
    n_items, n_workers = len(items), len(workers)
    cands = np.array(sorted({0, *bit.values(), *np.unique(masks).tolist()}), dtype=np.int64)
    n_true = _popcount(cands)
    tp = _popcount(masks[:, None] & cands[None, :])  # (answers, candidates)
    fn = n_true[None, :] - tp
    fp = _popcount(masks[:, None] & ~cands[None, :])
    tn = L - n_true[None, :] - fp
    by_item = sparse.csr_matrix((np.ones(len(ii)), (ii, np.arange(len(ii)))), shape=(n_items, len(ii)))
    (a_s, b_s), (a_f, b_f) = o["sensitivity_prior"], o["false_tick_prior"]
    s = np.full(n_workers, a_s / (a_s + b_s))
    f = np.full(n_workers, a_f / (a_f + b_f))
    prior = np.full(len(cands), 1.0 / len(cands))
    last = -np.inf
    it = 0
    for it in range(1, int(o["max_iter"]) + 1):
        ll = (tp * np.log(s)[ww, None] + fn * np.log1p(-s)[ww, None]
              + fp * np.log(f)[ww, None] + tn * np.log1p(-f)[ww, None])
        logpost = by_item @ ll  # per item: the sum over its answers
        logpost += np.log(prior)[None, :]
        top = logpost.max(axis=1, keepdims=True)
        post = np.exp(logpost - top)
        z = post.sum(axis=1, keepdims=True)
        post /= z
        objective = float((np.log(z) + top).sum())
        r = post[ii]
        s_num = np.bincount(ww, (r * tp).sum(1), n_workers) + a_s - 1
        s_den = s_num + np.bincount(ww, (r * fn).sum(1), n_workers) + b_s - 1
        f_num = np.bincount(ww, (r * fp).sum(1), n_workers) + a_f - 1
        f_den = f_num + np.bincount(ww, (r * tn).sum(1), n_workers) + b_f - 1
        s = np.clip(np.divide(s_num, s_den, out=np.full(n_workers, 0.5), where=s_den > 0), 1e-4, 1 - 1e-4)
        f = np.clip(np.divide(f_num, f_den, out=np.full(n_workers, 0.5), where=f_den > 0), 1e-5, 1 - 1e-4)
        prior = post.sum(axis=0) + float(o["set_prior_alpha"])
        prior /= prior.sum()
        if objective - last < float(o["tol"]) * len(masks):
            break
        last = objective
    best = post.argmax(axis=1)
    has = (cands[:, None] & np.array(list(bit.values()))[None, :]) != 0  # (candidates, labels)
    per_label = post @ has.astype(float)
    out = pd.DataFrame({"labels": [sorted((lab for lab in labels if cands[b] & bit[lab]), key=labels.index)
                                   for b in best],
                        "confidence": post[np.arange(n_items), best],
                        "n_answers": np.bincount(ii, minlength=n_items)}, index=pd.Index(items, name="item_id"))
    for j, lab in enumerate(labels):
        out[f"prob_{lab}"] = per_label[:, j]
    out.attrs.update(iterations=it, workers=pd.DataFrame({"sensitivity": s, "false_tick": f}, index=workers),
                     set_prior=pd.Series(prior, index=["|".join(lab for lab in labels if c & bit[lab]) for c in cands]))
    return out
