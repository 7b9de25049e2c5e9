"""Span-level precision, recall and F1, strict and relaxed, with bootstrap intervals over sentences.

Spans are ``(start, end, type)`` over token indices, ``end`` exclusive, one list per sentence.

- ``strict``: a predicted span is right when a reference span has the same start, end and type: seqeval's
  entity-level scores (``seqeval.metrics.f1_score`` on IOB2 tags; on valid BIO its default and strict modes
  agree), micro-averaged over all spans.
- ``relaxed``: precision is the share of predicted spans that overlap a reference span of the same type, recall
  the share of reference spans overlapped by a predicted span of the same type ("partial match, right type";
  the convention of benchmarks/spans.py).

Intervals: percentile bootstrap over *sentences* (the spans of one sentence are not independent), ``n_boot``
resamples at ``level``.  Hand-written (seqeval has no relaxed mode and no intervals); tests/test_span_metrics.py
checks the strict scores against seqeval when it is installed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Span = tuple[int, int, str]


def _norm(spans) -> list[Span]:
    return sorted((int(s), int(e), str(t)) for s, e, t in spans)


def _matches(gold: list[Span], pred: list[Span], mode: str) -> tuple[int, int]:
    """(predicted spans that count as right, reference spans that count as found)."""
    if mode == "strict":
        k = len(set(gold) & set(pred))
        return k, k
    hit_p = sum(any(gt == t and s < ge and gs < e for gs, ge, gt in gold) for s, e, t in pred)
    hit_g = sum(any(gt == t and s < ge and gs < e for s, e, t in pred) for gs, ge, gt in gold)
    return hit_p, hit_g


def _prf(hit_p: float, hit_g: float, n_pred: float, n_gold: float) -> tuple[float, float, float]:
    p = hit_p / n_pred if n_pred else (1.0 if not n_gold else 0.0)
    r = hit_g / n_gold if n_gold else (1.0 if not n_pred else 0.0)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def span_prf(gold: Sequence, pred: Sequence, mode: str = "strict", level: float = 0.95, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """Micro precision/recall/F1 of per-sentence predicted spans against reference spans, with intervals.

    ``gold`` and ``pred``: one list of ``(start, end, type)`` per sentence, aligned.  Returns
    ``precision, recall, f1, tp`` (right predictions), ``found`` (found references), ``n_pred, n_gold, n_sentences,
    mode`` and ``<measure>_interval`` ([lo, hi]).
    No spans at all on both sides: precision = recall = F1 = 1 (nothing to find, nothing wrongly found)."""
    if mode not in ("strict", "relaxed"):
        raise ValueError(f"mode '{mode}': use 'strict' or 'relaxed'")
    if len(gold) != len(pred):
        raise ValueError(f"span_prf: {len(gold)} reference sentences but {len(pred)} predicted ones")
    g = [_norm(x) for x in gold]
    p = [_norm(x) for x in pred]
    hits = np.array([_matches(a, b, mode) for a, b in zip(g, p)], dtype=float).reshape(-1, 2)
    tp, fd = hits[:, 0], hits[:, 1]
    n_p = np.array([len(b) for b in p], dtype=float)
    n_g = np.array([len(a) for a in g], dtype=float)
    prec, rec, f1 = _prf(tp.sum(), fd.sum(), n_p.sum(), n_g.sum())
    out = {"mode": mode, "precision": prec, "recall": rec, "f1": f1, "tp": int(tp.sum()), "found": int(fd.sum()),
           "n_pred": int(n_p.sum()), "n_gold": int(n_g.sum()), "n_sentences": len(g), "level": level}
    n = len(g)
    if n == 0:
        return out | {f"{m}_interval": [float("nan"), float("nan")] for m in ("precision", "recall", "f1")}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    T, F, P, G = tp[idx].sum(axis=1), fd[idx].sum(axis=1), n_p[idx].sum(axis=1), n_g[idx].sum(axis=1)
    boot = np.array([_prf(*x) for x in zip(T, F, P, G)])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for j, m in enumerate(("precision", "recall", "f1")):
        out[f"{m}_interval"] = [float(np.percentile(boot[:, j], lo)), float(np.percentile(boot[:, j], hi))]
    return out


def span_quality(gold: Sequence, pred: Sequence, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"strict": span_prf(...), "relaxed": span_prf(...)}``."""
    return {m: span_prf(gold, pred, m, level=level, n_boot=n_boot, seed=seed) for m in ("strict", "relaxed")}
