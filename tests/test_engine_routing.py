"""Routing and seeding on small hand-made cases whose right answer is known."""
import numpy as np
import pandas as pd
import pytest

from factory.engine.routing import decide, expected_error_reduction, route_batch
from factory.engine.seeding import select_seed


def _post(p1s, ids=None):
    p1 = np.asarray(p1s, dtype=float)
    ids = ids or [f"i{j}" for j in range(len(p1))]
    return pd.DataFrame({"prob_0": 1 - p1, "prob_1": p1}, index=pd.Index(ids, name="item_id"))


def test_decide_accepts_items_at_target_and_asks_the_unsure_ones():
    post = _post([0.99, 0.5, 0.7, 0.96])
    out = decide(post, pd.Series(0, index=post.index), target=0.95, budget_left=10,
                 max_answers_per_item=3, escalate_after=3)
    assert out.loc["i0", "action"] == "accept" and out.loc["i3", "action"] == "accept"
    assert out.loc["i1", "action"] == "ask" and out.loc["i2", "action"] == "ask"
    assert out.loc["i0", "expected_gain"] < out.loc["i1", "expected_gain"]


def test_decide_never_exceeds_budget_and_asks_highest_gain_first():
    post = _post([0.5, 0.9, 0.6, 0.55, 0.8])
    out = decide(post, pd.Series(0, index=post.index), target=0.99, budget_left=2,
                 max_answers_per_item=3, escalate_after=3)
    asked = out.index[out.action == "ask"].tolist()
    assert len(asked) == 2
    assert set(asked) == set(out.expected_gain.nlargest(2).index)
    assert (out.loc[out.action == "accept", "reasons"].map(lambda r: "budget" in r)).all()
    none = decide(post, pd.Series(0, index=post.index), 0.99, 0, 3, 3)
    assert (none.action != "ask").all()


def test_decide_escalates_unresolved_after_limit_and_stops_at_cap():
    post = _post([0.6, 0.6, 0.6])
    n = pd.Series([4, 2, 0], index=post.index)
    out = decide(post, n, target=0.95, budget_left=5, max_answers_per_item=5, escalate_after=4)
    assert out.action.tolist() == ["escalate", "ask", "ask"]
    capped = decide(post, pd.Series([3, 3, 3], index=post.index), 0.95, 5, 3, 10)
    assert (capped.action == "escalate").all()


def test_simulated_loop_stops_asking_once_target_reached():
    # one item, reliable workers who always say 1: posterior climbs past target, then asking stops
    r, target, p1 = 0.8, 0.95, 0.5
    asks = 0
    for _ in range(10):
        post = _post([p1])
        out = decide(post, pd.Series([asks], index=post.index), target, 10, 10, 10, worker_reliability=r)
        if out.action.iloc[0] != "ask":
            break
        asks += 1
        p1 = p1 * r / (p1 * r + (1 - p1) * (1 - r))
    assert p1 >= target and asks == 3  # 0.5 -> 0.8 -> 0.94 -> 0.985
    assert out.action.iloc[0] == "accept"


def test_expected_gain_looks_past_one_answer():
    # at p=0.9 one answer of a 0.8 worker cannot flip the decision; two can
    g1 = expected_error_reduction(np.array([0.9]), 0.8, 2, horizon=1)
    g3 = expected_error_reduction(np.array([0.9]), 0.8, 2, horizon=3)
    assert g1[0] == pytest.approx(0.0, abs=1e-12) and g3[0] > 0.005


def _fused(labels, conf, ids):
    conf = np.asarray(conf, float)
    lab = np.asarray(labels)
    return pd.DataFrame({"label": lab, "confidence": conf,
                         "prob_a": np.where(lab == "a", conf, 1 - conf),
                         "prob_b": np.where(lab == "b", conf, 1 - conf)}, index=pd.Index(ids, name="item_id"))


def test_route_batch_reasons_disagreement_low_confidence_and_budget():
    ids = [f"i{j}" for j in range(6)]
    fused = _fused(["a", "b", "a", "b", "a", "b"], [0.99, 0.85, 0.95, 0.97, 0.98, 0.99], ids)
    models = pd.DataFrame({"m1": ["a", "b", "a", "b", "a", "b"], "m2": ["a", "b", "b", "b", "a", "b"]}, index=fused.index)
    out = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, seed=1)
    assert out.loc["i1", "reasons"] == ["low_confidence"] and out.loc["i1", "route"] == "review"
    assert out.loc["i2", "reasons"] == ["disagreement"] and out.loc["i2", "route"] == "review"
    assert (out.drop(["i1", "i2"]).route == "auto").all()
    capped = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, review_budget=1, seed=1)
    assert capped.loc["i2", "route"] == "review"  # disagreement outranks mild low confidence
    # beyond the budget a flagged item is deferred, never auto-accepted
    assert capped.loc["i1", "route"] == "deferred" and capped.loc["i1", "reasons"] == ["low_confidence", "budget"]


def test_route_batch_bias_routes_least_confident_of_overpredicted_class():
    ids = [f"i{j}" for j in range(10)]
    conf = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.99, 0.99]
    fused = _fused(["a"] * 8 + ["b"] * 2, conf, ids)
    models = pd.DataFrame({"m1": fused.label}, index=fused.index)
    out = route_batch(fused, models, confidence_threshold=0.5, prior={"a": 0.3, "b": 0.7}, audit_rate=0.0, seed=0)
    # 8 predicted vs 3 expected: ratio 2.67 > 2, the 5 least confident "a" items are routed
    assert set(out.index[out.route == "review"]) >= {"i3", "i4", "i5", "i6", "i7"}
    assert all("bias" in out.loc[i, "reasons"] for i in ["i3", "i4", "i5", "i6", "i7"])
    assert "bias" not in out.loc["i0", "reasons"]


def test_route_batch_audit_is_seeded_and_drawn_from_auto_items():
    ids = [f"i{j}" for j in range(200)]
    fused = _fused(["a"] * 100 + ["b"] * 100, [0.99] * 190 + [0.5] * 10, ids)
    models = pd.DataFrame({"m1": fused.label}, index=fused.index)
    a = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.05, seed=7)
    b = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.05, seed=7)
    assert (a.route == b.route).all()
    audited = a.index[a.route == "audit"]
    assert len(audited) == round(0.05 * 190)
    assert (fused.loc[audited, "confidence"] == 0.99).all()


def _planted_clusters(rng):
    centers = rng.normal(scale=20.0, size=(6, 5))
    sizes = [700, 40, 40, 40, 40, 40]
    x = np.vstack([c + rng.normal(size=(s, 5)) for c, s in zip(centers, sizes)])
    return x, np.repeat(np.arange(6), sizes)


def test_select_seed_covers_planted_clusters_better_than_random():
    rng = np.random.default_rng(0)
    x, cluster = _planted_clusters(rng)
    ours, rand = [], []
    for s in range(10):
        pick = select_seed(x, 8, seed=s)
        assert len(set(pick)) == 8
        ours.append(len(set(cluster[pick])))
        rand.append(len(set(cluster[np.random.default_rng(s).choice(len(x), 8, replace=False)])))
    assert np.mean(ours) >= 5.8 and np.mean(ours) > np.mean(rand) + 1.0


def test_select_seed_uses_entropy_and_sparse_input():
    import scipy.sparse as sp
    rng = np.random.default_rng(1)
    x, _ = _planted_clusters(rng)
    probs = np.tile([0.99, 0.01], (len(x), 1))
    probs[[5, 9]] = [0.5, 0.5]
    pick = select_seed(sp.csr_matrix(x), 10, seed=3, probs=probs, uncertainty_share=0.2)
    assert set(pick[-2:]) == {5, 9}
    assert np.array_equal(pick, select_seed(sp.csr_matrix(x), 10, seed=3, probs=probs, uncertainty_share=0.2))
