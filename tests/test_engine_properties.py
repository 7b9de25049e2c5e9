"""Properties every aggregation must have, on random small answer tables (hypothesis)."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.engine import METHODS, aggregate

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def answer_tables(draw, soft: bool = False):
    """Random answers: up to 8 items, 5 workers, 2-4 classes; optionally probability vectors."""
    K = draw(st.integers(2, 4))
    n_items = draw(st.integers(1, 8))
    n_workers = draw(st.integers(1, 5))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, n_items - 1), st.integers(0, n_workers - 1)),
            min_size=1,
            max_size=30,
            unique=True,
        )
    )
    labels = draw(st.lists(st.integers(0, K - 1), min_size=len(pairs), max_size=len(pairs)))
    df = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i, _ in pairs],
            "worker_id": [f"w{w}" for _, w in pairs],
            "label": [f"c{k}" for k in labels],
        }
    )
    if soft:
        raw = draw(
            st.lists(
                st.lists(st.floats(0.01, 1.0), min_size=K, max_size=K),
                min_size=len(pairs),
                max_size=len(pairs),
            )
        )
        P = np.asarray(raw)
        P /= P.sum(axis=1, keepdims=True)
        for k in range(K):
            df[f"prob_c{k}"] = P[:, k]
        df["label"] = np.nan
    seed = draw(st.integers(0, 2**31 - 1))
    return df, [f"c{k}" for k in range(K)], seed


def _probs(items, classes):
    return items[[f"prob_{c}" for c in classes]].to_numpy()


def _clear(P, gap=1e-6):
    """Rows whose winner is not a near-tie (where the label must not depend on arithmetic order)."""
    s = np.sort(P, axis=1)
    return s[:, -1] - s[:, -2] > gap if P.shape[1] > 1 else np.ones(len(P), bool)


@SETTINGS
@given(data=answer_tables(), method=st.sampled_from(METHODS))
def test_posteriors_are_distributions(data, method):
    df, classes, _ = data
    items = aggregate(df, method=method, classes=classes)
    P = _probs(items, classes)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)
    c = items["confidence"].to_numpy()
    assert np.all((c >= 0) & (c <= 1 + 1e-12))
    np.testing.assert_allclose(c, P.max(axis=1))
    assert set(items.index) == set(df["item_id"])


@SETTINGS
@given(data=answer_tables(soft=True), method=st.sampled_from(METHODS))
def test_soft_posteriors_are_distributions(data, method):
    df, classes, _ = data
    items = aggregate(df, method=method, classes=classes)
    P = _probs(items, classes)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((items["confidence"] >= 0) & (items["confidence"] <= 1 + 1e-12))


@SETTINGS
@given(data=st.one_of(answer_tables(), answer_tables(soft=True)), method=st.sampled_from(METHODS))
def test_row_order_and_worker_names_do_not_matter(data, method):
    df, classes, seed = data
    rng = np.random.default_rng(seed)
    base = aggregate(df, method=method, classes=classes)
    names = {w: f"z{n}" for w, n in zip(sorted(df["worker_id"].unique()), rng.permutation(10))}
    shuffled = df.sample(frac=1.0, random_state=seed % 1000).assign(worker_id=lambda d: d["worker_id"].map(names))
    other = aggregate(shuffled, method=method, classes=classes).loc[base.index]
    P0, P1 = _probs(base, classes), _probs(other, classes)
    np.testing.assert_allclose(P0, P1, atol=1e-7)
    ok = _clear(P0)
    assert (base["label"][ok] == other["label"][ok]).all()


@SETTINGS
@given(data=answer_tables(), method=st.sampled_from(METHODS))
def test_relabelling_classes_permutes_the_output(data, method):
    df, classes, seed = data
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(classes))
    rename = {c: f"n{perm[j]}" for j, c in enumerate(classes)}
    new_classes = [rename[c] for c in classes]
    base = aggregate(df, method=method, classes=classes)
    renamed = aggregate(df.assign(label=df["label"].map(rename)), method=method, classes=new_classes)
    P0 = _probs(base, classes)
    P1 = _probs(renamed, new_classes)  # same positions, new names
    np.testing.assert_allclose(P0, P1, atol=1e-9)
    # and with the new names in sorted order: the columns are a permutation of the old ones
    resorted = aggregate(df.assign(label=df["label"].map(rename)), method=method, classes=sorted(new_classes))
    np.testing.assert_allclose(_probs(resorted, new_classes), P0, atol=1e-7)
    ok = _clear(P0)
    assert (base["label"].map(rename)[ok] == resorted["label"][ok]).all()


@st.composite
def label_checks(draw):
    """Given labels and out-of-sample probabilities: 2-6 items per class on average, 2-4 classes."""
    K = draw(st.integers(2, 4))
    n = draw(st.integers(2, 25))
    given = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    raw = draw(st.lists(st.lists(st.floats(0.001, 1.0), min_size=K, max_size=K), min_size=n, max_size=n))
    P = np.array(raw)
    return np.array(given), P / P.sum(axis=1, keepdims=True), [f"c{k}" for k in range(K)]


@SETTINGS
@given(case=label_checks(), method=st.sampled_from(["noise_posterior", "confident_joint"]), seed=st.integers(0, 9))
def test_verification_is_a_probability_and_ignores_item_order(case, method, seed):
    from factory.engine.verify import find_suspect_labels

    y, P, classes = case
    given_labels = [classes[k] for k in y]
    out = find_suspect_labels(given_labels, P, classes, method=method).sort_index()
    assert np.isfinite(out["p_wrong"]).all() and out["p_wrong"].between(0, 1).all()
    assert out["suspect_score"].between(0, 1).all()
    assert (out["suggested_label"] != out["given_label"]).all()
    perm = np.random.default_rng(seed).permutation(len(y))
    again = find_suspect_labels([given_labels[i] for i in perm], P[perm], classes, method=method, index=perm).sort_index()
    np.testing.assert_allclose(again["p_wrong"].to_numpy(), out["p_wrong"].to_numpy(), atol=1e-9)
    # flags may differ only where an item sits exactly on a rank cut-off (ties are broken by position)
    if method == "noise_posterior":
        assert (again["flag"].to_numpy() == out["flag"].to_numpy()).all()
