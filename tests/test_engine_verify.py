"""Verification of human labels on a case with one planted error."""
import numpy as np
import pytest

from factory.engine.verify import find_suspect_labels


def _clean_case(rng, n=60):
    classes = ["sport", "tech", "politics"]
    y = rng.integers(0, 3, size=n)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), y] = 0.8
    probs += rng.uniform(0, 0.05, size=probs.shape)
    return classes, y, probs / probs.sum(1, keepdims=True)


def test_planted_flipped_label_is_flagged_and_ranked_first():
    rng = np.random.default_rng(0)
    classes, y, probs = _clean_case(rng)
    given = [classes[v] for v in y]
    given[17] = classes[(y[17] + 1) % 3]
    index = [f"it{i}" for i in range(len(y))]
    out = find_suspect_labels(given, probs, classes, index=index, method="confident_joint")
    assert out.index[0] == "it17"
    assert out.loc["it17", "flag"] and out.flag.sum() == 1
    assert out.loc["it17", "suggested_label"] == classes[y[17]]
    assert "model_disagrees" in out.loc["it17", "reasons"]
    # noise_posterior ranks it first too; one disagreement among 60 labels is weak evidence of
    # noise, so its P(wrong) is moderate (~0.3) and far above every other label's
    post = find_suspect_labels(given, probs, classes, index=index)
    assert post.index[0] == "it17" and post.loc["it17", "suggested_label"] == classes[y[17]]
    assert post.loc["it17", "p_wrong"] > 0.2 and post["p_wrong"].drop("it17").max() < 0.05


def _swap_case(seed=0, n=1500, swap=0.3):
    """Generative case for noise_posterior: true-class probabilities p, a systematic swap of
    `swap` of class 0's labels into class 1, and the model's view of the *given* labels q = p Q."""
    rng = np.random.default_rng(seed)
    K = 3
    y = rng.integers(0, K, size=n)
    p = rng.dirichlet(np.ones(K) * 0.3, size=n) * 0.3
    p[np.arange(n), y] += 0.7
    Q = np.eye(K)
    Q[0] = [1 - swap, swap, 0.0]
    given = np.array([rng.choice(K, p=Q[t]) for t in y])
    return y, given, p, p @ Q, Q


def test_noise_posterior_finds_half_learned_swaps_and_matches_exact_bayes():
    classes = ["a", "b", "c"]
    y, given, p, q, Q = _swap_case()
    out = find_suspect_labels([classes[g] for g in given], q, classes).sort_index()
    wrong = given != y
    flagged = out["flag"].to_numpy()
    # the swapped labels keep a lot of model probability (the model learned the swap) ...
    assert np.median(q[wrong, 1]) > 0.15
    # ... yet they are found, with few false flags
    precision = (flagged & wrong).sum() / flagged.sum()
    recall = (flagged & wrong).sum() / wrong.sum()
    assert precision > 0.8 and recall > 0.8, (precision, recall)
    # P(wrong) from the estimated noise matrix is close to Bayes' rule with the true one
    rows = np.arange(len(y))
    exact = 1 - p[rows, given] * Q[given, given] / (p * Q[:, given].T).sum(1)
    assert np.abs(out["p_wrong"].to_numpy() - exact).mean() < 0.05
    ranked = find_suspect_labels([classes[g] for g in given], q, classes)
    assert ranked["suspect_score"].is_monotonic_decreasing and ranked["flag"].iloc[0]
    # the old rule is available and scored on the same input
    old = find_suspect_labels([classes[g] for g in given], q, classes, method="confident_joint")
    assert old["flag"].sum() > 0


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        find_suspect_labels(["a", "b"], np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"], method="magic")


def test_fused_posterior_breaks_a_model_tie():
    classes = ["a", "b"]
    probs = np.array([[0.9, 0.1]] * 10 + [[0.1, 0.9]] * 10 + [[0.5, 0.5], [0.5, 0.5]])
    given = ["a"] * 10 + ["b"] * 10 + ["a", "a"]
    fused = np.array([[0.9, 0.1]] * 20 + [[0.95, 0.05], [0.02, 0.98]])
    out = find_suspect_labels(given, probs, classes, fused_posterior=fused)
    assert out.index[0] == 21 and out.loc[21, "flag"]
    assert not out.loc[20, "flag"]


def test_unknown_label_is_reported():
    with pytest.raises(ValueError, match="'z' is not one of classes"):
        find_suspect_labels(["a", "z"], np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"])
