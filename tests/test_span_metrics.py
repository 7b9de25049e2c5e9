"""Span-level precision/recall/F1 (strict and relaxed) with intervals, and the standard's span checks."""
import numpy as np
import pandas as pd
import pytest

from factory.engine.span_metrics import span_prf, span_quality


def _to_iob2(spans, n):
    tags = ["O"] * n
    for s, e, t in spans:
        tags[s:e] = [f"B-{t}"] + [f"I-{t}"] * (e - s - 1)
    return tags


def _random_spans(rng, n):
    out, i = [], 0
    while i < n:
        if rng.random() < 0.3:
            e = min(n, i + int(rng.integers(1, 4)))
            out.append((i, e, str(rng.choice(["PER", "ORG", "LOC"]))))
            i = e
        else:
            i += 1
    return out


def test_strict_scores_are_seqevals():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 15, size=200)
    gold = [_random_spans(rng, n) for n in lengths]
    pred = [g if rng.random() < 0.5 else _random_spans(rng, n) for g, n in zip(gold, lengths)]
    got = span_prf(gold, pred, "strict", n_boot=200)
    yt = [_to_iob2(g, n) for g, n in zip(gold, lengths)]
    yp = [_to_iob2(p, n) for p, n in zip(pred, lengths)]
    assert got["f1"] == pytest.approx(seqeval.f1_score(yt, yp))
    assert got["precision"] == pytest.approx(seqeval.precision_score(yt, yp))
    assert got["recall"] == pytest.approx(seqeval.recall_score(yt, yp))
    lo, hi = got["f1_interval"]
    assert lo < got["f1"] < hi


def test_relaxed_counts_an_overlap_of_the_same_type_once():
    gold = [[(0, 2, "PER"), (5, 6, "LOC")], [(1, 3, "ORG")]]
    pred = [[(1, 2, "PER"), (5, 6, "ORG")], [(0, 2, "ORG"), (2, 4, "ORG")]]
    strict = span_prf(gold, pred, "strict", n_boot=50)
    assert (strict["tp"], strict["n_pred"], strict["n_gold"]) == (0, 4, 3)
    relaxed = span_prf(gold, pred, "relaxed", n_boot=50)
    # PER overlaps PER; ORG over LOC: wrong type; both ORG predictions overlap the ORG reference, found once
    assert (relaxed["tp"], relaxed["found"]) == (3, 2)
    assert relaxed["precision"] == 0.75 and relaxed["recall"] == pytest.approx(2 / 3)
    both = span_quality([[]], [[]], n_boot=10)  # nothing to find and nothing found
    assert both["strict"]["f1"] == 1.0 and both["relaxed"]["f1"] == 1.0
    with pytest.raises(ValueError, match="2 reference sentences but 1"):
        span_prf(gold, pred[:1])


def test_the_standards_span_checks_fail_on_bad_spans():
    from checks.standards import expectations, typed_expectations, validate
    from factory import tasks

    tt = tasks.get("spans")
    decl = typed_expectations(expectations("final_labels", "factory-default-1.2.0"), tt, ["PER", "LOC"])
    assert [e for e in decl if e["name"] == "label_in_schema"][0]["type"] == "expect_column_values_to_match_regex"
    good = pd.DataFrame({"item_id": ["i1", "i2"], "label": ['[[0,2,"PER"],[3,4,"LOC"]]', "[]"]})
    labels_only = [e for e in decl if e["kwargs"].get("column") == "label"]
    assert validate(good, "final_labels", declared=labels_only).success
    bad = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "label": ['[[0,2,"DATE"]]', "[[0,2,PER]]", "[]"]})
    res = validate(bad, "final_labels", declared=labels_only)
    failed = [o for o in res.outcomes if not o.success]
    assert failed and res.blocking_failures
    assert [o.name for o in failed] == ["label_in_schema"]
    assert sorted(failed[0].unexpected_items) == ["i1", "i2"]  # the unknown type and the malformed JSON, by item
