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
    out = find_suspect_labels(given, probs, classes, index=[f"it{i}" for i in range(len(y))])
    assert out.index[0] == "it17"
    assert out.loc["it17", "flag"] and out.flag.sum() == 1
    assert out.loc["it17", "suggested_label"] == classes[y[17]]
    assert "model_disagrees" in out.loc["it17", "reasons"]


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
