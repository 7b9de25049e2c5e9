"""factory.engine.span_routing.route_sentences: each routing reason, the priority order and the budget.

Most tests build a SpanAggregation by hand (token marginals and span posteriors stated in the test),
so each reason is triggered by exactly the condition it names; one test runs the real fusion.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory.engine.span_routing import (
    SpanCalibration,
    fit_span_calibration,
    calibrated_spans,
    answer_span_sets,
    raw_sentence_confidence,
    route_sentences,
)
from factory.engine.calibration import Calibrator
from factory.engine.spans import SpanAggregation, aggregate_spans

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _agg(sentences: dict) -> SpanAggregation:
    """sentences: {sid: (tags, prob_O per token, [(start, end, type, posterior), ...])}.

    A token's output tag gets probability 1 - prob_O if it is in a span, else prob_O; the rest of
    the mass goes to B-LOC (any other tag would do)."""
    rows, spans = [], []
    for sid, (tags, p_o, sp) in sentences.items():
        for i, (t, po) in enumerate(zip(tags, p_o)):
            probs = dict.fromkeys(TAGS, 0.0)
            probs["O"] = po
            if t == "O":
                probs["B-LOC"] += 1.0 - po
            else:
                probs[t] += 1.0 - po
            rows.append({"sentence_id": sid, "token_index": i, "tag": t, "probability": probs[t],
                         **{f"prob_{k}": v for k, v in probs.items()}})
        for s, e, ty, p in sp:
            spans.append({"sentence_id": sid, "start": s, "end": e, "type": ty, "probability": p})
    spans_df = pd.DataFrame(spans, columns=["sentence_id", "start", "end", "type", "probability"])
    return SpanAggregation(tags=pd.DataFrame(rows), spans=spans_df, workers=pd.DataFrame(), tag_names=TAGS,
                           transitions=pd.DataFrame(), iterations=1, converged=True, log_likelihood=0.0)


def _answers(rows: dict) -> pd.DataFrame:
    """rows: {(sid, worker): tags}."""
    return pd.DataFrame([{"sentence_id": sid, "worker_id": w, "token_index": i, "tag": t}
                         for (sid, w), tags in rows.items() for i, t in enumerate(tags)])


SURE = [0.001, 0.001, 0.999, 0.999]  # prob_O of a "PER PER O O" sentence's tokens: sure of every token


def _one(agg, answers, **kw) -> pd.Series:
    out = route_sentences(agg, answers=answers, **kw)
    assert len(out) == 1
    return out.iloc[0]


def test_columns_and_raw_confidence_is_the_product_of_spans_and_outside_tokens():
    agg = _agg({"s1": (["B-PER", "I-PER", "O", "O"], [0.0, 0.0, 0.9, 0.8], [(0, 1, "PER", 0.5)]),
                "s2": (["O", "O"], [0.99, 0.98], [])})
    out = route_sentences(agg)
    assert list(out.columns[:4]) == ["sentence_id", "confidence", "reason", "priority"]
    assert list(out["sentence_id"]) == ["s1", "s2"]
    assert out["confidence"].tolist() == pytest.approx([0.5 * 0.9 * 0.8, 0.99 * 0.98])
    raw = raw_sentence_confidence(agg)
    assert raw.loc["s1", "weakest_span"] == pytest.approx(0.5)
    assert raw.loc["s2", "weakest_span"] == 1.0


def test_sure_sentence_that_people_agree_on_is_accepted():
    agg = _agg({"s1": (["B-PER", "I-PER", "O", "O"], SURE, [(0, 1, "PER", 0.998)])})
    ans = _answers({("s1", "w1"): ["B-PER", "I-PER", "O", "O"], ("s1", "w2"): ["B-PER", "I-PER", "O", "O"]})
    r = _one(agg, ans)
    assert r["reason"] == ""
    assert r["n_human"] == 2


def test_no_support_a_fused_span_nobody_gave():
    # the fusion joined two one-token answers into one span nobody gave
    agg = _agg({"s1": (["B-PER", "I-PER", "O", "O"], SURE, [(0, 1, "PER", 0.998)])})
    ans = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "model:crf"): ["O", "B-PER", "O", "O"]})
    assert _one(agg, ans)["reason"] == "no_support"


def test_a_model_answer_is_support_but_not_a_person():
    agg = _agg({"s1": (["B-PER", "I-PER", "O", "O"], SURE, [(0, 1, "PER", 0.998)])})
    ans = _answers({("s1", "model:crf"): ["B-PER", "I-PER", "O", "O"]})
    r = _one(agg, ans)
    assert r["reason"] == ""
    assert r["n_human"] == 0


def test_disagreement_people_majority_overruled():
    agg = _agg({"s1": (["O", "O", "O", "O"], [0.999] * 4, [])})
    ans = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "w2"): ["B-PER", "O", "O", "O"],
                    ("s1", "w3"): ["O", "O", "O", "O"]})
    assert _one(agg, ans)["reason"] == "disagreement"
    # no strict majority: two people, two different sets, the fused one among them -> accepted
    ans2 = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "w3"): ["O", "O", "O", "O"]})
    assert _one(agg, ans2)["reason"] == ""


def test_boundary_weakest_span_with_an_overlapping_answer_of_other_boundaries():
    agg = _agg({"s1": (["B-PER", "O", "O", "O"], [0.001, 0.999, 0.999, 0.999], [(0, 0, "PER", 0.6)])})
    ans = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "w2"): ["B-PER", "I-PER", "O", "O"]})
    assert _one(agg, ans)["reason"] == "boundary"
    # the same doubt without a boundary conflict is low_confidence
    ans2 = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "w2"): ["O", "O", "O", "O"]})
    assert _one(agg, ans2)["reason"] == "low_confidence"


def test_missed_entity_when_entity_mass_outside_the_spans_dominates():
    agg = _agg({"s1": (["B-PER", "O", "O", "O"], [0.001, 0.999, 0.6, 0.999], [(0, 0, "PER", 0.99)])})
    ans = _answers({("s1", "w1"): ["B-PER", "O", "O", "O"], ("s1", "w2"): ["B-PER", "O", "O", "O"]})
    assert _one(agg, ans)["reason"] == "missed_entity"


def test_low_confidence_without_answers():
    agg = _agg({"s1": (["B-PER", "O", "O", "O"], [0.001, 0.999, 0.999, 0.999], [(0, 0, "PER", 0.7)])})
    r = _one(agg, None)
    assert r["reason"] == "low_confidence"
    assert r["n_human"] == 0
    assert _one(agg, None, target=0.6)["reason"] == ""


def test_calibration_is_applied_before_the_target():
    agg = _agg({"s1": (["B-PER", "I-PER", "O", "O"], SURE, [(0, 1, "PER", 0.998)])})
    halve = Calibrator("isotonic", {"x": [0.0, 1.0], "y": [0.0, 0.5]})
    r = _one(agg, None, calibration=halve)
    assert r["confidence"] == pytest.approx(0.5 * 0.998 * 0.999 * 0.999, rel=1e-6)
    assert r["reason"] == "low_confidence"


def test_priority_orders_the_asks_and_budget_keeps_reasons():
    sents = {f"s{i}": (["B-PER", "O"], [0.0, 1.0], [(0, 0, "PER", p)]) for i, p in enumerate([0.9, 0.5, 0.7, 0.99])}
    out = route_sentences(_agg(sents), target=0.95, budget=2).set_index("sentence_id")
    assert list(out["reason"]) == ["low_confidence", "low_confidence", "low_confidence", ""]
    # the least sure sentences have the largest expected gain and are asked first
    assert out.loc["s1", "priority"] > out.loc["s2", "priority"] > out.loc["s0", "priority"]
    assert out["ask"].tolist() == [False, True, True, False]
    assert route_sentences(_agg(sents), budget=0)["ask"].sum() == 0
    assert route_sentences(_agg(sents))["ask"].sum() == 3


def test_bad_input_is_named():
    agg = _agg({"s1": (["O"], [1.0], [])})
    with pytest.raises(ValueError, match="target"):
        route_sentences(agg, target=0.0)
    with pytest.raises(ValueError, match="budget"):
        route_sentences(agg, budget=-1)
    with pytest.raises(ValueError, match="token_index"):
        route_sentences(agg, answers=pd.DataFrame({"sentence_id": ["s1"], "worker_id": ["w"], "tag": ["O"]}))


def test_answer_span_sets_reads_conlleval_spans():
    sets = answer_span_sets(_answers({("s1", "w1"): ["I-PER", "I-PER", "O", "B-LOC"]}))
    assert sets.loc[0, "spans"] == frozenset({(0, 1, "PER"), (3, 3, "LOC")})


def test_on_the_real_fusion():
    rng = np.random.default_rng(0)
    truth = {f"s{i:03d}": (["B-PER", "I-PER", "O", "O", "B-LOC", "O"] if i % 2 else ["O"] * 6) for i in range(40)}
    rows = {}
    for sid, tags in truth.items():
        for w in range(3):
            noisy = [t if rng.random() > 0.1 else "O" for t in tags]
            rows[(sid, f"w{w}")] = noisy
    ans = _answers(rows)
    agg = aggregate_spans(ans)
    out = route_sentences(agg, answers=ans)
    assert len(out) == 40 and out["sentence_id"].is_unique
    assert out["confidence"].between(0, 1).all()
    assert set(out["reason"]) <= {"", "low_confidence", "disagreement", "boundary", "missed_entity", "no_support"}
    assert (out["priority"] >= 0).all()


def _noisy_crowd(seed: int, n: int = 120, people: int = 4, flip: float = 0.15, gold_every: int = 0) -> pd.DataFrame:
    """Sentences alternating 'PER PER O O LOC O' and all-O; each person drops or adds a tag with prob `flip`
    per token; every `gold_every`-th sentence also has a 'gold:' answer (the true tags)."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(n):
        sid = f"s{i:03d}"
        tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"] if i % 2 else ["O"] * 6
        for w in range(people):
            rows[(sid, f"w{w}")] = [("B-LOC" if t == "O" else "O") if rng.random() < flip else t for t in tags]
        if gold_every and i % gold_every == 0:
            rows[(sid, "gold:g1")] = list(tags)
    return _answers(rows)


def test_calibration_from_held_out_people_lowers_overconfident_sentences():
    ans = _noisy_crowd(1)
    cal = fit_span_calibration(ans, aggregate_spans)
    assert cal.source == "held_out"
    assert cal.n_sentences == 120 and cal.n_spans > 0
    agg = aggregate_spans(ans)
    raw = raw_sentence_confidence(agg)["raw"].to_numpy()
    # people are wrong on ~half of their 6-token answers (1 - 0.85^6): "a held-out person gives the fused
    # set" is far below the fusion's own near-1 confidence
    assert cal.sentence.apply(raw).mean() < raw.mean() - 0.2
    out = route_sentences(agg, answers=ans, calibration=cal)
    assert out["confidence"].to_numpy() == pytest.approx(np.clip(cal.sentence.apply(raw), 0, 1))
    sp = calibrated_spans(agg, cal)
    assert (sp["raw_probability"] == agg.spans["probability"]).all()
    assert sp["probability"].between(0, 1).all()


def test_calibration_rests_on_verified_answers_when_there_are_enough():
    ans = _noisy_crowd(2, n=200, gold_every=2)
    cal = fit_span_calibration(ans, aggregate_spans)
    assert cal.source == "verified" and cal.n_sentences == 100
    few = fit_span_calibration(ans, aggregate_spans, min_verified=101)
    assert few.source == "held_out"


def test_calibration_of_nothing_is_the_identity():
    cal = fit_span_calibration(_answers({("s1", "w1"): ["B-PER", "O"]}), aggregate_spans)
    assert cal.source == "none"
    assert cal.sentence.apply(np.array([0.3]))[0] == pytest.approx(0.3)


def test_a_sentence_at_its_answer_cap_keeps_its_reason_but_is_not_asked():
    sents = {"s0": (["B-PER", "O"], [0.0, 1.0], [(0, 0, "PER", 0.5)]),
             "s1": (["B-PER", "O"], [0.0, 1.0], [(0, 0, "PER", 0.6)])}
    ans = _answers({("s0", "w1"): ["B-PER", "O"], ("s0", "w2"): ["O", "O"], ("s1", "w1"): ["B-PER", "O"]})
    out = route_sentences(_agg(sents), answers=ans, max_answers=2).set_index("sentence_id")
    assert list(out["reason"]) == ["low_confidence", "low_confidence"]
    assert out["ask"].tolist() == [False, True]
    per = pd.Series({"s0": 3, "s1": 1})
    assert route_sentences(_agg(sents), answers=ans, max_answers=per)["ask"].tolist() == [True, False]


def test_priority_is_expected_span_errors_shared_among_the_people_who_answered():
    # s0 and s1: the same doubtful span; s1 already has three people, s0 one -> s0 first
    # s2: a sure span but 0.4 of an entity start on a token outside it (missed mass counts)
    sents = {"s0": (["B-PER", "O"], [0.0, 1.0], [(0, 0, "PER", 0.6)]),
             "s1": (["B-PER", "O"], [0.0, 1.0], [(0, 0, "PER", 0.6)]),
             "s2": (["B-PER", "O"], [0.0, 0.6], [(0, 0, "PER", 1.0)])}
    ans = _answers({("s0", "w1"): ["B-PER", "O"], ("s1", "w1"): ["B-PER", "O"], ("s1", "w2"): ["B-PER", "O"],
                    ("s1", "w3"): ["B-PER", "O"], ("s2", "w1"): ["B-PER", "O"]})
    out = route_sentences(_agg(sents), answers=ans).set_index("sentence_id")
    assert out.loc["s0", "priority"] == pytest.approx(0.4 / 2)
    assert out.loc["s1", "priority"] == pytest.approx(0.4 / 4)
    assert out.loc["s2", "priority"] == pytest.approx(0.4 / 2)  # the B-LOC mass _agg puts outside the span
    # calibrated span posteriors enter the expected errors
    cal = SpanCalibration(Calibrator("identity"), Calibrator("isotonic", {"x": [0.0, 1.0], "y": [0.0, 0.5]}))
    out_cal = route_sentences(_agg(sents), answers=ans, calibration=cal).set_index("sentence_id")
    assert out_cal.loc["s0", "priority"] == pytest.approx((1 - 0.3) / 2)
