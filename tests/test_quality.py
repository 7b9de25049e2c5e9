"""Quality measures against hand-computed cases, and against statsmodels / krippendorff where installed."""
import math

import numpy as np
import pandas as pd
import pytest

from factory import quality as Q
from factory.spec import QualitySpec

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: alpha = 0.743
KRIPP = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])
# Fleiss (1971) as in most textbooks: 10 subjects, 14 raters, 5 categories, kappa = 0.210
FLEISS = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                   [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])


def test_wilson_and_clopper_pearson_match_hand_values():
    lo, hi = Q.wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = Q.clopper_pearson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4439, 0.9748)
    assert Q.clopper_pearson_interval(0, 10)[0] == 0.0 and Q.clopper_pearson_interval(10, 10)[1] == 1.0
    # one-sided exact upper bound with 0 events: 1 - alpha^(1/n)
    assert Q.clopper_pearson_upper(0, 50, 0.05) == pytest.approx(1 - 0.05 ** (1 / 50))
    assert math.isnan(Q.wilson_interval(0, 0)[0])
    p = Q.proportion(8, 10)
    assert p["estimate"] == 0.8 and p["wilson"][0] < 0.8 < p["wilson"][1]


def test_intervals_agree_with_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in [(0, 7), (3, 7), (45, 50), (199, 200)]:
        assert Q.wilson_interval(k, n) == pytest.approx(sm.proportion_confint(k, n, method="wilson"), abs=1e-9)
        assert Q.clopper_pearson_interval(k, n) == pytest.approx(sm.proportion_confint(k, n, method="beta"), abs=1e-9)


def test_cohen_kappa_hand_case_and_sklearn():
    assert Q.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)  # po .75, pe .5
    assert Q.cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert math.isnan(Q.cohen_kappa(["a", "a"], ["a", "a"]))  # chance agreement 1: undefined
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    b[:200] = a[:200]
    assert Q.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_fleiss_kappa_textbook_value():
    assert Q.fleiss_kappa(FLEISS) == pytest.approx(0.2099, abs=1e-4)
    with pytest.raises(ValueError, match="same number"):
        Q.fleiss_kappa([[1, 1], [3, 0]])
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    assert Q.fleiss_kappa(FLEISS) == pytest.approx(sm.fleiss_kappa(FLEISS))


def test_krippendorff_alpha_textbook_value_wide_and_long():
    assert Q.krippendorff_alpha_nominal(KRIPP) == pytest.approx(0.743, abs=5e-4)
    long = [(u, r, KRIPP[r, u]) for r in range(4) for u in range(12) if not np.isnan(KRIPP[r, u])]
    df = pd.DataFrame(long, columns=["item_id", "rater", "label"])
    assert Q.krippendorff_alpha_nominal(df) == pytest.approx(0.743, abs=5e-4)
    assert math.isnan(Q.krippendorff_alpha_nominal(KRIPP[:1]))  # one coder: nothing pairable
    assert math.isnan(Q.krippendorff_alpha_nominal(np.ones((3, 5))))  # one value only: undefined, not an error


def test_krippendorff_alpha_against_the_package():
    """The product passes counts to the package: same value as the package on the raw raters x units array."""
    import krippendorff as kd

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 200)
    data = np.where(rng.random((5, 200)) < 0.8, truth, rng.integers(0, 3, (5, 200))).astype(float)
    data[rng.random((5, 200)) < 0.3] = np.nan
    assert Q.krippendorff_alpha_nominal(data) == pytest.approx(
        kd.alpha(reliability_data=data, level_of_measurement="nominal"), abs=1e-9)


def test_per_class_accuracy_confusion_and_completeness():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "a", "c"]
    pc = Q.per_class_accuracy(truth, pred, ["a", "b", "c"])
    assert (pc["a"]["k"], pc["a"]["n"]) == (2, 3) and (pc["b"]["k"], pc["b"]["n"]) == (1, 2)
    assert pc["c"]["estimate"] == 1.0
    m = Q.confusion(truth, pred, ["a", "b", "c"])
    assert m.loc["a", "b"] == 1 and m.loc["b", "a"] == 1 and int(np.trace(m.to_numpy())) == 4
    assert Q.completeness(9, 10)["estimate"] == 0.9


def test_distribution_vs_prior_tv_and_chi_square():
    labels = ["a"] * 60 + ["b"] * 40
    d = Q.distribution_vs_prior(labels, {"a": 0.5, "b": 0.5})
    assert d["tv_distance"] == pytest.approx(0.1)
    assert d["chi2"] == pytest.approx(4.0)  # (60-50)^2/50 + (40-50)^2/50
    assert d["p_value"] == pytest.approx(0.0455, abs=1e-3)
    assert Q.distribution_vs_prior(labels, None)["tv_distance"] is None


def test_pii_scan_finds_emails_and_phones():
    r = Q.pii_scan(["write to jane.doe@example.com", "call +44 20 7946 0958", "nothing here, 2024 results"],
                   ["i1", "i2", "i3"])
    assert r["hits"]["email"]["example_items"] == ["i1"]
    assert r["hits"]["phone"]["example_items"] == ["i2"]
    assert r["items_flagged"] == 2


def _final():
    # 10 audited items: the machine label was right on 8; 5 reviewed; 5 auto
    rows = []
    for i in range(10):
        rows.append(dict(item_id=f"a{i}", label="x", fused_label="x" if i < 8 else "y", route="audit",
                         source="calibrated"))
    for i in range(5):
        rows.append(dict(item_id=f"r{i}", label="y", fused_label="x", route="review", source="calibrated"))
    for i in range(5):
        rows.append(dict(item_id=f"u{i}", label="x", fused_label="x", route="auto", source="auto"))
    return pd.DataFrame(rows)


def test_measure_and_gates():
    final = _final()
    human = pd.DataFrame({"item_id": final.loc[final.route != "auto", "item_id"], "annotator": "ann-1",
                          "label": final.loc[final.route != "auto", "label"]})
    models = pd.concat([pd.DataFrame({"item_id": final["item_id"], "labeler": n, "label": final["fused_label"]})
                        for n in ("m1", "m2")])
    rep = Q.measure(final, ["x", "y"], human=human, models=models, prior={"x": 0.5, "y": 0.5})
    assert rep["audit"]["accuracy"]["estimate"] == 0.8 and rep["audit"]["accuracy"]["n"] == 10
    assert rep["source_shares"]["auto"]["share"] == 0.25
    assert rep["agreement"]["labelers"]["fleiss_kappa"] == 1.0  # two identical labelers
    assert rep["per_annotator"]["ann-1"]["agree_with_final"]["estimate"] == 1.0

    q = QualitySpec(min_accuracy=0.9, blocking=("audit_accuracy",), max_prior_distance=0.5)
    gates = {g["name"]: g for g in Q.evaluate_gates(rep, q)}
    assert gates["audit_accuracy"]["passed"] is False and gates["audit_accuracy"]["blocking"] is True
    assert gates["prior_tv_distance"]["passed"] is True and not gates["prior_tv_distance"]["blocking"]
    q2 = QualitySpec(min_accuracy=0.5, accuracy_gate="lower_bound", interval="clopper-pearson")
    g2 = {g["name"]: g for g in Q.evaluate_gates(rep, q2)}
    assert g2["audit_accuracy"]["value"] == pytest.approx(0.4439, abs=1e-4) and g2["audit_accuracy"]["passed"] is False
    # no audit sample while labels were accepted without a person: a refusal, never "no evidence, pass"
    rep_no = Q.measure(final[final.route == "auto"], ["x", "y"])
    g3 = {g["name"]: g for g in Q.evaluate_gates(rep_no, q)}
    assert g3["audit_accuracy"]["passed"] is False and g3["audit_accuracy"]["blocking"] is True
    assert "audit too small to certify" in g3["audit_accuracy"]["reason"]
    # nobody's label was accepted without a person: nothing for the audit to certify, the gate does not apply
    rep_people = Q.measure(final[final.route == "review"], ["x", "y"])
    g4 = {g["name"]: g for g in Q.evaluate_gates(rep_people, q)}
    assert g4["audit_accuracy"]["passed"] is None and g4["audit_accuracy"]["blocking"] is False
    assert "nothing for the audit to certify" in g4["audit_accuracy"]["reason"]


def test_quality_spec_rejects_unknown_gates_and_standards():
    from factory.errors import SpecError
    from factory.spec import parse_spec
    from conftest import news_spec

    with pytest.raises(SpecError, match="quality.blocking"):
        parse_spec(news_spec(quality={"blocking": ["vibes"]}))
    with pytest.raises(SpecError, match="unknown quality standard 'nope'"):
        parse_spec(news_spec(quality={"standard": "nope"}))
    from checks.standards import DEFAULT_STANDARD

    s = parse_spec(news_spec())
    assert s.quality.standard == DEFAULT_STANDARD and s.delivery.tokenizer == "whitespace-cjk"
    assert (s.quality.auto_accept.epsilon, s.quality.auto_accept.delta) == (0.05, 0.1)
    # defaults stay out of the dump, so adding these fields changed no existing spec's version
    dump = s.model_dump(mode="json", by_alias=True)
    assert "delivery" not in dump and not {"standard", "auto_accept", "blocking", "gold"} & set(dump["quality"])
    tuned = parse_spec(news_spec(quality={"min_kappa": 0.6}))
    assert tuned.version != s.version and tuned.model_dump(mode="json")["quality"]["min_kappa"] == 0.6


def _audited(k: int, n: int, n_auto: int = 100) -> pd.DataFrame:
    """n audited items of which the machine label was right on k, plus n_auto auto-accepted items."""
    rows = [dict(item_id=f"a{i}", label="x", fused_label="x" if i < k else "y", route="audit", source="calibrated",
                 fused_confidence=0.95) for i in range(n)]
    rows += [dict(item_id=f"u{i}", label="x", fused_label="x", route="auto", source="auto", fused_confidence=0.97)
             for i in range(n_auto)]
    return pd.DataFrame(rows)


def _gate(k: int, n: int, **spec) -> dict:
    rep = Q.measure(_audited(k, n), ["x", "y"])
    return {g["name"]: g for g in Q.evaluate_gates(rep, QualitySpec(**spec))}["audit_accuracy"]


def test_accuracy_gate_blocks_on_the_lower_bound_by_default():
    # the measured failure: 9 of 10 audited right was certified PASS; Wilson [0.596, 0.982] cannot certify 0.9
    g = _gate(9, 10, min_accuracy=0.9)
    assert g["passed"] is False and g["blocking"] is True and g["value"] == pytest.approx(0.59585, abs=1e-4)
    assert "audit too small to certify" in g["reason"] and "at least 35" in g["reason"]
    # big enough to certify, but not accurate enough: refused on the bound, not for size
    g = _gate(45, 50, min_accuracy=0.9)
    assert g["passed"] is False and g["blocking"] and "too small" not in g["reason"] and "< 0.9" in g["reason"]
    # big and accurate enough: passes, and the value is the bound, not the estimate
    g = _gate(60, 60, min_accuracy=0.9)
    assert g["passed"] is True and g["value"] == pytest.approx(Q.wilson_interval(60, 60)[0], abs=1e-6)
    # the accuracy gate blocks whatever `blocking` lists
    assert _gate(9, 10, min_accuracy=0.9, blocking=("completeness",))["blocking"] is True
    # the explicit opt-out: the point estimate decides, and the reason says it is not certified
    g = _gate(9, 10, min_accuracy=0.9, accuracy_gate="estimate")
    assert g["passed"] is True and g["value"] == 0.9 and "not a certified bound" in g["reason"]
    assert QualitySpec().accuracy_gate == "lower_bound"


@pytest.mark.parametrize("m,level,interval,expected", [(0.9, 0.95, "wilson", 1.0), (0.9, 0.95, "clopper-pearson", 1.0),
                                                       (0.8, 0.9, "wilson", 0.95), (0.95, 0.99, "clopper-pearson", 0.99),
                                                       (0.9, 0.95, "wilson", 0.97)])
def test_audit_sample_size_is_the_smallest_n_that_reaches_the_bound(m, level, interval, expected):
    from statsmodels.stats.proportion import proportion_confint

    method = {"wilson": "wilson", "clopper-pearson": "beta"}[interval]

    def lo(n):
        return proportion_confint(int(np.floor(expected * n + 1e-9)), n, alpha=1 - level, method=method)[0]

    n = Q.audit_sample_size(m, level, interval, expected_accuracy=expected)
    assert lo(n) >= m and all(lo(j) < m for j in range(1, n))
    # a perfect audit of that size passes the gate; one item fewer is "too small to certify"
    if expected == 1.0:
        assert _gate(n, n, min_accuracy=m, confidence_level=level, interval=interval)["passed"] is True
        assert "too small" in _gate(n - 1, n - 1, min_accuracy=m, confidence_level=level, interval=interval)["reason"]
    assert Q.audit_sample_size(0.9, expected_accuracy=0.9) is None  # expecting the threshold: no n certifies


def test_calibration_of_verified_items_in_the_measures():
    f = _audited(8, 10)
    f.loc[f["route"] == "auto", "source"] = "auto"
    rep = Q.measure(f, ["x", "y"])
    cal = rep["calibration"]
    # verified items: the 10 audited ones, confidence 0.95, right on 8: ECE = |0.8 - 0.95|
    assert cal["verified"]["n"] == 10 and cal["verified"]["ece"] == pytest.approx(0.15)
    assert cal["audit"]["bins"] == [{"lo": 0.9, "hi": 1.0, "n": 10, "mean_confidence": 0.95, "accuracy": 0.8}]
    f["raw_confidence"] = 0.8
    assert Q.measure(f, ["x", "y"])["calibration"]["verified_raw"]["ece"] == pytest.approx(0.0)
