"""Sentence-level routing for span tasks: which sentences a person must look at, and in what order.

:func:`route_sentences` is the only span routing policy: the pipeline (spans pre-annotation and
escalation) and ``factory bench replay`` on span data both call it.  It reads what
:func:`factory.engine.spans.aggregate_spans` returns (token marginals and span posteriors) and the
answers it was fitted on, and returns one row per sentence:

- ``confidence``: probability that the sentence's fused span set is exactly right.  The raw value is
  the model's: the product of the fused spans' posteriors and of ``P(O)`` on every token outside
  them (the fused path's probability if the sentence's parts were independent).  The model treats
  annotators as conditionally independent, so the raw value is overconfident; pass a
  :class:`SpanCalibration` (see :func:`fit_span_calibration`) to map it to a probability.
- ``reason``: ``""`` (may be accepted without a person) or why a person must look:

  * ``no_support``: a fused span that no answer (person or model) gave exactly -- the fusion invented
    it from parts, nobody vouches for it;
  * ``disagreement``: a strict majority of the people who answered gave one span set and the fused
    set differs from it -- people are never silently overruled;
  * and, when ``confidence < target``, the weakest part: ``boundary`` (the least probable fused span
    has an answer with the same type that overlaps it with other boundaries), ``missed_entity`` (the
    probability that a token outside the fused spans belongs to an entity outweighs the fused spans'
    doubt), else ``low_confidence``.
- ``priority``: the expected number of span errors one more human answer removes.  Span F1 counts
  spans, not sentences, so the sentence's expected errors are ``sum(1 - q)`` over its fused spans (``q``
  the calibrated span posterior) plus the expected number of entities it misses (the ``B-`` mass on
  tokens outside the fused spans); one more answer among ``n + 1`` people is credited ``1 / (n + 1)``
  of them (hand-written: each person's answer is an equal share of the people's evidence, so the
  marginal answer's share shrinks as answers pile up).  Routed sentences are asked highest first.
- ``n_human``: human answers the sentence has; ``ask``: routed and within ``budget`` (in priority
  order).  ``budget`` caps nothing silently: sentences beyond it keep their reason.

Pure numpy/pandas; reads no truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from factory.engine.calibration import Calibrator, fit_calibrator
from factory.engine.spans import SpanAggregation, bio_spans

__all__ = ["REASONS", "MODEL_PREFIX", "VERIFIED_PREFIXES", "SpanCalibration", "answer_span_sets", "calibrated_spans",
           "expected_span_errors", "fit_span_calibration", "raw_sentence_confidence", "route_sentences"]

REASONS = ("low_confidence", "disagreement", "boundary", "missed_entity", "no_support")
MODEL_PREFIX = "model:"  # model labelers are workers whose id starts with this


VERIFIED_PREFIXES = ("gold:", "expert:")  # answers from these worker ids are verified (the sentence's true span set)
MIN_VERIFIED = 30  # verified sentences needed before the calibration rests on them instead of held-out people
CAL_BINS = 10  # quantile bins of the span moment estimate


@dataclass(frozen=True)
class SpanCalibration:
    """Maps from the fusion's raw probabilities to calibrated ones: ``sentence`` for the probability that
    a sentence's fused span set is exactly right, ``span`` for a fused span's posterior.

    ``source``: ``"verified"`` (fitted against verified answers, see ``VERIFIED_PREFIXES``),
    ``"held_out"`` (fitted against people's answers held out of the fit) or ``"none"`` (identity)."""

    sentence: Calibrator
    span: Calibrator
    source: str = "none"
    n_sentences: int = 0
    n_spans: int = 0


IDENTITY = SpanCalibration(Calibrator("identity"), Calibrator("identity"))


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


def expected_span_errors(agg: SpanAggregation, calibration: SpanCalibration | Calibrator | None = None) -> pd.Series:
    """Per sentence: expected wrong fused spans (``sum(1 - q)``, ``q`` calibrated by ``calibration.span``
    when a :class:`SpanCalibration` is given) plus expected missed entities (``B-`` mass outside the spans)."""
    tags = agg.tags
    sid = tags["sentence_id"].astype(str).to_numpy()
    b_cols = [c for c in tags.columns if str(c).startswith("prob_B-")]
    outside = (tags["tag"] == "O").to_numpy()
    missed = pd.Series(np.where(outside, tags[b_cols].to_numpy(float).sum(axis=1), 0.0)).groupby(sid).sum()
    q = agg.spans["probability"].to_numpy(float)
    if isinstance(calibration, SpanCalibration):
        q = np.clip(calibration.span.apply(q), 0.0, 1.0)
    wrong = pd.Series(1.0 - q).groupby(agg.spans["sentence_id"].astype(str).to_numpy()).sum()
    return missed.add(wrong, fill_value=0.0).rename("expected_errors")


def _fused_sets(agg: SpanAggregation, index: pd.Index) -> pd.Series:
    sp = agg.spans
    sets = pd.Series(
        [frozenset(zip(g["start"].astype(int), g["end"].astype(int), g["type"].astype(str)))
         for _, g in sp.groupby(sp["sentence_id"].astype(str), sort=True)],
        index=sorted(sp["sentence_id"].astype(str).unique()), dtype=object)
    return sets.reindex(index).map(lambda s: s if isinstance(s, frozenset) else frozenset())


def route_sentences(agg: SpanAggregation, *, answers: pd.DataFrame | None = None, target: float = 0.95,
                    budget: int | None = None, calibration: SpanCalibration | Calibrator | None = None,
                    max_answers: int | pd.Series | None = None) -> pd.DataFrame:
    """Route every sentence of ``agg``: accept (``reason == ""``) or send to a person, with a priority.

    ``answers``: the BIO answers ``agg`` was fitted on (``sentence_id, worker_id, token_index, tag``;
    ids starting with ``"model:"`` are model labelers).  ``calibration`` maps the raw sentence
    confidence to a probability (identity when None: the model's own, overconfident, value).
    ``max_answers``: the most
    human answers a sentence may get (global, or a Series by sentence_id, e.g. what a replay file holds);
    a routed sentence at its cap keeps its reason but is not asked (an expert's, or nobody's).  Columns:
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
        sentence_map = calibration.sentence if isinstance(calibration, SpanCalibration) else calibration
        confidence = np.clip(sentence_map.apply(confidence), 0.0, 1.0)
    fused = _fused_sets(agg, idx)

    no_support = np.zeros(n, dtype=bool)
    disagreement = np.zeros(n, dtype=bool)
    boundary_conflict = np.zeros(n, dtype=bool)
    n_human = np.zeros(n, dtype=int)
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
        if len(hs):
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

    priority = expected_span_errors(agg, calibration).reindex(idx).to_numpy(float) / (n_human + 1.0)
    routed = reason != ""
    if max_answers is not None:
        cap = (max_answers.reindex(idx).fillna(0).to_numpy(int) if isinstance(max_answers, pd.Series)
               else np.full(n, int(max_answers)))
        routed = routed & (n_human < cap)
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


def calibrated_spans(agg: SpanAggregation, calibration: SpanCalibration) -> pd.DataFrame:
    """``agg.spans`` with ``raw_probability`` (the fusion's) and ``probability`` mapped by ``calibration.span``."""
    sp = agg.spans.copy()
    sp["raw_probability"] = sp["probability"].astype(float)
    sp["probability"] = np.clip(calibration.span.apply(sp["raw_probability"].to_numpy(float)), 0.0, 1.0)
    return sp


def _is_verified(worker_ids: pd.Series) -> np.ndarray:
    w = worker_ids.astype(str)
    return np.logical_or.reduce([w.str.startswith(p).to_numpy() for p in VERIFIED_PREFIXES])


def _span_hits(spans: pd.DataFrame, sets: pd.Series) -> np.ndarray:
    """Per span row: is ``(start, end, type)`` in ``sets[sentence_id]`` (a frozenset per sentence)."""
    return np.array([(int(a), int(b), str(t)) in sets[s]
                     for s, a, b, t in zip(spans["sentence_id"].astype(str), spans["start"], spans["end"], spans["type"])],
                    dtype=bool)


def _moment_span_map(prob: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> Calibrator:
    """Span posterior -> probability the span is true, from two people's answers held out of the fit.

    In each quantile bin of the raw posterior, a true span is given by a held-out person with their
    recall ``r`` and a false one (almost) never, so ``P(one gives it) = A r`` and ``P(both give it) =
    A r^2``, hence ``A = P(one)^2 / P(both)``.  Wrong spans that people also give (systematic errors)
    make this an over-estimate; it is still far nearer the truth than the fusion's own posterior (see
    benchmarks/span_replay.py for ECE).  Bin estimates are made monotone by isotonic regression
    (scikit-learn) and interpolated."""
    from sklearn.isotonic import IsotonicRegression

    edges = np.unique(np.quantile(prob, np.linspace(0.0, 1.0, CAL_BINS + 1)))
    b = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ws = [], [], []
    for k in np.unique(b):
        m = b == k
        one = (h1[m].mean() + h2[m].mean()) / 2.0
        both = (h1[m] & h2[m]).mean()
        xs.append(float(prob[m].mean()))
        ys.append(float(min(1.0, one * one / both)) if both > 0 else float(one))
        ws.append(int(m.sum()))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(xs, ys, sample_weight=ws)
    x = np.concatenate([[0.0], xs, [1.0]])
    return Calibrator("isotonic", {"x": list(x), "y": list(np.clip(iso.predict(x), 0.0, 1.0))}, int(sum(ws)))


def fit_span_calibration(answers: pd.DataFrame, fit: Callable[[pd.DataFrame], SpanAggregation], *,
                         seed: int = 0, min_verified: int = MIN_VERIFIED) -> SpanCalibration:
    """Calibrate sentence confidences and span posteriors without truth, cross-fitted.

    ``fit`` is the fusion (e.g. ``lambda a: aggregate_spans(a, tokens=tokens)``).  Answers from workers
    whose id starts with one of ``VERIFIED_PREFIXES`` are verified: with at least ``min_verified``
    verified sentences, the fusion is refitted without them and both maps are fitted against them
    (sentence: fused set == verified set; span: span in the verified set) with
    :func:`factory.engine.calibration.fit_calibrator`.  Otherwise people's answers stand in: in every
    sentence with at least three people (two with two) one or two of their answers, drawn at random, are
    held out, the fusion is refitted on the rest, and

    - the sentence map is fitted against "the held-out person gave exactly the fused set".  That
      charges every disagreement to the fusion (people are taken as never wrong), so it is a
      conservative probability: the one to route on while nothing is verified;
    - the span map is the moment estimate of :func:`_moment_span_map` (needs two held-out answers).

    Returns :data:`IDENTITY` when there is nothing to fit on.
    """
    if not len(answers):
        return IDENTITY
    rng = np.random.default_rng(seed)
    sets = answer_span_sets(answers)
    verified = _is_verified(sets["worker_id"])
    if len(set(sets.loc[verified, "sentence_id"])) >= int(min_verified):
        truth = sets[verified].drop_duplicates("sentence_id").set_index("sentence_id")["spans"]
        agg = fit(answers[~_is_verified(answers["worker_id"])])
        conf = raw_sentence_confidence(agg)
        ids = conf.index.intersection(truth.index)
        fused = _fused_sets(agg, ids)
        right = np.array([fused[s] == truth[s] for s in ids], dtype=float)
        sp = agg.spans[agg.spans["sentence_id"].astype(str).isin(ids)]
        return SpanCalibration(fit_calibrator(conf.loc[ids, "raw"].to_numpy(float), right),
                               fit_calibrator(sp["probability"].to_numpy(float), _span_hits(sp, truth).astype(float)),
                               "verified", len(ids), len(sp))
    people = sets[~verified & ~sets["worker_id"].str.startswith(MODEL_PREFIX)].copy()
    people["draw"] = rng.random(len(people))
    people["rank"] = people.groupby("sentence_id")["draw"].rank(method="first").astype(int)
    n_people = people.groupby("sentence_id")["worker_id"].transform("size")
    held = people[(people["rank"] <= np.where(n_people >= 3, 2, 1)) & (n_people >= 2)]
    if held.empty:
        return IDENTITY
    key = pd.MultiIndex.from_frame(held[["sentence_id", "worker_id"]])
    rows = pd.MultiIndex.from_arrays([answers["sentence_id"].astype(str), answers["worker_id"].astype(str)])
    agg = fit(answers[~rows.isin(key)])
    conf = raw_sentence_confidence(agg)
    held = held[held["sentence_id"].isin(conf.index)]
    fused = _fused_sets(agg, pd.Index(held["sentence_id"].unique()))
    agree = np.array([s == fused[i] for i, s in zip(held["sentence_id"], held["spans"])], dtype=float)
    sentence_map = fit_calibrator(conf.loc[held["sentence_id"], "raw"].to_numpy(float), agree)
    h1 = held[held["rank"] == 1].set_index("sentence_id")["spans"]
    h2 = held[held["rank"] == 2].set_index("sentence_id")["spans"]
    sp = agg.spans[agg.spans["sentence_id"].astype(str).isin(h2.index)]
    if len(sp) >= CAL_BINS:
        span_map = _moment_span_map(sp["probability"].to_numpy(float), _span_hits(sp, h1), _span_hits(sp, h2))
    else:
        span_map = Calibrator("identity")
    return SpanCalibration(sentence_map, span_map, "held_out", int(held["sentence_id"].nunique()), len(sp))
