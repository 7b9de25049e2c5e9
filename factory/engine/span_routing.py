"""Sentence-level routing for span tasks: which sentences a person must look at, and in what order.

:func:`route_sentences` is the only span routing policy: the pipeline (spans pre-annotation and
escalation) and ``factory bench replay`` on span data both call it.  It reads what
:func:`factory.engine.spans.aggregate_spans` returns (token marginals and span posteriors) and the
answers it was fitted on, and returns one row per sentence:

- ``confidence``: probability that the sentence's fused span set is exactly right.  The raw value is
  the model's: the product of the fused spans' posteriors and of ``P(O)`` on every token outside
  them (the fused path's probability if the sentence's parts were independent).  The model treats
  annotators as conditionally independent, so the raw value is overconfident; pass a
  :class:`SentenceCalibration` (see :func:`fit_sentence_calibration`) to map it to a probability.
- ``reason``: ``""`` (may be accepted without a person) or why a person must look:

  * ``no_support``: a fused span that no answer (person or model) gave exactly -- the fusion invented
    it from parts, nobody vouches for it;
  * ``disagreement``: a strict majority of the people who answered gave one span set and the fused
    set differs from it -- people are never silently overruled;
  * and, when ``confidence < target``, the weakest part: ``boundary`` (the least probable fused span
    has an answer with the same type that overlaps it with other boundaries), ``missed_entity`` (the
    probability that a token outside the fused spans belongs to an entity outweighs the fused spans'
    doubt), else ``low_confidence``.
- ``priority``: the expected drop in the probability that the sentence is wrong from one more human
  answer (:func:`factory.engine.routing.expected_error_reduction`, the classification loop's gain,
  with a sentence treated as one item whose label is its whole span set); routed sentences are asked
  highest first.
- ``n_human``: human answers the sentence has; ``ask``: routed and within ``budget`` (in priority
  order).  ``budget`` caps nothing silently: sentences beyond it keep their reason.

Pure numpy/pandas; reads no truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from factory.engine.routing import expected_error_reduction
from factory.engine.spans import SpanAggregation, bio_spans

__all__ = ["REASONS", "MODEL_PREFIX", "SentenceCalibration", "answer_span_sets", "raw_sentence_confidence",
           "route_sentences"]

REASONS = ("low_confidence", "disagreement", "boundary", "missed_entity", "no_support")
MODEL_PREFIX = "model:"  # model labelers are workers whose id starts with this
# a wrong span set is one of many: the chance that a person's wrong answer equals the fused (wrong) set
# is modelled as (1 - reliability) / (ALTERNATIVES - 1) in the expected-gain formula
ALTERNATIVES = 5
DEFAULT_RELIABILITY = 0.6  # a person's chance of giving the exact span set, before answers say otherwise


@dataclass(frozen=True)
class SentenceCalibration:
    """A monotone map from raw to calibrated probability: piecewise linear through ``(x, y)`` knots
    (``x`` increasing in [0, 1]); used for sentence confidences and, separately, span posteriors."""

    x: tuple
    y: tuple
    n: int = 0  # observations it was fitted on
    method: str = ""

    def __call__(self, p) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=float), np.asarray(self.x, float), np.asarray(self.y, float))


def answer_span_sets(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per (sentence_id, worker_id): ``spans`` as a frozenset of ``(start, end_inclusive, type)``.

    Spans are read from the tags as conlleval reads them (:func:`factory.engine.spans.bio_spans`)."""
    missing = {"sentence_id", "worker_id", "token_index", "tag"} - set(answers.columns)
    if missing:
        raise ValueError(f"answers: missing column(s) {sorted(missing)}; expected sentence_id, worker_id, "
                         "token_index, tag")
    a = answers.sort_values(["sentence_id", "worker_id", "token_index"], kind="stable")
    grouped = a.groupby(["sentence_id", "worker_id"], sort=False)["tag"].agg(list)
    out = grouped.map(lambda tags: frozenset(bio_spans(tags))).rename("spans").reset_index()
    out["sentence_id"] = out["sentence_id"].astype(str)
    out["worker_id"] = out["worker_id"].astype(str)
    return out


def raw_sentence_confidence(agg: SpanAggregation) -> pd.DataFrame:
    """Per sentence: ``raw`` (product of fused span posteriors and of P(O) outside them), ``span_doubt``
    (1 - product of span posteriors), ``missed`` (1 - product of P(O) outside the spans),
    ``weakest_span`` (posterior of the least probable fused span, 1 if none)."""
    tags = agg.tags
    sid = tags["sentence_id"].astype(str)
    outside = (tags["tag"] == "O").to_numpy()
    log_o = np.log(np.clip(tags["prob_O"].to_numpy(float), 1e-300, 1.0))
    log_out = pd.Series(np.where(outside, log_o, 0.0)).groupby(sid.to_numpy()).sum()
    sp = agg.spans
    log_sp = pd.Series(np.log(np.clip(sp["probability"].to_numpy(float), 1e-300, 1.0))).groupby(
        sp["sentence_id"].astype(str).to_numpy()).sum().reindex(log_out.index, fill_value=0.0)
    weakest = sp.groupby(sp["sentence_id"].astype(str))["probability"].min().reindex(log_out.index, fill_value=1.0)
    return pd.DataFrame({
        "raw": np.exp(log_out + log_sp),
        "span_doubt": 1.0 - np.exp(log_sp),
        "missed": 1.0 - np.exp(log_out),
        "weakest_span": weakest.astype(float),
    }).rename_axis("sentence_id")


def _fused_sets(agg: SpanAggregation, index: pd.Index) -> pd.Series:
    sp = agg.spans
    sets = pd.Series(
        [frozenset(zip(g["start"].astype(int), g["end"].astype(int), g["type"].astype(str)))
         for _, g in sp.groupby(sp["sentence_id"].astype(str), sort=True)],
        index=sorted(sp["sentence_id"].astype(str).unique()), dtype=object)
    return sets.reindex(index).map(lambda s: s if isinstance(s, frozenset) else frozenset())


def route_sentences(agg: SpanAggregation, *, answers: pd.DataFrame | None = None, target: float = 0.95,
                    budget: int | None = None, calibration: SentenceCalibration | None = None,
                    reliability: float | None = None) -> pd.DataFrame:
    """Route every sentence of ``agg``: accept (``reason == ""``) or send to a person, with a priority.

    ``answers``: the BIO answers ``agg`` was fitted on (``sentence_id, worker_id, token_index, tag``;
    ids starting with ``"model:"`` are model labelers).  ``calibration`` maps the raw sentence
    confidence to a probability (identity when None: the model's own, overconfident, value).
    ``reliability``: a person's chance of giving the exact span set (default: the people's measured
    agreement with the fused sets, or ``DEFAULT_RELIABILITY`` without answers).  Columns:
    ``sentence_id, confidence, reason, priority, n_human, ask``.
    """
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"route_sentences: target must be in (0, 1], got {target}")
    if budget is not None and int(budget) < 0:
        raise ValueError(f"route_sentences: budget must be >= 0 or None, got {budget}")
    conf = raw_sentence_confidence(agg)
    idx = conf.index
    n = len(idx)
    confidence = conf["raw"].to_numpy(float)
    if calibration is not None:
        confidence = np.clip(calibration(confidence), 0.0, 1.0)
    fused = _fused_sets(agg, idx)

    no_support = np.zeros(n, dtype=bool)
    disagreement = np.zeros(n, dtype=bool)
    boundary_conflict = np.zeros(n, dtype=bool)
    n_human = np.zeros(n, dtype=int)
    agree_rate = None
    if answers is not None and len(answers):
        sets = answer_span_sets(answers)
        sets = sets[sets["sentence_id"].isin(idx)]
        human = ~sets["worker_id"].str.startswith(MODEL_PREFIX)
        pos = idx.get_indexer(sets["sentence_id"])
        n_human = np.bincount(pos[human.to_numpy()], minlength=n)
        given: list[set] = [set() for _ in range(n)]
        for p, s in zip(pos, sets["spans"]):
            given[p].update(s)
        fused_list = fused.to_list()
        for i in range(n):
            no_support[i] = bool(fused_list[i] - given[i])
        # people's answers per sentence: does a strict majority give one set, and is it the fused one?
        hs = sets[human.to_numpy()]
        hpos = idx.get_indexer(hs["sentence_id"])
        agree = np.array([s == fused_list[p] for p, s in zip(hpos, hs["spans"])], dtype=bool)
        if len(hs):
            agree_rate = float(agree.mean())
            counts = hs.groupby(["sentence_id", "spans"], sort=False).size().rename("k").reset_index()
            top = counts.sort_values("k", ascending=False, kind="stable").drop_duplicates("sentence_id")
            tpos = idx.get_indexer(top["sentence_id"])
            majority = top["k"].to_numpy() * 2 > n_human[tpos]
            differs = np.array([s != fused_list[p] for p, s in zip(tpos, top["spans"])], dtype=bool)
            disagreement[tpos[majority & differs]] = True
        # boundary conflict on the weakest fused span: an answer span of its type overlapping it
        # with other boundaries
        sp = agg.spans.assign(sentence_id=agg.spans["sentence_id"].astype(str))
        weakest = sp.sort_values("probability", kind="stable").drop_duplicates("sentence_id")
        for sid_, s0, e0, ty in zip(weakest["sentence_id"], weakest["start"], weakest["end"], weakest["type"]):
            p = idx.get_loc(sid_)
            boundary_conflict[p] = any(t == ty and a <= e0 and s0 <= b and (a, b) != (s0, e0) for a, b, t in given[p])

    low = confidence < float(target)
    missed_dominates = conf["missed"].to_numpy(float) > conf["span_doubt"].to_numpy(float)
    reason = np.full(n, "", dtype=object)
    reason[low] = "low_confidence"
    reason[low & ~missed_dominates & boundary_conflict] = "boundary"
    reason[low & missed_dominates] = "missed_entity"
    reason[disagreement] = "disagreement"
    reason[no_support] = "no_support"

    rel = float(reliability) if reliability is not None else (
        agree_rate if agree_rate is not None else DEFAULT_RELIABILITY)
    rel = float(np.clip(rel, 0.05, 0.99))
    priority = expected_error_reduction(confidence, rel, ALTERNATIVES, horizon=3)
    routed = reason != ""
    ask = np.zeros(n, dtype=bool)
    r_idx = np.flatnonzero(routed)
    order = r_idx[np.argsort(-priority[r_idx], kind="stable")]
    ask[order if budget is None else order[: int(budget)]] = True
    return pd.DataFrame({
        "sentence_id": idx.to_numpy(),
        "confidence": confidence,
        "reason": reason,
        "priority": priority,
        "n_human": n_human,
        "ask": ask,
    })
